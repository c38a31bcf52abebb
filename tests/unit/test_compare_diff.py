"""Pure logic of `pgfanout compare`: differing buckets, the merge of two key-ordered row streams, the report."""

from __future__ import annotations

import random

from psycopg import sql

from subscriber import checksums
from subscriber.diff import Difference, Row, TableReport, differing_buckets, merge

COLUMNS = ("id", "name", "amount")


def rows(*items: tuple[str, str | None, str | None]) -> list[Row]:
    return [Row((i,), (i, n, a)) for i, n, a in items]


def test_equal_bucket_sums_differ_nowhere() -> None:
    sums = {0: (3, 10, 7), 5: (1, -4, 2)}
    assert differing_buckets(sums, dict(sums)) == []


def test_a_bucket_on_one_side_only_or_summed_otherwise_differs() -> None:
    primary = {0: (3, 10, 7), 2: (1, 1, 1), 5: (1, -4, 2)}
    replica = {0: (3, 10, 7), 3: (1, 1, 1), 5: (1, -4, 3)}
    assert differing_buckets(primary, replica) == [2, 3, 5]


def test_merge_names_missing_extra_and_different_rows_with_their_columns() -> None:
    primary = rows(("1", "a", "10"), ("2", "b", "20"), ("4", "d", "40"))
    replica = rows(("1", "a", "10"), ("2", "B", None), ("3", "c", "30"))
    found = list(merge(primary, replica, COLUMNS))
    assert found == [
        Difference("different", ("2",), ("name", "amount"), ("2", "b", "20")),
        Difference("extra", ("3",), (), None),
        Difference("missing", ("4",), (), ("4", "d", "40")),
    ]


def test_merge_of_equal_streams_is_empty_and_of_one_empty_side_is_all_of_the_other() -> None:
    same = rows(("1", "a", "1"), ("2", "b", "2"))
    assert list(merge(same, list(same), COLUMNS)) == []
    assert [d.kind for d in merge(same, [], COLUMNS)] == ["missing", "missing"]
    assert [d.kind for d in merge([], same, COLUMNS)] == ["extra", "extra"]


def test_merge_follows_the_c_collation_order_of_multi_column_keys() -> None:
    """Both servers sort keys by their texts in the C collation, which is Python's order of the strings."""
    keys = [("10", "b"), ("10", "a"), ("9", "z"), ("1", "é"), ("1", "e")]
    primary = [Row(k, ("x",)) for k in sorted(keys)]
    replica = [Row(k, ("x",)) for k in sorted(keys) if k != ("10", "a")]
    assert list(merge(primary, replica, ("v",))) == [Difference("missing", ("10", "a"), (), ("x",))]


def test_merge_agrees_with_a_set_comparison_on_random_streams() -> None:
    generator = random.Random(26)
    for _ in range(200):
        primary = {str(k): str(generator.randrange(3)) for k in generator.sample(range(50), generator.randrange(30))}
        replica = {str(k): str(generator.randrange(3)) for k in generator.sample(range(50), generator.randrange(30))}
        found = list(
            merge(
                [Row((k,), (v,)) for k, v in sorted(primary.items())],
                [Row((k,), (v,)) for k, v in sorted(replica.items())],
                ("v",),
            )
        )
        expected = (
            {("missing", k) for k in primary.keys() - replica.keys()}
            | {("extra", k) for k in replica.keys() - primary.keys()}
            | {("different", k) for k in primary.keys() & replica.keys() if primary[k] != replica[k]}
        )
        assert {(d.kind, d.key[0]) for d in found} == expected
        assert len(found) == len(expected)


def test_report_counts_exactly_but_keeps_only_the_first_examples_of_each_kind() -> None:
    report = TableReport("public.accounts")
    for i in range(5):
        report.add(Difference("missing", (str(i),), (), ("x",)), keep=2)
    report.add(Difference("different", ("9",), ("name",), ("x",)), keep=2)
    assert not report.equal
    assert report.counts == {"missing": 5, "extra": 0, "different": 1}
    assert [d.key for d in report.examples] == [("0",), ("1",), ("9",)]
    assert report.columns == {"name": 1}
    text = report.lines(["id"])
    assert text[0].startswith("public.accounts: DIFFERENT: 5 missing, 1 different")
    assert "  different (id=9) in name" in text
    as_json = report.as_json(["id"])
    assert as_json["equal"] is False and as_json["examples"][2] == {"kind": "different", "key": {"id": "9"}, "columns": ["name"]}


def test_an_equal_report_says_so_in_one_line() -> None:
    report = TableReport("public.accounts", rows_primary=7, rows_replica=7, buckets=64)
    assert report.equal
    assert report.lines(["id"]) == ["public.accounts: equal (7 rows in the share, 64 buckets)"]


def test_bucket_count_is_a_power_of_two_near_a_thousand_rows_a_bucket_within_bounds() -> None:
    assert checksums.bucket_count(0) == 64
    assert checksums.bucket_count(5_000_000) == 8192
    assert checksums.bucket_count(10**12) == 65_536
    for rows_estimate in (1, 10**5, 3 * 10**6):
        count = checksums.bucket_count(rows_estimate)
        assert count & (count - 1) == 0


def test_checksum_queries_quote_every_name_and_carry_the_route_filters() -> None:
    table = sql.Identifier("Sales", "order lines")
    summary = checksums.summary(table, ["Id"], ["Id", "total"], ["(total > 10)"], 128).as_string(None)
    assert '"Sales"."order lines"' in summary and 'ROW("Id")::text' in summary and "& 127" in summary
    assert "WHERE ((total > 10))" in summary
    chosen = checksums.rows(table, ["Id"], ["Id", "total"], [], 64).as_string(None)
    assert 'ORDER BY "Id"::text COLLATE "C"' in chosen and "WHERE true AND" in chosen
