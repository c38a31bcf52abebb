"""Fatal errors say where in the stream they happened by fields, not only in their text."""

import pytest

from pgfanout.core.codec import default_codec
from pgfanout.core.errors import CaptureFault, FatalError, PoisonMessage, StreamPlace


def test_a_poison_message_carries_topic_partition_and_offset():
    at = StreamPlace("pgfanout.route.east", 0, 1234)
    with pytest.raises(PoisonMessage) as err:
        default_codec().decode(b"not a message", at)
    assert (err.value.topic, err.value.partition, err.value.offset) == ("pgfanout.route.east", 0, 1234)
    assert "pgfanout.route.east[0]@1234" in str(err.value)


def test_a_place_in_a_shipping_file_and_a_later_position():
    at = StreamPlace("pgfanout.route.east", 0, 7, "east-0001.avro")
    assert str(at) == "east-0001.avro (pgfanout.route.east[0]@7)"
    error = FatalError("text only", at="a range, not one record")
    assert error.at is None and error.topic is None
    assert error.locate(at, 42) is error and (error.offset, error.position) == (7, 42)
    assert error.locate(StreamPlace("other", 1, 1), 1).position == 42, "what is known stays"


def test_a_capture_fault_names_its_transactions():
    fault = CaptureFault("shop", 57, 1001, [(900, "public.accounts", "no layout")])
    assert fault.position == 1001 and fault.faults == [(900, "public.accounts", "no layout")]
    assert "public.accounts in transaction 900: no layout" in str(fault) and fault.exit_code == 3
