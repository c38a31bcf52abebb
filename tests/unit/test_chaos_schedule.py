"""The chaos run's pure decisions: the order of its faults and the account it gives."""

import random
import time
from types import SimpleNamespace

from bench.chaos.run import LANES, Marks, per_kind_for
from bench.chaos.schedule import KINDS, Account, Injected, deck, duplicated_or_unordered, missing, range_problems


def test_a_deck_holds_each_kind_as_often_and_rarely_one_twice_in_a_row():
    for seed in range(50):
        cards = deck(20, random.Random(seed))
        assert sorted(cards) == sorted(k for k in KINDS for _ in range(20))
        repeats = sum(a == b for a, b in zip(cards, cards[1:], strict=False))
        assert repeats <= 1, cards


def test_the_lanes_cover_every_kind_once_and_ten_minutes_hold_twenty_of_each():
    assert sorted(k for kinds in LANES.values() for k in kinds) == sorted(KINDS)
    assert per_kind_for(10) >= 20
    assert 2 <= per_kind_for(2.5) < per_kind_for(10)


def test_positions_twice_or_backwards_are_reported():
    assert duplicated_or_unordered("t", [1, 2, 3]) == []
    assert duplicated_or_unordered("t", [1, 2, 2, 3]) == ["t: position 2 twice"]
    assert duplicated_or_unordered("t", [1, 3, 2]) == ["t: position 2 after 3"]
    assert missing("t", [1, 3], {1, 2, 3}) == ["t: lacks position 2"]


def test_applied_ranges_that_leave_a_gap_or_overlap_are_reported():
    assert range_problems("s", [(1, 4), (5, 9)]) == ([], [])
    assert range_problems("s", [(1, 4), (6, 9)]) == (["s: applied positions 4 then 6"], [])
    assert range_problems("s", [(1, 4), (4, 9)]) == ([], ["s: position 4 applied twice (a range ends at 4)"])
    assert range_problems("s", [(2, 4)])[0] == ["s: applied from position 2, not 1"]


def test_the_account_counts_faults_and_recoveries_by_kind_and_is_clean_only_without_problems():
    account = Account(faults=[Injected("kill", "agent", 1.0, 2.0, 3.5), Injected("kill", "hq", 5.0, 6.0, None)])
    kill = next(row for row in account.rows() if row["kind"] == "kill")
    assert kill == {"kind": "kill", "injected": 2, "recovered": 1, "recovery_median_s": 1.5, "recovery_max_s": 1.5}
    assert account.clean and "| SIGKILL of a daemon (restarted as a supervisor would) | 2 | 1 | 1.5 | 1.5 |" in account.table()
    account.duplicated.append("t: position 2 twice")
    assert not account.clean and account.problems() == ["t: position 2 twice"]


def test_a_fault_whose_mark_arrives_with_the_final_one_is_still_counted_recovered():
    # The run ends as soon as the final mark is on every replica; the marks of its last faults arrive with it.
    tree = SimpleNamespace(tier1=["t1"], tier2=["t2"])
    marks = Marks(tree, started=time.monotonic())
    marks._replica_marks = lambda conns: [7, 7]
    late, pending = Injected("kill", "chaos.hq", 90.0, 90.5), Injected("kafka", "kafka second", 91.0, 92.0)
    marks.waiting = [(6, late), (8, pending)]
    marks.stop.set()
    marks.thread.start()
    marks.thread.join(timeout=5)
    assert late.recovered is not None
    assert pending.recovered is None and marks.waiting == [(8, pending)]
