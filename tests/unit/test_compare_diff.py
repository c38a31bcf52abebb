"""Pure logic of `pgfanout compare`: key ranges, the merge of two key-ordered row streams, the report; its SQL."""

from __future__ import annotations

import random

from psycopg import sql

from subscriber import checksums
from subscriber.diff import Difference, Row, TableReport, fractions, merge, range_count, ranges_between, sample_percent

COLUMNS = ("id", "name", "amount")


def rows(*items: tuple[str, str | None, str | None]) -> list[Row]:
    return [Row((i,), (i, n, a)) for i, n, a in items]


def test_ranges_run_from_the_lowest_key_to_past_the_highest_cut_at_each_distinct_bound() -> None:
    assert ranges_between([]) == [(None, None)]
    assert ranges_between(["10", "20"]) == [(None, "10"), ("10", "20"), ("20", None)]
    # percentiles of a key with repeated values repeat: a repeated bound cuts nothing
    assert ranges_between(["10", "10", "20", "20", None]) == [(None, "10"), ("10", "20"), ("20", None)]
    # a sub-range of [10, 50): its first percentile may be its low bound
    assert ranges_between(["10", "30"], "10", "50") == [("10", "30"), ("30", "50")]
    assert ranges_between(["10"], "10", "50") == [("10", "50")]


def test_a_table_is_cut_into_ranges_of_about_fifty_thousand_rows_sampled_from_enough_pages() -> None:
    assert range_count(0) == 1 and range_count(50_000) == 1 and range_count(50_001) == 2
    assert range_count(5_000_000) == 100 and range_count(10**12) == 10_000
    assert fractions(4) == [0.25, 0.5, 0.75]
    assert sample_percent(83_280, 100) == 100 * 400 / 83_280
    assert sample_percent(10, 100) == 100.0


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
    report = TableReport("public.accounts", rows_primary=7, rows_replica=7, ranges=3)
    assert report.equal
    assert report.lines(["id"]) == ["public.accounts: equal (7 rows in the share, 3 key ranges)"]
    assert TableReport("public.t", whole=True).lines(["id"]) == ["public.t: equal (0 rows in the share, read whole)"]


def test_range_queries_quote_every_name_bound_the_first_key_column_and_carry_the_route_filters() -> None:
    table = sql.Identifier("Sales", "order lines")
    checked = checksums.checksum(table, "Id", ["Id", "total"], ["(total > 10)"], ("5", "it's")).as_string(None)
    assert 'FROM "Sales"."order lines"' in checked
    assert 'hashtextextended(ROW("Id", "total")::text, 0)' in checked
    assert """WHERE ((total > 10)) AND "Id" >= '5' AND "Id" < 'it''s'""" in checked
    assert checksums.checksum(table, "Id", ["Id"], [], (None, None)).as_string(None).endswith("WHERE true")
    listed = checksums.rows(table, ["Id", "line"], ["Id", "line", "total"], [], ("5", None)).as_string(None)
    assert listed.endswith("""WHERE "Id" >= '5' ORDER BY "Id"::text COLLATE "C", "line"::text COLLATE "C\"""")
    sampled = checksums.sampled_bounds(table, "Id").as_string(None)
    assert 'WITHIN GROUP (ORDER BY "Id")::text[] FROM "Sales"."order lines" TABLESAMPLE SYSTEM' in sampled
