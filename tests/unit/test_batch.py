from agent.batch import LogRow, change_of, pack, split_transactions, stream_rows, with_last


def row(xid, seq, op, new=None, old=None, table=1):
    """A batch query row: NULLs come as '' plus their 1-based positions, as array_replace/array_positions give."""
    size = 16 + sum(len(v or "") for v in (new or old or []))
    nulls = [i + 1 for i, v in enumerate(new or []) if v is None]
    return LogRow(xid, table, op, [v or "" for v in new] if new is not None else None, old, size, nulls)


def test_change_of_each_operation():
    assert change_of(row(1, 1, "I", ["1", "a"])) == {"table": 1, "op": "INSERT", "values": ["1", "a"], "nulls": (), "old_key": ()}
    assert change_of(row(1, 2, "U", ["2", None], ["1"])) == {
        "table": 1,
        "op": "UPDATE",
        "values": ["2", ""],
        "nulls": [1],
        "old_key": ["1"],
    }
    assert change_of(row(1, 3, "D", None, ["2"])) == {"table": 1, "op": "DELETE", "values": (), "nulls": (), "old_key": ["2"]}
    assert change_of(row(1, 4, "T"))["op"] == "TRUNCATE"


def test_old_values_travel_with_their_nulls():
    logged = row(1, 2, "U", ["2", "b"])._replace(old_values=["a", ""], old_null_positions=[2])
    change = change_of(logged)
    assert change["old_values"] == ["a", ""] and change["old_nulls"] == [1]
    assert "old_values" not in change_of(row(1, 3, "U", ["2", "b"]))  # the Avro default (empty) stands for none


def test_parts_know_their_tables():
    rows = [row(7, 1, "I", ["1", "a"], table=3), row(7, 2, "I", ["2", "b"], table=5)]
    assert next(split_transactions(rows, 1, 10, 10_000)).tables == {3, 5}


def test_transactions_are_numbered_consecutively_and_kept_whole():
    rows = [row(7, 1, "I", ["1", "a"]), row(7, 4, "I", ["2", "b"]), row(5, 2, "I", ["3", "c"]), row(5, 6, "D", None, ["3"])]
    parts = list(split_transactions(rows, 100, max_changes=10, max_bytes=10_000))
    assert [(p.position, p.xid, p.chunk, p.last_chunk, len(p.changes)) for p in parts] == [
        (100, 7, 0, True, 2),
        (101, 5, 0, True, 2),
    ]


def test_large_transactions_are_chunked_by_count_and_by_size():
    rows = [row(9, i, "I", [str(i), "x" * 10]) for i in range(7)]
    by_count = list(split_transactions(rows, 1, max_changes=3, max_bytes=10**9))
    assert [(p.position, p.chunk, p.last_chunk, len(p.changes)) for p in by_count] == [
        (1, 0, False, 3),
        (1, 1, False, 3),
        (1, 2, True, 1),
    ]
    one = rows[0].size
    by_size = list(split_transactions(rows, 1, max_changes=100, max_bytes=2 * one))
    assert [len(p.changes) for p in by_size] == [2, 2, 2, 1]
    # a transaction exactly filling a chunk ends with that chunk, not an empty one
    exact = list(split_transactions(rows[:3], 1, max_changes=3, max_bytes=10**9))
    assert [(p.chunk, p.last_chunk, len(p.changes)) for p in exact] == [(0, True, 3)]


def test_a_change_larger_than_a_chunk_gets_a_chunk_of_its_own():
    rows = [row(9, 1, "I", ["1", "a"]), row(9, 2, "I", ["2", "y" * 5000]), row(9, 3, "I", ["3", "b"])]
    parts = list(split_transactions(rows, 1, max_changes=100, max_bytes=1000))
    assert [len(p.changes) for p in parts] == [1, 1, 1]


def test_chunking_is_deterministic():
    rows = [row(x, i, "I", [str(i), "v" * (i % 17)]) for x in range(5) for i in range(x * 10, x * 10 + 10)]
    first = [(p.position, p.chunk, len(p.changes)) for p in split_transactions(rows, 1, 4, 300)]
    again = [(p.position, p.chunk, len(p.changes)) for p in split_transactions(rows, 1, 4, 300)]
    assert first == again


def test_pack_groups_consecutive_parts_up_to_a_size():
    parts = list(split_transactions([row(x, x, "I", [str(x), "a"]) for x in range(10)], 1, 10, 10**6))
    size = parts[0].size
    packages = list(pack(parts, max_bytes=3 * size))
    assert [len(p) for p in packages] == [3, 3, 3, 1]
    assert [p.position for package in packages for p in package] == list(range(1, 11))


def test_with_last():
    assert list(with_last([])) == []
    assert list(with_last("ab")) == [("a", False), ("b", True)]


def test_the_stream_holds_about_max_bytes_of_the_largest_rows():
    assert stream_rows(200, 10_000, 8_000_000) == 10_000  # small rows: the row cap
    assert stream_rows(1_000_000, 10_000, 8_000_000) == 8
    assert stream_rows(100_000_000, 10_000, 8_000_000) == 1  # one row at a time, however large
    assert stream_rows(0, 10_000, 8_000_000) == 10_000  # an empty batch
