"""The subscriber killed with SIGKILL at random moments, and its database restarted, during a workload."""

import random
import threading
import time

import psycopg
import pytest

from devstack.sample import ACCOUNTS, OPENING_BALANCE
from tests.integration.pipeline import eventually

pytestmark = pytest.mark.fault


def watch_total(dsn, stop, seen):
    """A reader on the replica: the total of all balances must never be anything but the opening total."""
    while not stop.is_set():
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                while not stop.is_set():
                    rows, total = conn.execute("SELECT count(*), coalesce(sum(balance), 0) FROM public.accounts").fetchone()
                    seen.append((rows, int(total)))
                    time.sleep(0.002)
        except psycopg.OperationalError:
            time.sleep(0.1)  # the replica's server restarts once during the test


def test_subscriber_kills_and_a_database_restart_lose_double_and_split_nothing(pipeline, stack):
    pipeline.prepare()
    pipeline.start()
    pipeline.seed()
    pipeline.wait_caught_up(timeout=60)
    victim = pipeline.subscribers[0]
    seen: list[tuple[int, int]] = []
    stop = threading.Event()
    reader = threading.Thread(target=watch_total, args=(pipeline.config.subscribers[victim].dsn, stop, seen))
    reader.start()
    workload, _ = pipeline.workload_in_background(seconds=120, writers=3, max_transactions=1500, seed_value=21)

    rng = random.Random(9)
    kills, restarted = 0, False
    while kills < 22:
        time.sleep(rng.uniform(0.6, 1.6))  # start-up takes about a second; most kills land while applying
        if pipeline.pid(victim):
            pipeline.kill(victim)
            kills += 1
        if kills == 11 and not restarted:
            stack.postgres("replica").restart()
            restarted = True
        ready = pipeline.log(victim).count("ready: position")
        pipeline.start(victim)
        if kills % 2 == 0:  # every other kill lands after its start-up, while it applies; the others anywhere
            started = eventually(lambda before=ready: pipeline.log(victim).count("ready: position") > before, timeout=60)
            assert started, f"{victim} did not start"
    workload.join()
    pipeline.wait_caught_up(timeout=120)
    stop.set()
    reader.join()

    equal, lines = pipeline.proof()
    assert equal, "\n".join(lines)
    broken = [s for s in seen if s[0] == ACCOUNTS and s[1] != ACCOUNTS * OPENING_BALANCE]
    assert len(seen) > 500 and not broken, f"a reader saw a half-applied transfer: {broken[:5]}"
    with pipeline.replica(victim) as conn:
        ranges = conn.execute(
            "SELECT first_position, last_position FROM pgfanout_replica.applied WHERE subscriber = %s ORDER BY first_position",
            (victim,),
        ).fetchall()
        position = conn.execute("SELECT position FROM pgfanout_replica.position WHERE subscriber = %s", (victim,)).fetchone()[0]
    assert ranges[0][0] == 1 and ranges[-1][1] == position
    for (_, last), (first, _) in zip(ranges, ranges[1:], strict=False):
        assert first == last + 1, f"gap or repeat between {last} and {first}"
    assert pipeline.log(victim).count("ready: position") >= 12
