"""Distributors killed with SIGKILL at random moments, and the downstream Kafka cluster stopped for 20 seconds.

The tree of test_tiers (HQ cluster -> region cluster, two filtering distributors) runs
under a workload. Every route topic must end up holding each source position exactly
once, in order, and the replicas must equal the filtered primary.
"""

import os
import random
import signal
import time

import pytest

from devstack.broker import ensure_jars
from tests.integration.pipeline import read_topic, transaction_positions
from tests.integration.test_tiers import assert_leaves_equal_filtered_primary, tree

pytestmark = pytest.mark.fault


def test_distributor_kills_and_a_downstream_outage_lose_and_double_nothing(pipeline, second_kafka):
    pipeline.reconfigure(tree(pipeline, second_kafka))
    pipeline.prepare(bare=tuple(pipeline.subscribers))
    pipeline.seed()
    name = pipeline.name
    distributors = [f"{name}.hq", f"{name}.regional"]
    for subscriber in pipeline.subscribers:
        done = pipeline.command("subscriber", "init", subscriber)
        assert done.returncode == 0, done.stderr
    pipeline.start("agent", *distributors, *pipeline.subscribers)
    workload, result = pipeline.workload_in_background(seconds=150, writers=2, max_transactions=2500, seed_value=3)

    rng = random.Random(11)
    kills, outage_done = 0, False
    while kills < 22:
        time.sleep(rng.uniform(0.3, 1.8))  # a distributor starts in about a second: kills land in start-up and work
        victim = rng.choice(distributors)
        if pipeline.pid(victim):
            pipeline.kill(victim)
            kills += 1
        pipeline.start(victim)
        if kills == 10 and not outage_done:
            second_kafka.stop()  # the region cluster: both routes' topics and the subscribers' upstream
            time.sleep(20)  # the HQ distributor waits through its retries; the source topic keeps the backlog
            second_kafka.start(ensure_jars())
            outage_done = True
    for distributor in distributors:
        pipeline.start(distributor)
    workload.join()
    assert kills >= 20 and outage_done
    assert result["stats"].committed > 300

    pipeline.wait_caught_up(timeout=180)
    source_positions = transaction_positions(read_topic(pipeline.config, name))
    assert source_positions == list(range(1, len(source_positions) + 1))
    for route in (f"{name}.east", f"{name}.branch"):
        assert transaction_positions(read_topic(pipeline.config, route)) == source_positions, (
            f"{route} lost, doubled or reordered a transaction"
        )
    assert_leaves_equal_filtered_primary(pipeline)

    # a distributor stopped (SIGTERM) or killed (SIGKILL) leaves none of its routing workers behind,
    # and a stop does not wait for the 30 s escalation to SIGKILL
    hq = f"{name}.hq"
    pipeline.wait_for_log(hq, "ready:")
    started = time.monotonic()
    pipeline.kill(hq, signal.SIGTERM)
    assert time.monotonic() - started < 10, "the distributor did not stop promptly on SIGTERM"
    assert_no_leftovers(pipeline, hq)
    readies = pipeline.log(hq).count("ready:")
    pipeline.start(hq)
    deadline = time.monotonic() + 30
    while pipeline.log(hq).count("ready:") == readies and time.monotonic() < deadline:
        time.sleep(0.1)
    pipeline.kill(hq)
    assert_no_leftovers(pipeline, hq)


def assert_no_leftovers(pipeline, distributor: str) -> None:
    deadline = time.monotonic() + 10
    while leftovers(pipeline, distributor) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not leftovers(pipeline, distributor), "routing workers outlived their distributor"


def leftovers(pipeline, distributor: str) -> list[int]:
    """Processes still running `pgfanout distributor run` for this distributor of this pipeline's config."""
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if b"distributor" in argv and distributor.encode() in argv and str(pipeline.config_path).encode() in argv:
            found.append(int(pid))
    return found
