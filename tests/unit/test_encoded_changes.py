"""Changes the C trigger encoded: kept as blocks through chunking, spliced into Batch messages unchanged."""

import io
from datetime import UTC, datetime

import fastavro
import pytest

from agent.batch import LogRow, split_transactions
from pgfanout.core.codec import SplicedTransaction, avro_long, decode_changes, default_codec, encode_batch

CODEC = default_codec()
TABLE = {
    "table_id": 1,
    "schema_name": "public",
    "table_name": "t",
    "columns": ["id", "v"],
    "key_columns": ["id"],
    "column_types": ["integer", "text"],
    "missing_values": {},
    "old_columns": [],
}


def change(n: int, op: str = "INSERT", table: int = 1) -> dict:
    return {
        "table": table,
        "op": op,
        "values": [str(n), "ü" * (n % 3)] if op != "DELETE" else [],
        "nulls": [1] if n % 5 == 0 else [],
        "old_key": [str(n - 1)] if op != "INSERT" else [],
        "old_values": [],
        "old_nulls": [],
    }


def encoded(changes: list[dict]) -> bytes:
    out = io.BytesIO()
    for c in changes:
        fastavro.schemaless_writer(out, CODEC.parsed("Change"), c)
    return out.getvalue()


def packed_row(xid: int, changes: list[dict], tables: list[int] | None = None) -> LogRow:
    data = encoded(changes)
    return LogRow(xid, 0, "P", None, None, 16 + len(data), None, None, None, len(changes), tables or [1], data)


def plain_row(xid: int, n: int) -> LogRow:
    return LogRow(xid, 1, "I", [str(n), "x"], None, 20, None)


def unpack(data: bytes):
    return decode_changes(CODEC, data)


def test_avro_long_matches_fastavro():
    edges = [n for k in (7, 14, 21, 28) for n in (2 ** (k - 1) - 1, 2 ** (k - 1), -(2 ** (k - 1)), -(2 ** (k - 1)) - 1)]
    for value in (0, 1, -1, 63, -64, 64, *edges, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63)):
        out = io.BytesIO()
        fastavro.schemaless_writer(out, "long", value)
        assert avro_long(value) == out.getvalue(), value


@pytest.mark.parametrize("chunk", [2, 63, 64, 70_000])
def test_a_spliced_batch_decodes_exactly_like_an_encoded_one(chunk):
    first, second, third = [change(n) for n in range(3)], [change(n, "UPDATE") for n in range(3, 9)], [change(9, "DELETE")]
    header = {"source": "s", "tick_id": 7, "tick_time": datetime(2026, 11, 24, tzinfo=UTC), "batch_end": True, "tables": [TABLE]}
    plain = {
        **header,
        "transactions": [
            {"position": 10, "xid": 2**40, "chunk": chunk, "last_chunk": False, "changes": first + second},
            {"position": 11, "xid": 5, "chunk": 0, "last_chunk": True, "changes": third},
        ],
    }
    spliced = {
        **header,
        "transactions": [
            SplicedTransaction(10, 2**40, chunk, False, [(3, encoded(first)), (6, encoded(second))]),
            {"position": 11, "xid": 5, "chunk": 0, "last_chunk": True, "changes": third},
        ],
    }  # a part of dicts, too
    assert encode_batch(CODEC, plain) == CODEC.encode("Batch", plain)
    assert CODEC.decode(encode_batch(CODEC, spliced), "test") == CODEC.decode(CODEC.encode("Batch", plain), "test")


def test_encoded_rows_stay_blocks_and_count_their_changes():
    rows = [packed_row(7, [change(1), change(2)], [1, 3]), packed_row(7, [change(3)]), packed_row(8, [change(4)])]
    parts = list(split_transactions(rows, 1, max_changes=100, max_bytes=10_000, unpack=unpack))
    assert [(p.position, p.count, len(p.blocks), p.changes, p.tables) for p in parts] == [
        (1, 3, 2, [], {1, 3}),
        (2, 1, 1, [], {1}),
    ]
    assert parts[0].record() == SplicedTransaction(1, 7, 0, True, parts[0].blocks)


def test_encoded_rows_are_chunked_by_their_change_count():
    rows = [packed_row(7, [change(n) for n in range(k, k + 3)]) for k in (0, 3, 6)]
    parts = list(split_transactions(rows, 1, max_changes=5, max_bytes=10_000, unpack=unpack))
    assert [(p.chunk, p.count, p.last_chunk) for p in parts] == [(0, 3, False), (1, 3, False), (2, 3, True)]


def test_an_encoded_row_too_large_for_a_message_is_unpacked_into_changes():
    changes = [change(n) for n in range(10)]
    row = packed_row(7, changes)
    parts = list(split_transactions([row], 1, max_changes=100, max_bytes=row.size // 3, unpack=unpack))
    assert len(parts) > 1 and all(not p.blocks for p in parts)
    assert [c for p in parts for c in p.changes] == changes


@pytest.mark.parametrize("order", ["plain first", "encoded first"])
def test_a_part_mixing_both_kinds_keeps_the_change_order(order):
    rows = [plain_row(7, 1), packed_row(7, [change(2), change(3)])]
    if order == "encoded first":
        rows.reverse()
    parts = list(split_transactions(rows, 1, max_changes=100, max_bytes=10_000, unpack=unpack))
    assert len(parts) == 1 and not parts[0].blocks and parts[0].count == 3
    assert [c["values"][0] for c in parts[0].changes] == (["1", "2", "3"] if order == "plain first" else ["2", "3", "1"])
