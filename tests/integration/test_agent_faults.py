"""The agent killed with SIGKILL at random moments, and Kafka restarted, during a workload."""

import random
import threading
import time

import pytest

from pgfanout.demo import wait_caught_up
from pgfanout.local.kafka import ensure_jars
from pgfanout.sample import run_workload
from tests.integration.pipeline import read_topic

pytestmark = pytest.mark.fault


def test_agent_kills_and_a_kafka_restart_lose_and_double_nothing(pipeline, stack):
    pipeline.prepare()
    pipeline.start("agent")
    pipeline.seed()
    result = {}
    workload = threading.Thread(target=lambda: result.update(stats=run_workload(
        pipeline.primary_dsn, seconds=90, writers=3, max_transactions=1500, seed_value=11, record_xids=True)))
    workload.start()

    rng = random.Random(5)
    kills = 0
    kafka_restarted = False
    while kills < 24 and (workload.is_alive() or kills < 20):
        time.sleep(rng.uniform(0.05, 0.8))
        if pipeline.pid("agent"):
            pipeline.kill("agent")
            kills += 1
        if kills == 10 and not kafka_restarted:
            node = stack.kafka("main")
            node.stop()
            time.sleep(2)  # the primary keeps taking writes; the log absorbs them
            node.start(ensure_jars())
            kafka_restarted = True
        pipeline.start("agent")
    workload.join()
    assert kills >= 20 and kafka_restarted

    wait_caught_up(pipeline.config.model_copy(update={"subscribers": {}}), timeout=120)

    messages = read_topic(pipeline.config, pipeline.source)
    transactions = [m for _, kind, m in messages if kind == "Transaction"]
    positions = [t["position"] for t in transactions]
    assert positions == list(range(1, len(positions) + 1)), "positions must be consecutive, without repeats"
    published = [t["xid"] for t in transactions]
    assert len(set(published)) == len(published), "a transaction was published twice"
    committed = set(result["stats"].xids)
    assert committed, "the workload recorded no xids"
    missing = committed - set(published)
    assert not missing, f"{len(missing)} committed transactions were never published"
    # the seed transaction is published too; nothing else is
    assert len(set(published) - committed) == 1
    ticks = [t["tick_id"] for t in transactions]
    assert ticks == sorted(ticks)
    # some kills fell between publishing and recording a batch, so reconciliation really ran
    assert "is ahead of the primary" in pipeline.log("agent")
