"""A whole pipeline (source, distributor, two subscribers) with its own databases and topics, for one test."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import capture
from agent.agent import LOG_ORDER
from devstack import processes
from devstack.demo import daemon_argv, proof, reset_streams, start_daemon, wait_caught_up, write_config
from devstack.sample import SAMPLE_TABLES, WorkloadStats, create_schema, run_workload, seed
from devstack.stack import Stack, free_port
from devstack.topics import read_raw, read_topic, transaction_positions, transactions  # noqa: F401 (the tests' names)
from pgfanout.core.codec import decode_changes, default_codec
from pgfanout.core.config import Config, load_config
from pgfanout.core.errors import PgfanoutError
from pgfanout.runtime.pg import connect

OPS = {"INSERT": "I", "UPDATE": "U", "DELETE": "D", "TRUNCATE": "T", "SCHEMA": "S"}
# a test run once with each capture trigger (the default, auto, is the C one where it is installed)
BOTH_TRIGGERS = pytest.mark.parametrize("pipeline", ["c", "plpgsql"], indirect=True)


def logged(conn: psycopg.Connection, columns: str = "") -> list[tuple]:
    """The log's changes in publication order as (op, new row, old key, *columns), whichever trigger wrote them:
    rows of the C trigger are decoded (NULL values as None, absent arrays as None, as the PL/pgSQL rows hold them).
    ``columns``: more columns of the log row, e.g. "tableoid::regclass::text"."""
    extra = f", {columns}" if columns else ""
    changes = []
    for op, new_row, old_key, encoded, *more in conn.execute(
        f"SELECT op, new_row, old_key, changes{extra} FROM pgfanout.log l ORDER BY {LOG_ORDER}"
    ):
        if encoded is None:
            changes.append((op, new_row, old_key, *more))
            continue
        for change, _ in decode_changes(default_codec(), encoded):
            values = [None if i in change["nulls"] else v for i, v in enumerate(change["values"])]
            changes.append((OPS[change["op"]], values or None, change["old_key"] or None, *more))
    return changes


class Pipeline:
    def __init__(self, stack: Stack, name: str, capture_trigger: str = "auto"):
        self.stack, self.name = stack, name
        primary, replica, kafka = stack.postgres("primary"), stack.postgres("replica"), stack.kafka("main")
        self.source, self.route, self.distributor = name, f"{name}.all", f"{name}.dist"
        self.subscribers = [f"{name}.sub1", f"{name}.sub2"]
        self.data = {
            "kafka": {"local": kafka.client_settings()},
            "sources": {
                self.source: {
                    **primary.database(f"{name}_primary"),
                    "kafka": "local",
                    "tables": SAMPLE_TABLES,
                    "capture_trigger": capture_trigger,
                }
            },
            "routes": {self.route: {"upstream": self.source, "kafka": "local"}},
            "distributors": {self.distributor: {"routes": [self.route]}},
            "subscribers": {s: {"route": self.route, **replica.database(s.replace(".", "_"))} for s in self.subscribers},
        }
        self.config_path: Path = write_config(stack.home / f"{name}.yaml", self.data)
        self.config: Config = load_config(self.config_path)

    @property
    def primary_dsn(self) -> str:
        """The primary's connection string, with the password (from the stack's passfile when secured)."""
        return self.stack.postgres("primary").admin_dsn(f"{self.name}_primary")

    def primary(self) -> psycopg.Connection:
        return connect(self.config.sources[self.source], "pgfanout-test")

    def replica(self, subscriber: str) -> psycopg.Connection:
        return connect(self.config.subscribers[subscriber], "pgfanout-test")

    def prepare(self, install: bool = True, bare: tuple[str, ...] = ()) -> None:
        """Fresh databases and topics; every database gets the sample schema except the ``bare`` subscribers'."""
        reset_streams(self.config)
        self.stack.postgres("primary").create_database(f"{self.name}_primary", drop_first=True)
        for sub in self.subscribers:
            self.stack.postgres("replica").create_database(sub.replace(".", "_"), drop_first=True)
        with_schema = [self.config.sources[self.source]] + [s for n, s in self.config.subscribers.items() if n not in bare]
        for db in with_schema:
            with connect(db, "pgfanout-test") as conn:
                create_schema(conn)
        if install:
            with self.primary() as conn:
                capture.install(conn, self.config.sources[self.source], self.config.subscriptions_of(self.source))

    def seed(self) -> None:
        with self.primary() as conn:
            seed(conn)

    # -- daemons -------------------------------------------------------------------

    def argv(self, role: str) -> list[str]:
        if role == "agent":
            return daemon_argv(self.config_path, "agent", "run", "--source", self.source)
        if role == "distributor":
            return daemon_argv(self.config_path, "distributor", "run", self.distributor)
        if role in self.config.distributors:
            return daemon_argv(self.config_path, "distributor", "run", role)
        return daemon_argv(self.config_path, "subscriber", "run", role)

    def daemon_name(self, role: str) -> str:
        return f"{self.name}-{role}"

    def start(self, *roles: str) -> None:
        for role in roles or ("agent", "distributor", *self.subscribers):
            start_daemon(self.stack, self.daemon_name(role), self.argv(role))

    def pid(self, role: str) -> int | None:
        return processes.running(self.stack.run_dir / f"{self.daemon_name(role)}.pid", "pgfanout")

    def kill(self, role: str, sig: int = signal.SIGKILL) -> None:
        pid = self.pid(role)
        assert pid, f"{role} is not running"
        processes.stop(pid, sig)

    def log(self, role: str) -> str:
        path = self.stack.log_dir / f"{self.daemon_name(role)}.log"
        return path.read_text() if path.exists() else ""

    def reconfigure(self, data: dict) -> None:
        """Replace the configuration (another topology) before ``prepare``."""
        self.data = data
        self.subscribers = list(data.get("subscribers", {}))
        self.config_path = write_config(self.config_path, data)
        self.config = load_config(self.config_path)

    @property
    def roles(self) -> tuple[str, ...]:
        """Every daemon a test may have started."""
        return ("agent", "distributor", *self.config.distributors, *self.subscribers)

    def stop_all(self) -> None:
        processes.stop_all(pid for pid in map(self.pid, self.roles) if pid)

    # -- checks --------------------------------------------------------------------

    def workload_in_background(self, **settings: Any) -> tuple[threading.Thread, dict[str, WorkloadStats]]:
        """Start run_workload on the primary in a thread; the dict gets its stats under "stats" when it ends."""
        result: dict[str, WorkloadStats] = {}
        thread = threading.Thread(target=lambda: result.update(stats=run_workload(self.primary_dsn, **settings)))
        thread.start()
        return thread, result

    def command(self, *argv: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run a one-shot ``pgfanout`` command against this pipeline's config."""
        return subprocess.run(daemon_argv(self.config_path, *argv), capture_output=True, text=True, timeout=timeout)

    def run_until_it_stops(self, role: str, timeout: float = 60.0) -> tuple[int | None, str]:
        """Start a daemon expected to stop by itself; its exit code (None if still running) and its log."""
        # the pid start_daemon returns, not the pid file's: a daemon that stops at once is gone from /proc
        pid = start_daemon(self.stack, self.daemon_name(role), self.argv(role))
        return processes.wait_exit(pid, timeout=timeout), self.log(role)

    def wait_for_position(self, subscriber: str, position: int, timeout: float = 60.0) -> None:
        """Wait until a subscriber has committed ``position`` (whatever the rest of the pipeline is doing)."""
        from pgfanout.cli.status import subscriber_position

        deadline = time.monotonic() + timeout
        with self.replica(subscriber) as conn:
            while subscriber_position(conn, subscriber)[0] < position:
                assert time.monotonic() < deadline, self.log(subscriber)
                time.sleep(0.1)

    def wait_caught_up(self, timeout: float = 120.0) -> dict[str, float]:
        try:
            return wait_caught_up(self.config, timeout)
        except PgfanoutError as exc:
            raise AssertionError(f"{exc}\n{self.log_tails()}") from exc

    def log_tails(self, characters: int = 3000) -> str:
        """The end of every daemon's log, for a failure that the daemons may explain."""
        logs = {role: self.log(role) for role in self.roles}
        return "\n".join(f"--- {role} log ---\n{text[-characters:]}" for role, text in logs.items() if text)

    def proof(self) -> tuple[bool, list[str]]:
        return proof(self.config)

    def wait_for_log(self, role: str, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            content = self.log(role)
            if text in content:
                return content
            time.sleep(0.2)
        raise AssertionError(f"{role} never logged {text!r}; its log:\n{self.log(role)[-3000:]}")


BRANCH = {"public.accounts": {"where": "id <= 10"}, "public.customers": {"columns": ["id", "name"]}}


def two_tiers(
    pipeline: Pipeline,
    more_tables: dict[str, str] | None = None,
    settings: dict | None = None,
    patterns: tuple[str, ...] = (),
    first_settings: dict | None = None,
) -> dict[str, int]:
    """hq routes everything to sub1, and a region distributor a filtered share of that route to sub2;
    every daemon serves metrics. ``more_tables``: tables published besides the sample's (name: CREATE
    TABLE), created on every database; ``patterns``: more entries of the source's tables (schema.prefix*);
    ``settings``, ``first_settings``: more settings of sub2, of sub1. Returns each daemon's metrics port."""
    name, data = pipeline.name, pipeline.data
    more_tables = more_tables or {}
    data["sources"][name]["tables"] = [*SAMPLE_TABLES, *more_tables, *patterns]
    first, second = pipeline.subscribers
    ports = {role: free_port() for role in ("agent", "hq", "region", first, second)}
    data["sources"][name].update(metrics_port=ports["agent"])
    data["routes"][f"{name}.branch"] = {"upstream": pipeline.route, "kafka": "local", "tables": BRANCH}
    data["distributors"] = {
        f"{name}.hq": {"routes": [pipeline.route], "metrics_port": ports["hq"]},
        f"{name}.region": {"routes": [f"{name}.branch"], "metrics_port": ports["region"]},
    }
    data["subscribers"][first].update(metrics_port=ports[first], **(first_settings or {}))
    data["subscribers"][second].update(route=f"{name}.branch", metrics_port=ports[second], **(settings or {}))
    pipeline.reconfigure(data)
    pipeline.prepare(install=False)
    for db in [pipeline.config.sources[name], *pipeline.config.subscribers.values()]:
        with connect(db, "pgfanout-test") as conn:
            for statement in more_tables.values():
                conn.execute(statement)
    with pipeline.primary() as conn:
        capture.install(conn, pipeline.config.sources[name], pipeline.config.subscriptions_of(name))
    pipeline.seed()
    pipeline.start("agent", f"{name}.hq", f"{name}.region", first, second)
    for role in ("agent", f"{name}.hq", f"{name}.region", first, second):
        pipeline.wait_for_log(role, "ready")
    return ports


def contiguous(pipeline: Pipeline, subscriber: str) -> int:
    """The applied position ranges join up exactly (no gap, no duplicate); the last position."""
    with pipeline.replica(subscriber) as conn:
        ranges = conn.execute(
            "SELECT first_position, last_position FROM pgfanout_replica.applied WHERE subscriber = %s ORDER BY first_position",
            (subscriber,),
        ).fetchall()
    assert ranges and ranges[0][0] == 1
    for (_, last), (first, _) in zip(ranges, ranges[1:], strict=False):
        assert first == last + 1, f"{subscriber}: positions {last} then {first}"
    return ranges[-1][1]


def scrape(port: int) -> dict[str, float]:
    """Every sample of a daemon's /metrics, parsed by prometheus-client: 'name{labels}' -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def value(samples: dict[str, float], prefix: str) -> float:
    found = [v for k, v in samples.items() if k.startswith(prefix)]
    assert len(found) == 1, f"{prefix}: {found} in {sorted(samples)[:50]}"
    return found[0]


def eventually(check, timeout: float = 60.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(every)
