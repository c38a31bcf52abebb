from pgfanout.core.generations import (
    TABLE_IDS_PER_GENERATION,
    Generation,
    current,
    describe_positions,
    extended,
    first_lineage,
    first_table_id,
    generation_from_headers,
    generation_header,
    kept_by_later,
    lineage_of,
    lost_positions,
    primary_of,
    superseded,
)

# generation 1 published 1..100; a switchover at 100 (b holds it all); a failover at 140 to c, which had
# applied up to 130 only: 131..140 of generation 2 are the loss window
HISTORY = extended(extended(first_lineage("a"), 100, "b"), 130, "c")


def test_a_lineage_grows_one_generation_at_each_change_of_primary():
    assert [tuple(g) for g in HISTORY] == [(1, 1, "a"), (2, 101, "b"), (3, 131, "c")]
    assert current(HISTORY) == Generation(3, 131, "c") and current(()) == Generation(1, 1, "")
    assert extended((), 10, "x") == (Generation(1, 1, ""), Generation(2, 11, "x"))
    assert primary_of(HISTORY, 2) == "b" and primary_of(HISTORY, 4) is None
    message = {"lineage": [g._asdict() for g in HISTORY]}
    assert lineage_of(message) == HISTORY and lineage_of({}) == ()


def test_what_later_generations_keep_of_an_earlier_one():
    assert kept_by_later(HISTORY, 1) == 100
    assert kept_by_later(HISTORY, 2) == 130
    assert kept_by_later(HISTORY, 3) is None
    # a message of generation 2 from position 131 on was published by the deposed primary b: dropped
    assert superseded(HISTORY, 2, 131) and superseded(HISTORY, 2, 140)
    assert not superseded(HISTORY, 2, 130) and not superseded(HISTORY, 3, 131) and not superseded(HISTORY, 1, 100)


def test_a_consumer_that_applied_the_loss_window_is_told_which_positions():
    assert list(lost_positions(2, 138, HISTORY, 3)) == list(range(131, 139))
    assert not lost_positions(2, 130, HISTORY, 3)  # exactly where the new primary went on
    assert not lost_positions(2, 120, HISTORY, 3)  # behind: the rest comes from the new generation
    assert not lost_positions(1, 100, HISTORY, 3)
    assert list(lost_positions(1, 135, HISTORY, 3)) == list(range(101, 136))  # across two changes: the earliest kept


def test_each_generation_numbers_its_layouts_apart():
    assert first_table_id(1) == 1
    assert first_table_id(2) == TABLE_IDS_PER_GENERATION + 1
    assert first_table_id(3) - first_table_id(2) == TABLE_IDS_PER_GENERATION
    assert first_table_id(2048) < 2**31  # still an integer column


def test_the_generation_header():
    assert generation_from_headers(generation_header(7)) == 7
    assert generation_from_headers([("pgfanout-mark", b"1,2,3")]) == 1
    assert generation_from_headers(None) == 1


def test_positions_read_as_ranges():
    assert describe_positions([5, 1, 2, 3, 9, 10]) == "1..3, 5, 9..10"
    assert describe_positions([]) == ""
