"""Bad input on a route: the subscriber stops, names the place, and commits nothing of the bad transaction."""

from datetime import UTC, datetime

import pytest

from pgfanout.core.codec import MAGIC, default_codec
from pgfanout.runtime import kafka as kafkautil

ACCOUNTS = {"table_id": 5, "schema_name": "public", "table_name": "accounts", "columns": ["id", "balance"], "key_columns": ["id"]}
MISSING = {"table_id": 9, "schema_name": "public", "table_name": "not_here", "columns": ["id"], "key_columns": ["id"]}


def batch(position, changes, tables=(ACCOUNTS,)):
    return default_codec().encode(
        "Batch",
        {
            "source": "test",
            "tick_id": position,
            "tick_time": datetime.now(UTC),
            "batch_end": True,
            "tables": list(tables),
            "transactions": [{"position": position, "xid": 1000 + position, "chunk": 0, "last_chunk": True, "changes": changes}],
        },
    )


def insert(table_id, *values):
    return {"table": table_id, "op": "INSERT", "values": list(values), "nulls": [], "old_key": []}


def fill_route(pipeline, values):
    """Write messages straight into the pipeline's route topic; returns the topic."""
    cluster_name, topic = pipeline.config.stream(pipeline.route)
    cluster = pipeline.config.kafka[cluster_name]
    kafkautil.ensure_topic(cluster, topic, 1 << 20)
    producer = kafkautil.producer(cluster, 1 << 20)
    try:
        for value in values:
            producer.send(topic, value=value)
        producer.flush(timeout=30)
    finally:
        producer.close()
    return topic


GOOD = [batch(1, [insert(5, "1", "10")]), batch(2, [insert(5, "2", "20")])]
CASES = {
    "garbage": (b"\x00\x01garbage", "is not a pgfanout message (bad header)"),
    "unknown_schema": (MAGIC + b"\xde\xad\xbe\xef\x00\x00\x00\x01" + b"\x00", "names unknown schema deadbeef00000001"),
    "unknown_table": (batch(3, [insert(9, "1")], tables=(ACCOUNTS, MISSING)), "public.not_here does not exist"),
    "constraint": (batch(3, [insert(5, "3", "30"), insert(5, "1", "99")]), "UniqueViolation"),
    "type_error": (batch(3, [insert(5, "3", "thirty")]), "InvalidTextRepresentation"),
    # 100 updates go the COPY-and-merge way; 98 of their rows are not on the replica
    "diverged_bulk": (
        batch(3, [{"table": 5, "op": "UPDATE", "values": [str(i), "1"], "nulls": [], "old_key": []} for i in range(1, 101)]),
        "found 2 of 100 rows; the replica has diverged",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_stops_the_subscriber_and_commits_nothing_of_it(pipeline, case):
    bad, words = CASES[case]
    pipeline.prepare(install=False)
    topic = fill_route(pipeline, [*GOOD, bad])

    sub = pipeline.subscribers[0]
    code, log = pipeline.run_until_it_stops(sub)
    assert code == 3, f"exit code {code}; log:\n{log}"
    assert "Traceback" not in log
    assert f"{topic}[0]@2" in log, "the error names topic, partition and offset"
    assert words in log
    if case in ("unknown_table", "constraint", "type_error", "diverged_bulk"):
        assert "position 3" in log
    with pipeline.replica(sub) as conn:
        assert conn.execute("SELECT count(*) FROM public.accounts WHERE id = 3").fetchone()[0] == 0
        stored = conn.execute("SELECT max(position) FROM pgfanout_replica.position").fetchone()[0]
    assert stored is None or stored < 3


def test_messages_deleted_by_retention_stop_the_subscriber_with_the_missing_positions(pipeline):
    pipeline.prepare(install=False)
    sub = pipeline.subscribers[0]
    topic = fill_route(pipeline, GOOD)
    pipeline.start(sub)
    pipeline.wait_for_position(sub, 2)
    pipeline.kill(sub, 15)  # offline for a while
    fill_route(pipeline, [batch(p, [insert(5, str(p), "1")]) for p in (3, 4, 5)])
    cluster = pipeline.config.kafka[pipeline.config.stream(pipeline.route)[0]]
    admin = kafkautil.admin(cluster)
    try:
        admin.delete_records({kafkautil.partition(topic): 4})  # retention removed positions 3 and 4
    finally:
        admin.close()

    code, log = pipeline.run_until_it_stops(sub)
    assert code == 3, log
    assert "expected position 3, found 5; positions 3..4 are missing (deleted by retention" in log
    with pipeline.replica(sub) as conn:
        assert conn.execute("SELECT max(position) FROM pgfanout_replica.position").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM public.accounts WHERE id >= 3").fetchone()[0] == 0


def test_the_operator_can_skip_a_poison_transaction(pipeline):
    import subprocess
    import sys

    pipeline.prepare(install=False)
    fill_route(pipeline, [*GOOD, CASES["constraint"][0], batch(4, [insert(5, "4", "40")])])
    sub = pipeline.subscribers[0]
    code, log = pipeline.run_until_it_stops(sub)
    assert code == 3
    assert f"pgfanout subscriber skip {sub} --position 3" in log

    skip = subprocess.run(
        [sys.executable, "-m", "pgfanout", "subscriber", "skip", sub, "--position", "3", "--config", str(pipeline.config_path)],
        capture_output=True,
        text=True,
    )
    assert skip.returncode == 0, skip.stderr
    pipeline.start(sub)
    pipeline.wait_for_position(sub, 4)
    with pipeline.replica(sub) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT id FROM public.accounts")) == [1, 2, 4]
        assert conn.execute("SELECT count(*) FROM pgfanout_replica.skip").fetchone()[0] == 0
    assert "SKIPPING the transaction at" in pipeline.log(sub) and "position 3" in pipeline.log(sub)
    again = subprocess.run(
        [sys.executable, "-m", "pgfanout", "subscriber", "skip", sub, "--position", "2", "--config", str(pipeline.config_path)],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 3 and "already applied position 2" in again.stderr
