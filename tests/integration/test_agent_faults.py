"""The agent killed with SIGKILL at random moments, and Kafka restarted, during a workload."""

import random
import re
import time
from datetime import UTC, datetime

import pytest

from agent.agent import Agent, fence
from devstack.broker import ensure_jars
from devstack.demo import wait_caught_up
from devstack.sample import run_workload
from pgfanout.core.codec import default_codec
from pgfanout.core.errors import FatalError
from pgfanout.core.generations import Generation
from pgfanout.runtime import kafka as kafkautil
from tests.integration.pipeline import read_topic, transaction_positions, transactions

pytestmark = pytest.mark.fault


READY = " ready: published tick "  # what the agent logs when it starts to publish


def wait_ready(pipeline, started_before: int, timeout: float = 20.0) -> bool:
    """Whether the agent started after ``started_before`` ready lines logs it is ready within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pipeline.log("agent").count(READY) > started_before:
            return True
        if not pipeline.pid("agent"):
            return False
        time.sleep(0.05)
    return False


def test_agent_kills_and_a_kafka_restart_lose_and_double_nothing(pipeline, stack):
    pipeline.data["sources"][pipeline.source]["log_switch_bytes"] = 8192  # kills land in log switches too
    pipeline.reconfigure(pipeline.data)
    pipeline.prepare()
    pipeline.start("agent")
    pipeline.seed()
    # paced, so that the kills land while transactions commit and the log switches, not after
    workload, result = pipeline.workload_in_background(
        seconds=90, writers=3, max_transactions=1500, seed_value=11, record_xids=True, pause_seconds=0.02
    )

    rng = random.Random(5)
    kills = kills_at_work = started_before = 0
    kafka_restarted = False
    while kills < 24 and (workload.is_alive() or kills < 20):
        # start-up takes seconds (it outlives the killed agent's orphaned writes first): every other kill waits
        # for the agent to say it is ready, so that kills land in start-up and in work (ticks, log switches) alike
        if kills % 2 and wait_ready(pipeline, started_before):
            kills_at_work += 1
            time.sleep(rng.uniform(0.1, 1.5))
        else:
            time.sleep(rng.uniform(0.2, 1.6))
        if pipeline.pid("agent"):
            pipeline.kill("agent")
            kills += 1
        if kills == 10 and not kafka_restarted:
            node = stack.kafka("main")
            node.stop()
            time.sleep(2)  # the primary keeps taking writes; the log absorbs them
            node.start(ensure_jars())
            kafka_restarted = True
        started_before = pipeline.log("agent").count(READY)
        pipeline.start("agent")
    workload.join()
    assert kills >= 20 and kafka_restarted
    assert kills_at_work >= 8, f"only {kills_at_work} kills landed after the agent was ready"

    wait_caught_up(pipeline.config.model_copy(update={"subscribers": {}}), timeout=120)

    parts = transactions(read_topic(pipeline.config, pipeline.source))
    assert all(p["chunk"] == 0 and p["last_chunk"] for p in parts), "these small transactions need no chunks"
    positions = [t["position"] for t in parts]
    assert positions == list(range(1, len(positions) + 1)), "positions must be consecutive, without repeats"
    published = [t["xid"] for t in parts]
    assert len(set(published)) == len(published), "a transaction was published twice"
    committed = set(result["stats"].xids)
    assert committed, "the workload recorded no xids"
    missing = committed - set(published)
    assert not missing, f"{len(missing)} committed transactions were never published"
    # the seed transaction is published too; nothing else is
    assert len(set(published) - committed) == 1
    ticks = [t["tick_id"] for t in parts]
    assert ticks == sorted(ticks)
    assert pipeline.log("agent").count("log switched") >= 2


class Crash(BaseException):
    """Stands for the process dying at that instant: nothing after it runs, no cleanup is trusted."""


def published_positions(pipeline):
    return transaction_positions(read_topic(pipeline.config, pipeline.source))


def test_crash_between_publishing_and_recording_a_batch_is_finished_not_repeated(pipeline, monkeypatch):
    pipeline.prepare()
    pipeline.seed()
    stats = run_workload(pipeline.primary_dsn, seconds=30, writers=2, max_transactions=100, seed_value=3, record_xids=True)
    agent = Agent(pipeline.config, pipeline.source)
    session = agent.connect()
    monkeypatch.setattr(session, "_record", lambda *a: (_ for _ in ()).throw(Crash()))
    try:
        with pytest.raises(Crash):
            agent.work()
        published = published_positions(pipeline)
    finally:
        agent.close()  # the dead process's sockets close with it
    # one batch holds everything: the seed and each workload transaction that changed published rows
    assert len(stats.xids) >= 150 and len(published) == 1 + len(stats.xids)

    again = Agent(pipeline.config, pipeline.source)
    resumed = again.connect()  # reconciles: the topic holds the whole batch, the primary records none of it
    assert resumed.state.next_position == published[-1] + 1
    again.work()
    again.close()
    assert published_positions(pipeline) == published, "nothing may be published twice"


def test_a_deposed_primary_lists_as_never_published_only_what_the_topic_lacks(pipeline, monkeypatch):
    pipeline.prepare()
    pipeline.seed()
    run_workload(pipeline.primary_dsn, seconds=30, writers=2, max_transactions=40, seed_value=6)
    agent = Agent(pipeline.config, pipeline.source)
    session = agent.connect()
    monkeypatch.setattr(session, "_record", lambda *a: (_ for _ in ()).throw(Crash()))
    try:
        with pytest.raises(Crash):
            agent.work()  # the topic holds the batch, the primary does not record it
    finally:
        agent.close()
    published = {t["xid"] for t in transactions(read_topic(pipeline.config, pipeline.source))}
    later = run_workload(pipeline.primary_dsn, seconds=30, writers=2, max_transactions=30, seed_value=7, record_xids=True)
    assert later.xids

    deposed = Generation(2, 1, "elsewhere")
    with pipeline.primary() as conn:
        note = fence(conn, pipeline.source, deposed, Agent(pipeline.config, pipeline.source)._published_after)
    found = re.search(r"never published, which the new primary lacks \(xids ([0-9, ]+)\)", note)
    assert found, note
    never_published = {int(x) for x in found.group(1).split(", ")}
    assert never_published == set(later.xids), note
    assert never_published.isdisjoint(published)


def test_what_a_deposed_primary_published_is_found_past_the_generation_that_followed(pipeline):
    """Generation 1 published positions 1..10 and its primary recorded 8 when it died; the new primary took
    the role at position 2 and published 3..40 as generation 2. Positions start again lower along the topic,
    so the search for what follows 8 goes by (generation, position)."""
    cluster, topic, codec = pipeline.config.kafka["local"], f"pgfanout.test.{pipeline.name}", default_codec()
    kafkautil.ensure_topic(cluster, topic, 1 << 20)
    producer = kafkautil.producer(cluster, 1 << 20)
    try:
        for generation, positions in ((1, range(1, 11)), (2, range(3, 41))):
            for position in positions:
                batch = {
                    "source": pipeline.source,
                    "tick_id": position,
                    "tick_time": datetime.now(UTC),
                    "batch_end": True,
                    "generation": generation,
                    "tables": [],
                    "transactions": [
                        {"position": position, "xid": 1000 * generation + position, "chunk": 0, "last_chunk": True, "changes": []}
                    ],
                }
                producer.send(topic, codec.encode("Batch", batch), partition=0)
        producer.flush(timeout=30)
    finally:
        kafkautil.close_producer(producer)
    assert kafkautil.published_after(cluster, topic, codec.decode, 8, 1) == [(9, 1009), (10, 1010)]
    assert kafkautil.published_after(cluster, topic, codec.decode, 38, 2) == [(39, 2039), (40, 2040)]


def test_crash_in_the_middle_of_a_batch_publishes_the_rest_once(pipeline, monkeypatch):
    pipeline.prepare()
    pipeline.seed()
    run_workload(pipeline.primary_dsn, seconds=30, writers=2, max_transactions=150, seed_value=4)
    source = pipeline.config.sources[pipeline.source]
    small = pipeline.config.model_copy(update={"sources": {pipeline.source: source.model_copy(update={"message_bytes": 4096})}})
    agent = Agent(small, pipeline.source)
    session = agent.connect()
    original, sent = session._send, []

    def send_then_die(value, mark, traced=False):
        if len(sent) == 3:
            session.producer.flush(timeout=30)
            raise Crash()
        original(value, mark, traced)
        sent.append(mark.position)

    monkeypatch.setattr(session, "_send", send_then_die)
    with pytest.raises(Crash):
        agent.work()
    agent.close()  # the dead process's sockets close with it
    partial = published_positions(pipeline)
    assert partial and partial[-1] == sent[-1]

    again = Agent(small, pipeline.source)
    again.connect()  # finishes the half-published batch
    again.close()
    positions = published_positions(pipeline)
    assert positions == list(range(1, len(positions) + 1))
    assert len(positions) > len(partial)
    with pipeline.primary() as conn:
        assert conn.execute("SELECT next_position FROM pgfanout.agent_state").fetchone()[0] == positions[-1] + 1


def test_agent_reconnects_after_a_primary_restart_and_loses_nothing(pipeline, stack):
    pipeline.prepare()
    pipeline.seed()
    pipeline.start("agent")
    pipeline.wait_for_log("agent", "ready:")  # connected before the restart, so it must notice it
    first = run_workload(pipeline.primary_dsn, seconds=30, writers=2, max_transactions=100, seed_value=8, record_xids=True)
    stack.postgres("primary").restart()
    second = run_workload(pipeline.primary_dsn, seconds=30, writers=2, max_transactions=100, seed_value=9, record_xids=True)
    wait_caught_up(pipeline.config.model_copy(update={"subscribers": {}}), timeout=120)
    assert pipeline.pid("agent"), "the agent must survive the restart"
    published = [p["xid"] for p in transactions(read_topic(pipeline.config, pipeline.source))]
    assert len(published) == len(set(published))
    assert set(first.xids) | set(second.xids) <= set(published)
    log = pipeline.log("agent")
    assert "retrying in" in log, "the agent lost its connection and came back by itself"
    assert log.count("ready:") >= 2


def test_a_row_too_large_for_any_message_stops_the_agent_naming_its_position_and_publishes_nothing(pipeline):
    pipeline.prepare()
    source = pipeline.config.sources[pipeline.source]
    tight = pipeline.config.model_copy(
        update={"sources": {pipeline.source: source.model_copy(update={"message_bytes": 1024, "max_message_bytes": 2048})}}
    )
    with pipeline.primary() as conn:
        conn.execute("INSERT INTO public.products SELECT 'SMALL', 'fits', 1, NULL")
        conn.execute("INSERT INTO public.products SELECT 'HUGE', repeat(md5(g::text), 200), 1, NULL FROM generate_series(1, 1) g")
    agent = Agent(tight, pipeline.source)
    agent.connect()
    try:
        with pytest.raises(
            FatalError,
            match=r"position 2 \(tick \d+\) encodes to \d+ bytes, over "
            rf"sources\.{pipeline.source}\.max_message_bytes=2048",
        ):
            agent.work()
        state, _ = agent.session._read_state()
    finally:
        agent.close()
    assert state.next_position == 1, "the tick is not recorded as published"
    assert [t["position"] for t in transactions(read_topic(pipeline.config, pipeline.source))] == [1]


def test_the_agent_prepares_its_batch_statement_again_after_the_session_lost_it(pipeline):
    """psycopg sends DEALLOCATE ALL after a ROLLBACK on the connection (a log switch that finds a lock taken)."""
    pipeline.prepare()
    with pipeline.primary() as conn:
        conn.execute("INSERT INTO public.products SELECT 'ONE', 'one', 1, NULL")
    agent = Agent(pipeline.config, pipeline.source)
    agent.connect()
    try:
        agent.session.conn.execute("DEALLOCATE ALL")
        agent.work()
        state, _ = agent.session._read_state()
    finally:
        agent.close()
    assert state.next_position == 2
    assert transaction_positions(read_topic(pipeline.config, pipeline.source)) == [1]
