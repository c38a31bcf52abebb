"""Switchover and failover under a constant-total transfer workload (docs/switchover.md).

The tree: the primary (database `<name>_main` on the primary cluster), its subscriber `a` (the same
database, once it is not the primary), `b` (a database of the same name on the replica cluster, so that
one libpq multi-host string reaches whichever is the primary), `c` on a projected tier-2 route and `d`
on a tier-3 route fed from it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time

import psycopg
import pytest

from agent import capture
from devstack import processes
from devstack.demo import daemon_argv, reset_streams, write_config
from devstack.transfers import TABLES, Sampler, Writers, create, seed
from pgfanout.core.generations import generation_of, lineage_of
from pgfanout.runtime.pg import connect
from tests.integration.pipeline import Pipeline, contiguous, eventually, read_topic, transactions

pytestmark = pytest.mark.integration


def build(pipeline: Pipeline, tiers: int) -> dict[str, str]:
    """The tree with ``tiers`` levels (2 or 3); returns each database's connection string."""
    stack, name = pipeline.stack, pipeline.name
    primary, replica, kafka = stack.postgres("primary"), stack.postgres("replica"), stack.kafka("main")
    main = f"{name}_main"
    dsns = {"a": primary.dsn(main), "b": replica.dsn(main), "c": replica.dsn(f"{name}_c"), "d": replica.dsn(f"{name}_d")}
    routes = {
        f"{name}.all": {"upstream": name, "kafka": "local"},
        f"{name}.branch": {
            "upstream": f"{name}.all",
            "kafka": "local",
            "tables": {"public.accounts": {}, "public.transfers": {"columns": ["id", "from_id", "to_id", "amount"]}},
        },
    }
    distributors = {f"{name}.hq": {"routes": [f"{name}.all"]}, f"{name}.region": {"routes": [f"{name}.branch"]}}
    subscribers = {
        f"{name}.a": {"route": f"{name}.all", "dsn": dsns["a"]},
        f"{name}.b": {"route": f"{name}.all", "dsn": dsns["b"]},
        f"{name}.c": {"route": f"{name}.branch", "dsn": dsns["c"]},
    }
    if tiers == 3:
        routes[f"{name}.leaf"] = {"upstream": f"{name}.branch", "kafka": "local"}
        distributors[f"{name}.local"] = {"routes": [f"{name}.leaf"]}
        subscribers[f"{name}.d"] = {"route": f"{name}.leaf", "dsn": dsns["d"]}
    else:
        del dsns["d"]
    pipeline.reconfigure(
        {
            "kafka": {"local": {"bootstrap_servers": [kafka.bootstrap]}},
            "sources": {
                name: {
                    "dsn": dsns["a"],
                    "kafka": "local",
                    "tables": TABLES,
                    "as_subscriber": f"{name}.a",
                    "candidates": [f"{name}.a", f"{name}.b"],
                    "heartbeat_interval_ms": 200,
                }
            },
            "routes": routes,
            "distributors": distributors,
            "subscribers": subscribers,
        }
    )
    reset_streams(pipeline.config)
    primary.create_database(main, drop_first=True)
    for key, database in (("b", main), ("c", f"{name}_c"), ("d", f"{name}_d")):
        if key in dsns:
            replica.create_database(database, drop_first=True)
    for dsn in dsns.values():
        with psycopg.connect(dsn, autocommit=True) as conn:
            create(conn)
    with pipeline.primary() as conn:
        capture.install(conn, pipeline.config.sources[name], pipeline.config.subscriptions_of(name))
        seed(conn)
    roles = ["agent", *distributors, *subscribers]
    pipeline.start(*roles)
    for role in roles:
        pipeline.wait_for_log(role, "ready")
    dsns["any"] = (
        f"host=127.0.0.1,127.0.0.1 port={primary.port},{replica.port} dbname={main} user=postgres target_session_attrs=read-write"
    )
    return dsns


def rows(dsn: str, query: str) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query).fetchall()


ACCOUNTS = "SELECT id, balance FROM public.accounts ORDER BY id"
TRANSFERS = "SELECT id, from_id, to_id, amount FROM public.transfers ORDER BY id"


def switch(pipeline: Pipeline, to: str) -> float:
    """`pgfanout switchover`; returns the write unavailability it reports."""
    done = pipeline.command("switchover", "--to", f"{pipeline.name}.{to}", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"write unavailability: ([0-9.]+) s", done.stdout)
    assert found, done.stdout
    return float(found.group(1))


