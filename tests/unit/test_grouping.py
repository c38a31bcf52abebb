"""The subscriber's pure decisions: what each part is, when collected changes are applied, when to commit."""

import pytest

from pgfanout.core.errors import PositionError, StreamGap, StreamPlace
from pgfanout.core.positions import WHOLE, Progress
from subscriber.columns import tables_to_extend
from subscriber.grouping import (
    FLUSH_CHANGES,
    Action,
    Group,
    action_for,
    apply_now,
    commit_due,
    described_differently,
    group_full,
    is_whole,
)

AT = StreamPlace("pgfanout.route.all", 0, 41)


def part(position, chunk=0, last_chunk=True, tables=(1,)):
    return {
        "position": position,
        "xid": 900 + position,
        "chunk": chunk,
        "last_chunk": last_chunk,
        "changes": [{"table": t, "op": "INSERT", "values": ["1"], "nulls": [], "old_key": []} for t in tables],
    }


def test_each_part_is_applied_skipped_or_a_duplicate():
    assert action_for(Progress(4), part(5), skips=(), where=AT) is Action.APPLY
    assert action_for(Progress(4), part(5), skips={5}, where=AT) is Action.SKIP
    assert action_for(Progress(5), part(5), skips=(), where=AT) is Action.DUPLICATE
    assert action_for(Progress(5), part(3), skips={3}, where=AT) is Action.DUPLICATE, "a skip is for what comes"
    assert action_for(Progress(5, 0), part(5, chunk=1), skips=(), where=AT) is Action.APPLY


def test_a_gap_or_a_broken_transaction_stops_with_where_it_is():
    with pytest.raises(StreamGap) as gap:
        action_for(Progress(4), part(7), skips=(), where=AT)
    assert (gap.value.topic, gap.value.partition, gap.value.offset, gap.value.position) == ("pgfanout.route.all", 0, 41, 5)
    with pytest.raises(PositionError) as broken:
        action_for(Progress(5, 0), part(5, chunk=2), skips=(), where=AT)
    assert broken.value.position == 5 and broken.value.offset == 41


def test_a_group_commits_only_between_whole_transactions():
    group = Group(Progress(4), tick_id=7, source_time=None, offset=40)
    group.advance(part(5, chunk=0, last_chunk=False))
    assert group.pending == Progress(5, 0) and not group.whole and group.transactions == 0
    group.offset = 41
    assert not commit_due(group, committed_offset=40), "half a transaction never commits"
    group.advance(part(5, chunk=1, last_chunk=True))
    assert group.pending == Progress(5, WHOLE) and group.whole and group.transactions == 1
    assert commit_due(group, committed_offset=40)
    assert not commit_due(group, committed_offset=41), "nothing new since the last commit"
    after = group.successor()
    assert (after.pending, after.offset, after.transactions, after.started) == (Progress(5), 41, 0, None)


def test_collected_changes_are_applied_for_chunks_and_at_the_memory_bound():
    assert is_whole(part(5)) and not is_whole(part(5, chunk=1)) and not is_whole(part(5, last_chunk=False))
    assert not apply_now(part(5), collected_changes=10)
    assert apply_now(part(5), collected_changes=FLUSH_CHANGES)
    assert apply_now(part(5, chunk=0, last_chunk=False), collected_changes=1)


def test_a_group_is_full_by_count_or_by_age():
    group = Group(Progress(0), 0, None, -1, transactions=3, started=100.0)
    assert not group_full(group, now=100.1, max_transactions=5, max_seconds=0.2)
    assert group_full(group, now=100.3, max_transactions=5, max_seconds=0.2)
    assert group_full(group, now=100.0, max_transactions=3, max_seconds=0.2)
    assert not group_full(Group(Progress(0), 0, None, -1), now=5.0, max_transactions=3, max_seconds=0.2)


def test_a_table_described_otherwise_and_new_columns():
    assert described_differently({1: "a"}, {1: "b"}) and not described_differently({1: "a"}, {1: "a", 2: "c"})
    assert tables_to_extend(part(5, tables=(3, 1, 3, 2)), {3: None, 2: None}) == [3, 2]
