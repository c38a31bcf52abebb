"""The chaos run, short: every kind of fault at random on a three-level tree under load (bench/chaos)."""

import pytest

from bench.chaos.run import Settings, per_kind_for, run_chaos

pytestmark = pytest.mark.fault
MINUTES = 1.5  # of faults: with setting up and catching up, about two minutes and a half


def test_a_short_chaos_run_loses_doubles_and_tears_nothing(stack, second_kafka):
    account = run_chaos(stack, Settings(MINUTES, per_kind_for(MINUTES), seed=7))
    print(account.table())
    kinds = {row["kind"]: row["injected"] for row in account.rows()}
    assert all(count >= 2 for count in kinds.values()), kinds  # 3 of each are dealt; a slow broker start may leave one out
    assert account.samples > 500 and account.transactions > 1000, (account.samples, account.transactions)
    assert account.clean, "\n".join(account.problems()[:30])
    assert all(fault.recovered is not None for fault in account.faults), [f for f in account.faults if f.recovered is None]