def published(dsn: str) -> int:
    """The last position the primary at ``dsn`` published, once nothing committed there is left unpublished."""
    with psycopg.connect(dsn, autocommit=True) as conn:

        def settled() -> int | None:
            last, left = conn.execute(
                "SELECT next_position - 1, (SELECT count(*) FROM pgfanout.log l, pgfanout.agent_state s "
                "JOIN pgfanout.tick t ON t.tick_id = s.published_tick "
                "WHERE NOT pg_visible_in_snapshot(l.txid, t.snapshot)) FROM pgfanout.agent_state"
            ).fetchone()
            return last if left == 0 else None

        last = eventually(settled, timeout=60)
        assert last, "the primary kept unpublished changes"
        return last


def equal_to_primary(pipeline: Pipeline, dsns: dict[str, str], primary: str, replicas: str) -> int:
    """Wait until each replica applied everything the primary published; each then holds what the primary
    holds (its share: c and d do not receive the transfers' xid). Returns the last position."""
    last = published(dsns[primary])
    for key in replicas:
        pipeline.wait_for_position(f"{pipeline.name}.{key}", last, timeout=120)
        assert rows(dsns[key], ACCOUNTS) == rows(dsns[primary], ACCOUNTS), key
        assert rows(dsns[key], TRANSFERS) == rows(dsns[primary], TRANSFERS), key
    return last


def start_if_killed(cluster) -> None:  # noqa: ANN001
    if cluster.pid() is None:
        cluster.start()
        cluster.wait_ready()


def test_switchover_round_trips_through_a_three_level_tree(pipeline):
    name = pipeline.name
    dsns = build(pipeline, tiers=3)
    for command in (("switchover", "--to", f"{name}.c"), ("failover", "--to", f"{name}.d")):
        refused = pipeline.command(*command)  # their routes carry a projection of the source: they lack data
        assert refused.returncode == 2 and "does not carry every table of the source whole" in refused.stderr, refused.stderr
    writers = Writers(dsns["any"]).start()
    sampler = Sampler({key: dsns[key] for key in "abcd"}).start()
    try:
        unavailable = []
        for target in ("b", "a", "b", "a"):
            time.sleep(3)
            before = len(writers.committed)
            started = time.monotonic()
            unavailable.append(switch(pipeline, target))
            seen = writers.longest_pause(started, time.monotonic())
            assert eventually(lambda before=before: len(writers.committed) > before + 20, timeout=30), writers.errors
            print(f"switchover to {target}: unavailable {unavailable[-1]:.3f} s by the command, {seen:.3f} s by the writers")
        time.sleep(2)
    finally:
        writers.finish()
        sampler.finish()
    assert max(unavailable) < 5, unavailable
    last = equal_to_primary(pipeline, dsns, "a", "bcd")  # the first primary again
    assert sampler.samples > 100 and sampler.violations == [], sampler.violations[:5]
    # every committed transfer is on the primary once, and nothing else is
    primary_transfers = rows(dsns["a"], TRANSFERS)
    assert {r[0] for r in primary_transfers} == writers.committed and len(primary_transfers) == len(writers.committed)
    assert writers.refused > 0  # writes were refused during the switchovers, and retried
    # no gap and no duplicate in any replica's applied positions, the old primary's included
    for key in "abcd":
        assert contiguous(pipeline, f"{name}.{key}") >= last - 1
    stream = read_topic(pipeline.config, name)
    generations = [generation_of(m) for _, _, m in stream]
    assert generations == sorted(generations) and generations[-1] == 5
    assert [(g.generation, g.primary) for g in lineage_of(stream[-1][2])] == [
        (1, f"{name}.a"),
        (2, f"{name}.b"),
        (3, f"{name}.a"),
        (4, f"{name}.b"),
        (5, f"{name}.a"),
    ]
    positions = [t["position"] for t in transactions(stream) if t["last_chunk"]]
    assert positions == list(range(1, len(positions) + 1))  # one stream, no position published twice
    assert "dropped the message" not in pipeline.log(f"{name}.hq")


