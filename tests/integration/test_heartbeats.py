"""Idle sources publish heartbeats, so downstream lag in seconds stays known."""

import os
import time
from pathlib import Path

import pytest

from pgfanout.runtime.daemon import autogroups_enabled
from tests.integration.pipeline import read_topic


def running_with_heartbeats_every(pipeline, milliseconds: int) -> None:
    """The whole pipeline running and caught up, its source publishing heartbeats at this interval."""
    pipeline.data["sources"][pipeline.source]["heartbeat_interval_ms"] = milliseconds
    pipeline.reconfigure(pipeline.data)
    pipeline.prepare()
    pipeline.seed()
    pipeline.start()
    pipeline.wait_caught_up(timeout=60)


def test_an_idle_source_publishes_heartbeats_that_reach_the_subscriber(pipeline):
    pipeline.data["sources"][pipeline.source]["agent_nice"] = 7
    running_with_heartbeats_every(pipeline, 200)
    agent, lowered = pipeline.pid("agent"), min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)
    assert os.getpriority(os.PRIO_PROCESS, agent) == lowered, "the agent lowered its priority"
    if autogroups_enabled():
        group = Path(f"/proc/{agent}/autogroup").read_text()
        assert group.endswith(f" nice {lowered}\n"), f"and its session's scheduling group's: {group}"
    sub = pipeline.subscribers[0]
    with pipeline.replica(sub) as conn:
        before = conn.execute("SELECT position, source_time FROM pgfanout_replica.position").fetchone()
    time.sleep(2)  # nothing is written on the primary meanwhile
    with pipeline.replica(sub) as conn:
        after = conn.execute("SELECT position, source_time FROM pgfanout_replica.position").fetchone()
    assert after[0] == before[0], "heartbeats do not advance the position"
    assert (after[1] - before[1]).total_seconds() > 1, "but they move the subscriber's source time on"

    messages = read_topic(pipeline.config, pipeline.source)
    beats = [m for _, kind, m in messages if kind == "Heartbeat"]
    assert len(beats) >= 6
    assert [b["tick_id"] for b in beats] == sorted({b["tick_id"] for b in beats})
    assert {b["position"] for b in beats[-3:]} == {before[0]}


def test_a_transaction_open_across_a_tick_is_published_without_waiting_for_a_heartbeat(pipeline):
    """It logged before a tick, committed after it, and nothing was logged since: the log's sequence did not
    move, so only the "running at the last tick" rule makes the agent look again."""
    import psycopg

    running_with_heartbeats_every(pipeline, 60_000)  # a heartbeat would hide the bug
    with psycopg.connect(pipeline.primary_dsn, autocommit=True) as late, pipeline.primary() as other:
        late.execute("BEGIN")
        late.execute("UPDATE public.accounts SET balance = balance + 1 WHERE id = 1")  # logged, not committed
        other.execute("UPDATE public.accounts SET balance = balance - 1 WHERE id = 2")  # makes the agent tick
        time.sleep(1)  # ticks come and go while `late` is open
        late.execute("COMMIT")
    started = time.monotonic()
    pipeline.wait_caught_up(timeout=30)
    assert time.monotonic() - started < 5, "the committed transaction waited for something else to tick"
    with pipeline.replica(pipeline.subscribers[0]) as conn:
        assert conn.execute("SELECT sum(balance) FROM public.accounts").fetchone()[0] == 20 * 1000


@pytest.mark.parametrize("pipeline", ["plpgsql"], indirect=True)  # it logs at once, before its commit
def test_the_newest_transaction_open_across_a_tick_is_published_without_waiting_for_a_heartbeat(pipeline):
    """It logged before a tick and no later transaction had ended: a snapshot lists running transactions only
    below its xmax (the newest ended one + 1), so this one is in no list, yet the tick did not see it."""
    import psycopg

    running_with_heartbeats_every(pipeline, 60_000)  # a heartbeat would hide the bug
    with psycopg.connect(pipeline.primary_dsn, autocommit=True) as late, pipeline.primary() as watch:
        last_tick = watch.execute("SELECT max(tick_id) FROM pgfanout.tick").fetchone()[0]
        late.execute("BEGIN")
        late.execute("UPDATE public.accounts SET balance = balance + 1 WHERE id = 1")  # logged, not committed
        xid = late.execute("SELECT pg_current_xact_id()").fetchone()[0]
        deadline = time.monotonic() + 10
        while True:  # the agent ticks because the log moved, and publishes that tick
            tick = watch.execute(
                "SELECT pg_snapshot_xmax(t.snapshot) <= %s FROM pgfanout.tick t JOIN pgfanout.agent_state s "
                "ON s.published_tick >= t.tick_id WHERE t.tick_id > %s ORDER BY t.tick_id LIMIT 1",
                (xid, last_tick),
            ).fetchone()
            if tick:
                break
            assert time.monotonic() < deadline, "the agent took no tick while the transaction was open"
            time.sleep(0.05)
        assert tick[0], "the tick's snapshot does not list the open transaction: it is at or past the snapshot's xmax"
        time.sleep(1)  # more ticks come and go, the log's sequence unchanged
        late.execute("COMMIT")
    started = time.monotonic()
    pipeline.wait_caught_up(timeout=30)
    assert time.monotonic() - started < 5, "the committed transaction waited for a heartbeat"


def test_a_quiet_agent_is_woken_by_a_commit_not_by_its_timer(pipeline):
    """Ticks every 5 s, yet each commit reaches the subscriber at once: the C trigger woke the agent (agent.wake).

    Each commit comes right after the pipeline caught up with the one before, that is right after a tick, so
    an agent waiting for its timer would take about 5 s each time."""
    settings = pipeline.data["sources"][pipeline.source]
    settings["tick_interval_ms"] = settings["busy_tick_interval_ms"] = 5000
    running_with_heartbeats_every(pipeline, 60_000)
    for round_ in range(3):
        with pipeline.primary() as conn:
            conn.execute("UPDATE public.accounts SET balance = balance + 1 WHERE id = 1")
            conn.execute("UPDATE public.accounts SET balance = balance - 1 WHERE id = 2")
        started = time.monotonic()
        pipeline.wait_caught_up(timeout=30)
        assert time.monotonic() - started < 1.5, f"commit {round_ + 1} waited for the agent's timer"
