"""`pgfanout status`: the topology drawn from the config, each node with its position, lag and state.

A tree per source: the source (its primary and agent), the distributors fed by its topic, the routes
they feed (with the subscribers reading them, and the next tier's distributors), across Kafka
clusters. Gathering talks to every server (gather); drawing is pure (lines, as_json). A node that
cannot be reached is shown as such, and the command's exit status is 1.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from agent import logswitch
from agent.capture import installed
from agent.logtables import UNPUBLISHED_CHANGES
from pgfanout.core.codec import default_codec
from pgfanout.core.config import Config, Serves
from pgfanout.core.errors import PgfanoutError
from pgfanout.core.positions import last_position
from pgfanout.core.trace import hops
from pgfanout.runtime import kafka as kafkautil
from pgfanout.runtime import registry
from pgfanout.runtime.pg import connect, describe
from subscriber.state import applier_lock_key
from subscriber.traces import last_recorded

UNREACHABLE = "unreachable"


def source_position(conn: psycopg.Connection) -> tuple[int, int, int]:
    """(last published position, published tick, changes not yet published) of a primary."""
    with conn.transaction():
        # one statement, so the backlog and the position are read in one snapshot
        next_position, tick, backlog = conn.execute(
            sql.SQL("SELECT next_position, published_tick, {} FROM pgfanout.agent_state").format(UNPUBLISHED_CHANGES)
        ).fetchone()
    return next_position - 1, tick, backlog


def subscriber_position(conn: psycopg.Connection, name: str) -> tuple[int, float | None]:
    """(applied position, seconds since the applied tick was taken on the primary)."""
    with conn.transaction():
        if conn.execute("SELECT to_regclass('pgfanout_replica.position')").fetchone()[0] is None:
            return 0, None
        row = conn.execute(
            "SELECT position, extract(epoch FROM clock_timestamp() - source_time)::float8 "
            "FROM pgfanout_replica.position WHERE subscriber = %s",
            (name,),
        ).fetchone()
    return (row[0], row[1]) if row else (0, None)


@dataclass
class Node:
    kind: str  # source, distributor, route, subscriber
    name: str
    where: str  # its server, or its Kafka cluster and topic
    state: str  # running, stopped, stopped: why, unreachable: why, unknown: why
    position: int | None = None
    lag_transactions: int | None = None
    lag_seconds: float | None = None
    notes: list[str] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)

    def walk(self) -> list[Node]:
        return [self, *(n for child in self.children for n in child.walk())]


# -- gathering ------------------------------------------------------------------------


def gather(config: Config) -> list[Node]:
    """One tree per source."""
    return [_source(config, name) for name in config.sources]


def _source(config: Config, name: str) -> Node:
    settings = config.sources[name]
    cluster, topic = config.stream(name)
    node = Node("source", name, f"{describe(settings.dsn)} -> kafka {cluster}: {topic}", "unknown")
    try:
        with connect(settings, "pgfanout-status") as conn:
            if not installed(conn):
                node.state = f"stopped: capture is not installed (pgfanout agent install --source {name})"
                node.children = _fed_by(config, name, None)
                return node
            node.position, _, backlog = source_position(conn)
            with conn.transaction():
                agents, faults, oldest = conn.execute(
                    "SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name = %s), "
                    "(SELECT count(*) FROM pgfanout.capture_fault), "
                    "(SELECT extract(epoch FROM clock_timestamp() - t.tick_time)::float8 FROM pgfanout.agent_state s "
                    " JOIN pgfanout.tick t ON t.tick_id = s.published_tick)",
                    (f"pgfanout-agent-{name}",),
                ).fetchone()
            node.notes.append(logswitch.status_line(conn))
        node.lag_transactions = None
        node.notes.insert(0, f"{backlog} changes not published yet")
        node.lag_seconds = oldest if backlog else 0.0
        node.state = "running" if agents else "stopped"
        if faults:
            node.state = f"stopped: {faults} capture faults (pgfanout agent faults --source {name})"
    except (PgfanoutError, psycopg.Error) as exc:
        node.state = f"{UNREACHABLE}: {exc}"
    node.children = _fed_by(config, name, node.position)
    return node


def _fed_by(config: Config, stream: str, upstream_position: int | None) -> list[Node]:
    """The distributors reading a source's or route's topic, each with its routes."""
    nodes = []
    for name, distributor in config.distributors.items():
        routes = [r for r in distributor.routes if config.routes[r].upstream == stream]
        if not routes:
            continue
        node = Node("distributor", name, _address(distributor), _daemon_state(distributor))
        node.children = [_route(config, r, upstream_position) for r in routes]
        nodes.append(node)
    return nodes


def _route(config: Config, name: str, upstream_position: int | None) -> Node:
    cluster_name, topic = config.stream(name)
    node = Node("route", name, f"kafka {cluster_name}: {topic}", "unknown")
    try:
        codec = default_codec()
        cluster = config.kafka[cluster_name]
        registry.load(cluster, codec)
        last = kafkautil.last_message(cluster, topic, codec.decode)
        node.state = "ok"
        node.position = (last_position(*last) or 0) if last is not None else 0
        if last is not None and upstream_position is not None:
            node.lag_transactions = max(0, upstream_position - node.position)
            node.lag_seconds = time.time() - last[1]["tick_time"].timestamp() if node.lag_transactions else 0.0
    except (PgfanoutError, Exception) as exc:  # a Kafka client raises assorted types
        node.state = f"{UNREACHABLE}: {str(exc).strip() or type(exc).__name__}"
    node.children = [_subscriber(config, s, node.position) for s, sub in config.subscribers.items() if sub.route == name]
    node.children += _fed_by(config, name, node.position)
    return node


def _subscriber(config: Config, name: str, route_position: int | None) -> Node:
    settings = config.subscribers[name]
    node = Node("subscriber", name, describe(settings.dsn), "unknown")
    try:
        with connect(settings, "pgfanout-status") as conn:
            if conn.execute("SELECT to_regclass('pgfanout_replica.stopped')").fetchone()[0] is None:
                node.state = f"stopped: not initialized (pgfanout subscriber init {name})"
                return node
            node.position, age = subscriber_position(conn, name)
            with conn.transaction():
                running, stopped = conn.execute(
                    "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND classid = (%s::bigint & 4294967295)::oid AND objid = (%s::bigint & 4294967295)::oid "
                    "AND objsubid = 2), "
                    "(SELECT error FROM pgfanout_replica.stopped WHERE subscriber = %s)",
                    (*applier_lock_key(name), name),
                ).fetchone()
                trace = last_recorded(conn, name)
        if route_position is not None:
            node.lag_transactions = max(0, route_position - node.position)
        node.lag_seconds = (age or 0.0) if node.lag_transactions else 0.0
        node.state = "running" if running else (f"stopped: {stopped}" if stopped else "stopped")
        if trace is not None:
            trace_id, stamps = trace
            node.notes.append(f"last trace {trace_id}: {(stamps[-1].at - stamps[0].at) * 1000:.1f} ms end to end")
            node.notes += [
                f"  {hop.seconds * 1000:7.1f} ms  {hop.name}" + ("  (two clocks)" if hop.two_clocks else "")
                for hop in hops(stamps)
            ]
    except (PgfanoutError, psycopg.Error) as exc:
        node.state = f"{UNREACHABLE}: {exc}"
    return node


def _address(serves: Serves) -> str:
    if serves.metrics_port is None:
        return "no metrics_port"
    host = "127.0.0.1" if serves.metrics_address in ("0.0.0.0", "") else serves.metrics_address
    return f"{host}:{serves.metrics_port}"


def _daemon_state(serves: Serves) -> str:
    """A daemon without a database of its own tells its state by its readiness endpoint."""
    if serves.metrics_port is None:
        return "unknown: it serves no metrics (set metrics_port)"
    try:
        with urllib.request.urlopen(f"http://{_address(serves)}/readyz", timeout=2) as answer:
            return "running" if answer.status == 200 else f"stopped: {answer.read().decode().strip()}"
    except urllib.error.HTTPError as exc:
        return f"running, not ready: {exc.read().decode().strip()}"
    except OSError:
        return "stopped: its metrics endpoint does not answer"


# -- drawing --------------------------------------------------------------------------


def reachable(trees: list[Node]) -> bool:
    return not any(n.state.startswith(UNREACHABLE) for tree in trees for n in tree.walk())


def lines(trees: list[Node]) -> list[str]:
    out: list[str] = []
    for tree in trees:
        _draw(tree, "", "", out)
    return out


def _draw(node: Node, lead: str, child_lead: str, out: list[str]) -> None:
    figures = []
    if node.position is not None:
        figures.append(f"position {node.position}")
    if node.lag_transactions is not None:
        figures.append(f"lag {node.lag_transactions} tx")
    if node.lag_seconds is not None:
        figures.append(f"{node.lag_seconds:.2f} s")
    out.append(f"{lead}{node.kind} {node.name} ({node.where}): {node.state}" + (f"; {', '.join(figures)}" if figures else ""))
    for note in node.notes:
        out.append(f"{child_lead}  {note}")
    for i, child in enumerate(node.children):
        last = i == len(node.children) - 1
        _draw(child, child_lead + ("└─ " if last else "├─ "), child_lead + ("   " if last else "│  "), out)


def as_json(trees: list[Node]) -> dict[str, Any]:
    """The trees for scripts (schemas/status.schema.json describes them)."""
    return {"reachable": reachable(trees), "sources": [asdict(tree) for tree in trees]}
