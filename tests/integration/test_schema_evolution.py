"""ALTER TABLE on the primary mid-stream: added and dropped columns reach the replicas at their place; schemas registered.
(Every other kind of schema change: test_schema_changes.py.)"""

import time

from pgfanout.core.codec import default_codec
from pgfanout.runtime.registry import REGISTRY_TOPIC
from tests.integration.pipeline import BOTH_TRIGGERS


@BOTH_TRIGGERS
def test_columns_added_mid_stream_reach_the_replicas_with_their_values(pipeline):
    pipeline.prepare()
    pipeline.start()
    pipeline.seed()
    workload, _ = pipeline.workload_in_background(seconds=30, writers=2, max_transactions=600, seed_value=12)
    time.sleep(1.5)
    with pipeline.primary() as conn:
        # existing rows get 7 without being rewritten (PostgreSQL's "missing value"), new ones their own
        conn.execute("ALTER TABLE public.customers ADD COLUMN loyalty integer DEFAULT 7")
        conn.execute("ALTER TABLE public.products ADD COLUMN color text")
        time.sleep(0.5)
        conn.execute("INSERT INTO public.customers (id, name, loyalty) VALUES (-1, 'after the change', 99)")
        conn.execute("UPDATE public.products SET color = 'red' WHERE sku = 'SKU-7'")
        conn.execute("ALTER TABLE public.products DROP COLUMN color")  # and so do the replicas, there
        conn.execute("UPDATE public.products SET title = 'retitled' WHERE sku = 'SKU-8'")
    workload.join()
    pipeline.wait_caught_up(timeout=120)
    with pipeline.primary() as conn:
        expected = conn.execute("SELECT id, loyalty FROM public.customers ORDER BY id").fetchall()
    assert (-1, 99) in expected and sum(1 for _, loyalty in expected if loyalty == 7) >= 1
    for sub in pipeline.subscribers:
        with pipeline.replica(sub) as conn:
            assert conn.execute("SELECT id, loyalty FROM public.customers ORDER BY id").fetchall() == expected
            assert conn.execute("SELECT title FROM public.products WHERE sku IN ('SKU-7', 'SKU-8') ORDER BY sku").fetchall() == [
                ("Product 7",),
                ("retitled",),
            ]
            assert conn.execute(
                "SELECT to_regclass('public.products') IS NOT NULL AND NOT EXISTS (SELECT FROM pg_attribute "
                "WHERE attrelid = 'public.products'::regclass AND attname = 'color' AND NOT attisdropped)"
            ).fetchone()[0]
        assert "add column loyalty integer (existing rows: '7')" in pipeline.log(sub)
    equal, lines = pipeline.proof()
    assert equal, "\n".join(lines)


def test_the_registry_topic_holds_every_schema_the_agent_writes_with(pipeline):
    from pgfanout.core.codec import Codec
    from pgfanout.runtime import kafka as kafkautil
    from pgfanout.runtime import registry

    pipeline.prepare()
    pipeline.start("agent")
    pipeline.wait_for_log("agent", "ready")
    cluster = pipeline.config.kafka["local"]
    fresh = Codec()
    fresh._by_fingerprint = {k: v for k, v in fresh._by_fingerprint.items() if v.reader is None}  # no history files
    known_before = set(fresh._by_fingerprint)
    assert registry.load(cluster, fresh) >= len(default_codec().all_schemas)
    assert set(fresh._by_fingerprint) >= {w.fingerprint for w in default_codec().all_schemas} > known_before
    consumer = kafkautil.consumer(cluster)
    try:
        admin_configs = consumer.topics()
        assert REGISTRY_TOPIC in admin_configs
    finally:
        consumer.close()
