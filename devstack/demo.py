"""`python -m devstack demo` (what `make demo` runs): the whole pipeline on the local stack, with proof.

One primary database (shop) and two subscriber databases (sub1, sub2); the agent, one
distributor and two subscribers run as background processes that stay up afterwards.
The helpers here are also what the integration tests use to drive the pipeline.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import yaml

from devstack import processes
from devstack.compare import primary_keys, table_digest
from devstack.sample import SAMPLE_TABLES, create_schema, run_workload, seed
from devstack.stack import Stack
from pgfanout.cli import status
from pgfanout.cli.status import source_position, subscriber_position
from pgfanout.core.config import Config, load_config
from pgfanout.core.errors import PgfanoutError
from pgfanout.core.names import parse_table
from pgfanout.runtime import kafka as kafkautil
from pgfanout.runtime.pg import connect

SUBSCRIBERS = ("sub1", "sub2")


def demo_config(stack: Stack, route_upstream: str = "shop") -> dict:
    primary, replica, kafka = stack.postgres("primary"), stack.postgres("replica"), stack.kafka("main")
    return {
        "kafka": {"local": kafka.client_settings()},
        "sources": {
            "shop": {
                **primary.database("shop"),
                "kafka": "local",
                "tables": SAMPLE_TABLES,
                "trace_interval_seconds": 10,
                "metrics_port": stack.port("metrics.agent.shop"),
            }
        },
        "routes": {"all": {"upstream": route_upstream, "kafka": "local"}},
        "distributors": {"hq": {"routes": ["all"], "metrics_port": stack.port("metrics.distributor.hq")}},
        "subscribers": {
            name: {"route": "all", **replica.database(name), "metrics_port": stack.port(f"metrics.subscriber.{name}")}
            for name in SUBSCRIBERS
        },
    }


def write_config(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def reset(stack: Stack, config: Config) -> None:
    """Fresh databases, topics and consumer offsets, so the demo can run again and again."""
    stack.stop_daemons()
    stack.postgres("primary").create_database("shop", drop_first=True)
    for name in SUBSCRIBERS:
        stack.postgres("replica").create_database(name, drop_first=True)
    reset_streams(config)


def reset_streams(config: Config) -> None:
    """Delete every topic and distributor consumer group the configuration names."""
    for cluster_name, cluster in config.kafka.items():
        topics = [config.stream(n)[1] for n in [*config.sources, *config.routes] if config.stream(n)[0] == cluster_name]
        kafkautil.delete_topics(cluster, topics)
        kafkautil.delete_groups(cluster, [f"pgfanout-distributor-{d}" for d in config.distributors])


SINGLE_WORD_COMMANDS = (
    *("status", "export", "import", "trace", "web", "compare", "repair", "ddl"),
    *("switchover", "failover", "roles"),
)


def daemon_argv(config_path: Path, *command: str) -> list[str]:
    words = 1 if command[0] in SINGLE_WORD_COMMANDS else 2  # `--config` belongs after the (sub)command's name
    return [sys.executable, "-m", "pgfanout", *command[:words], "--config", str(config_path), *command[words:]]


def start_daemon(stack: Stack, name: str, argv: list[str]) -> int:
    pid_file = stack.run_dir / f"{name}.pid"
    pid = processes.running(pid_file, "pgfanout")
    if pid:
        return pid
    return processes.spawn(argv, stack.log_dir / f"{name}.log", pid_file)


def start_pipeline(stack: Stack, config_path: Path, config: Config) -> None:
    for source in config.sources:
        start_daemon(stack, f"agent-{source}", daemon_argv(config_path, "agent", "run", "--source", source))
    for name in config.distributors:
        start_daemon(stack, f"distributor-{name}", daemon_argv(config_path, "distributor", "run", name))
    for name in config.subscribers:
        start_daemon(stack, f"subscriber-{name}", daemon_argv(config_path, "subscriber", "run", name))


def wait_caught_up(config: Config, timeout: float = 120.0) -> dict[str, float]:
    """Wait until every committed change is published and applied everywhere.

    Returns, per subscriber, the seconds it took after this call began.
    """
    start = time.monotonic()
    deadline = start + timeout
    source_name = next(iter(config.sources))
    with connect(config.sources[source_name], "pgfanout-demo") as conn:
        while True:
            target, _, backlog = source_position(conn)
            if backlog == 0:  # read in one statement with the position: all committed work is published
                break
            if time.monotonic() > deadline:
                raise PgfanoutError(f"the agent did not publish the backlog of {backlog} changes in {timeout:.0f}s")
            time.sleep(0.05)
    drained: dict[str, float] = {}
    for name, sub in config.subscribers.items():
        with connect(sub, "pgfanout-demo") as conn:
            while subscriber_position(conn, name)[0] < target:
                if time.monotonic() > deadline:
                    raise PgfanoutError(f"subscriber {name} did not reach position {target} in {timeout:.0f}s")
                time.sleep(0.02)
        drained[name] = time.monotonic() - start
    return drained


def trace_and_wait(config: Config, timeout: float = 30.0) -> None:
    """A trace marker through the pipeline, applied by every subscriber, so that status shows its hops."""
    with connect(config.sources["shop"], "pgfanout-demo") as conn:
        trace_id = conn.execute("INSERT INTO pgfanout.trace DEFAULT VALUES RETURNING trace_id").fetchone()[0]
    deadline = time.monotonic() + timeout
    for sub in config.subscribers.values():
        with connect(sub, "pgfanout-demo") as conn:
            while not conn.execute(
                "SELECT EXISTS (SELECT FROM pgfanout_replica.trace WHERE trace_id = %s)", (trace_id,)
            ).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise PgfanoutError(f"trace marker {trace_id} was not applied everywhere in {timeout:.0f}s")
                time.sleep(0.05)


def proof(config: Config, tables: list[str] = SAMPLE_TABLES) -> tuple[bool, list[str]]:
    """Row count and checksum per table on the source and every subscriber."""
    source = config.sources[next(iter(config.sources))]
    names = list(config.subscribers)
    header = f"{'table':<20} {'primary rows':>12} {'checksum':<12} "
    header += " ".join(f"{n + ' rows':>10} {'checksum':<12}" for n in names)
    lines, equal = [header, "-" * len(header)], True
    with connect(source, "pgfanout-proof") as primary:
        subs = {n: connect(config.subscribers[n], "pgfanout-proof") for n in names}
        try:
            for qualified in tables:
                schema_name, table_name = parse_table(qualified)
                keys = primary_keys(primary, schema_name, table_name)
                expected = table_digest(primary, schema_name, table_name, keys)
                line = f"{qualified:<20} {expected.rows:>12} {expected.checksum[:12]:<12} "
                for conn in subs.values():
                    got = table_digest(conn, schema_name, table_name, keys)
                    mark = "" if got == expected else " DIFFERENT"
                    equal &= got == expected
                    line += f"{got.rows:>10} {got.checksum[:12]:<12}{mark} "
                lines.append(line.rstrip())
        finally:
            for conn in subs.values():
                conn.close()
    return equal, lines


def prepare_databases(config: Config) -> None:
    source = config.sources[next(iter(config.sources))]
    for db in [source, *config.subscribers.values()]:
        with connect(db, "pgfanout-demo") as conn:
            create_schema(conn)


def run_demo(seconds: float, writers: int) -> int:
    stack = Stack.load()
    say = print
    say("==> starting the local stack (PostgreSQL clusters + Kafka broker)")
    stack.up()
    config_path = write_config(stack.home / "demo.yaml", demo_config(stack))
    config = load_config(config_path)
    say("\n".join("    " + line for line in stack.status_lines()))
    say("==> resetting the demo databases and topics")
    reset(stack, config)
    prepare_databases(config)
    say("==> installing capture on the primary: " + ", ".join(SAMPLE_TABLES))
    from agent import capture

    with connect(config.sources["shop"], "pgfanout-demo") as conn:
        capture.install(conn, config.sources["shop"])
    say("==> starting the agent, distributor hq and subscribers " + ", ".join(SUBSCRIBERS))
    start_pipeline(stack, config_path, config)
    say(f"==> running a concurrent workload: {writers} writers for {seconds:.0f}s")
    with connect(config.sources["shop"], "pgfanout-demo") as conn:
        seed(conn)
    stats = run_workload(config.sources["shop"].dsn, seconds, writers)
    say(
        f"    {stats.committed} transactions committed ({stats.committed / seconds:.0f}/s), "
        f"{stats.retried} retried after conflicts"
    )
    drained = wait_caught_up(config)
    with connect(config.sources["shop"], "pgfanout-demo") as conn:
        position = source_position(conn)[0]
    say(f"==> proof: every table on the primary and on each subscriber (all at position {position})")
    equal, lines = proof(config)
    say("\n".join("    " + line for line in lines))
    for name, seconds_after in drained.items():
        say(f"    {name}: caught up {seconds_after:.2f}s after the workload stopped")
    say("==> " + ("EQUAL: every subscriber matches the primary, table by table" if equal else "MISMATCH: see above"))
    say("==> the topology, as `pgfanout status` draws it (a trace marker went through every hop)")
    trace_and_wait(config)
    say("\n".join("    " + line for line in status.lines(status.gather(config))))
    metrics = ", ".join(
        f"http://127.0.0.1:{port}/metrics" for key, port in sorted(stack.ports.items()) if key.startswith("metrics.")
    )
    say(f"""
The stack keeps running. Look at it with:
    .venv/bin/pgfanout status --config {config_path} [--watch] [--json]
    .venv/bin/pgfanout web --config {config_path}        (a live page on http://127.0.0.1:8080/)
    .venv/bin/pgfanout trace --config {config_path}      (per-hop latency of a marker)
    Prometheus metrics: {metrics}
    .venv/bin/python -m devstack local status
    tail -f {stack.log_dir}/*.log
Stop it with:
    .venv/bin/python -m devstack local down   (add --purge to delete its data)""")
    return 0 if equal else 1