def kill_cluster(pid: int) -> None:
    """kill -9 a PostgreSQL postmaster and every backend it started."""
    children = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == pid]
    for process in [pid, *children]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process, signal.SIGKILL)
    assert eventually(lambda: not any(processes.alive(p) for p in [pid, *children]), timeout=30)


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_failover_lists_the_loss_window_and_fences_the_old_primary(pipeline, tmp_path):
    name = pipeline.name
    dsns = build(pipeline, tiers=2)
    cluster = pipeline.stack.postgres("primary")
    writers = Writers(dsns["any"]).start()
    sampler = Sampler({key: dsns[key] for key in "bc"}).start()
    try:
        time.sleep(3)
        # the distributor stops first: the source topic then holds positions that no route carries
        pipeline.kill(f"{name}.hq")
        time.sleep(1.5)
        kill_cluster(cluster.pid())
        pipeline.kill(f"{name}.a")  # its database is gone with the primary
        failed = pipeline.command("failover", "--to", f"{name}.b", "--wait", "5", timeout=180)
        assert failed.returncode == 0, failed.stdout + failed.stderr
        print(failed.stdout)
        lost_published = {int(x) for x in re.findall(r"lost: position \d+, xid (\d+)", failed.stdout)}
        assert lost_published, failed.stdout  # what the distributor had not forwarded when the primary died
        assert "unreachable" in failed.stdout
        pipeline.start(f"{name}.hq")  # back: it drops what the deposed primary published past the new primary
        before = len(writers.committed)
        assert eventually(lambda: len(writers.committed) > before + 50, timeout=60), writers.errors  # writes on b
    finally:
        writers.finish()
        sampler.finish()
        start_if_killed(cluster)
    equal_to_primary(pipeline, dsns, "b", "c")
    assert sampler.samples > 50 and sampler.violations == [], sampler.violations[:5]
    assert "dropped the message" in pipeline.log(f"{name}.hq")
    contiguous(pipeline, f"{name}.c")

    # the old primary's agent, configured as before the failover, refuses to publish and guards its database
    old_config = tmp_path / "before-failover.yaml"
    write_config(
        old_config,
        {
            "kafka": {"local": {"bootstrap_servers": [pipeline.stack.kafka("main").bootstrap]}},
            "sources": {name: {"dsn": dsns["a"], "kafka": "local", "tables": TABLES}},
        },
    )
    fenced = subprocess.run(
        daemon_argv(old_config, "agent", "run", "--source", name), capture_output=True, text=True, timeout=120
    )
    assert fenced.returncode == 3, fenced.stderr
    assert "refuses to publish" in fenced.stderr and "is now guarded against writes" in fenced.stderr, fenced.stderr
    found = re.search(r"never published, which the new primary lacks \(xids ([0-9, ]+)\)", fenced.stderr)
    never_published = {int(x) for x in found.group(1).split(", ")} if found else set()
    refused = pytest.raises(psycopg.errors.ReadOnlySqlTransaction, match="does not accept writes")
    with refused, psycopg.connect(dsns["a"], autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = off")
        conn.execute("UPDATE public.accounts SET balance = balance WHERE id = 1")
    # exactly the transactions the old primary committed and the new one lacks were reported lost
    old = set(rows(dsns["a"], "SELECT id, xid FROM public.transfers"))
    new = set(rows(dsns["b"], "SELECT id, xid FROM public.transfers"))
    lacking = old - new
    assert {xid for _, xid in lacking} == lost_published | never_published
    assert lost_published.isdisjoint(never_published)
    # every transfer a writer saw committed is on the new primary, or among those reported lost
    new_ids = {transfer for transfer, _ in new}
    assert new_ids <= writers.committed <= new_ids | {transfer for transfer, _ in lacking}
    with connect(pipeline.config.subscribers[f"{name}.b"], "pgfanout-test") as conn:
        assert conn.execute("SELECT generation FROM pgfanout.agent_state").fetchone()[0] == 2


def test_failover_to_a_lagging_subscriber_stops_those_ahead_until_copied_again(pipeline):
    name = pipeline.name
    dsns = build(pipeline, tiers=2)
    cluster = pipeline.stack.postgres("primary")
    writers = Writers(dsns["any"]).start()
    try:
        time.sleep(2)
        pipeline.kill(f"{name}.b")  # b falls behind; c goes on
        time.sleep(2)
        kill_cluster(cluster.pid())
        pipeline.kill(f"{name}.a")
        failed = pipeline.command("failover", "--to", f"{name}.b", "--wait", "2", timeout=180)
        assert failed.returncode == 0, failed.stdout + failed.stderr
        assert f"subscriber {name}.c applied positions" in failed.stdout, failed.stdout
        assert f"pgfanout subscriber resync {name}.c" in failed.stdout
        # b leaves out what its route holds past its position, and goes on as the primary
        pipeline.start(f"{name}.b")
        before = len(writers.committed)
        assert eventually(lambda: len(writers.committed) > before + 50, timeout=60), writers.errors
        # c stops where generation 2 begins, naming the positions it holds that the new primary lacks
        assert eventually(lambda: pipeline.pid(f"{name}.c") is None, timeout=60), pipeline.log(f"{name}.c")
        stopped = pipeline.log(f"{name}.c")
        assert "which generation 2" in stopped and f"pgfanout subscriber resync {name}.c" in stopped, stopped[-2000:]
        copied = pipeline.command("subscriber", "resync", f"{name}.c", timeout=180)  # from the new primary
        assert copied.returncode == 0, copied.stdout + copied.stderr
        pipeline.start(f"{name}.c")
        time.sleep(2)
    finally:
        writers.finish()
        start_if_killed(cluster)
    equal_to_primary(pipeline, dsns, "b", "c")
    assert "left out the message" in pipeline.log(f"{name}.b")
