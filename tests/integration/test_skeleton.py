"""The walking skeleton end to end: primary -> agent -> Kafka -> distributor -> two subscribers."""

import random
import time

from tests.integration.pipeline import read_topic, transaction_positions


def test_concurrent_writers_replicate_to_both_subscribers_through_subscriber_kills(pipeline):
    pipeline.prepare()
    pipeline.start()
    pipeline.seed()
    # Bounded by time first: the kills below are paced by the clock, so a workload that only counted
    # transactions could end before them on a fast machine (as cheaper capture made it do).
    workload, result = pipeline.workload_in_background(seconds=8, writers=4, max_transactions=3000, seed_value=7)

    # Kill one subscriber with SIGKILL at random moments mid-workload, and restart it each time.
    rng = random.Random(2)
    victim = pipeline.subscribers[0]
    kills = 0
    while workload.is_alive() and kills < 4:
        time.sleep(rng.uniform(0.5, 1.5))
        pipeline.kill(victim)
        kills += 1
        time.sleep(rng.uniform(0.1, 0.5))
        pipeline.start(victim)
    workload.join()
    assert kills >= 2, "the workload ended before the subscriber could be killed twice"
    assert result["stats"].committed >= 2000

    pipeline.wait_caught_up(timeout=120)
    equal, lines = pipeline.proof()
    assert equal, "\n".join(lines)

    # The source topic holds each committed transaction exactly once, in position order.
    source_positions = transaction_positions(read_topic(pipeline.config, pipeline.source))
    assert source_positions == list(range(1, len(source_positions) + 1))
    route_positions = transaction_positions(read_topic(pipeline.config, pipeline.route))
    assert route_positions == source_positions

    # Both replicas recorded the last position in their position table.
    for sub in pipeline.subscribers:
        with pipeline.replica(sub) as conn:
            stored = conn.execute("SELECT position FROM pgfanout_replica.position WHERE subscriber = %s", (sub,)).fetchone()
        assert stored[0] == source_positions[-1]
    assert "ready: position" in pipeline.log(victim)
