from datetime import UTC, datetime

import pytest

from agent.batch import LogRow, change_of, group_transactions, transaction_records

COLS, KEY = ["id", "name"], ["id"]


def row(xid, seq, op, new=None, old=None, table="t"):
    return LogRow(xid, seq, "public", table, COLS, KEY, op, new, old)


def test_change_of_each_operation():
    assert change_of(row(1, 1, "I", ["1", "a"])) == {
        "schema_name": "public", "table_name": "t", "op": "INSERT", "key": {"id": "1"}, "old_key": None,
        "row": {"id": "1", "name": "a"}}
    update = change_of(row(1, 2, "U", ["2", None], ["1"]))
    assert update["op"] == "UPDATE" and update["key"] == {"id": "2"} and update["old_key"] == {"id": "1"}
    assert update["row"] == {"id": "2", "name": None}
    delete = change_of(row(1, 3, "D", None, ["2"]))
    assert delete["op"] == "DELETE" and delete["key"] == {"id": "2"} and delete["row"] is None
    assert change_of(row(1, 4, "T"))["op"] == "TRUNCATE"


def test_a_row_whose_width_disagrees_with_its_table_is_refused():
    with pytest.raises(ValueError):
        change_of(row(1, 1, "I", ["1"]))


def test_grouping_keeps_each_transaction_whole_and_in_order():
    rows = [row(7, 1, "I", ["1", "a"]), row(7, 4, "I", ["2", "b"]), row(5, 2, "I", ["3", "c"]), row(5, 6, "D", None, ["3"])]
    grouped = list(group_transactions(rows))
    assert [xid for xid, _ in grouped] == [7, 5]
    assert [len(changes) for _, changes in grouped] == [2, 2]


def test_interleaved_rows_are_refused():
    rows = [row(7, 1, "I", ["1", "a"]), row(5, 2, "I", ["3", "c"]), row(7, 3, "I", ["2", "b"])]
    with pytest.raises(ValueError, match="not contiguous"):
        list(group_transactions(rows))


def test_positions_are_consecutive_and_resume_skips_published():
    when = datetime(2026, 1, 1, tzinfo=UTC)
    transactions = [(10, []), (11, []), (12, [])]
    records = transaction_records("s", 3, when, 100, transactions, publish_after=99)
    assert [r["position"] for r in records] == [100, 101, 102]
    assert [r["batch_end"] for r in records] == [False, False, True]
    resumed = transaction_records("s", 3, when, 100, transactions, publish_after=100)
    assert [r["position"] for r in resumed] == [101, 102]
