"""What a daemon tells Prometheus, and its health: ``/metrics``, ``/healthz`` and ``/readyz`` on one port.

Every metric of every daemon is named here, so that the names stay one set (the Grafana dashboard in
``grafana/`` queries them, and a test holds it to a scrape of the running pipeline). Counters are
counted per batch or message, never per row, and label children are bound once per session: the
hot paths pay an addition, not a lookup.

Liveness: the daemon's loop went round within LIVENESS_SECONDS (a long apply of one huge transaction
counts as alive). Readiness: the daemon is connected to its servers and its last step did not fail.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger(__name__)
LIVENESS_SECONDS = 300.0
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
COUNT_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 50_000, 100_000)
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _counter(name: str, text: str, labels: Iterable[str]) -> Counter:
    return Counter(name, text, list(labels), registry=REGISTRY)


def _gauge(name: str, text: str, labels: Iterable[str]) -> Gauge:
    return Gauge(name, text, list(labels), registry=REGISTRY)


def _histogram(name: str, text: str, labels: Iterable[str], buckets: tuple) -> Histogram:
    return Histogram(name, text, list(labels), registry=REGISTRY, buckets=buckets)


# -- every daemon ---------------------------------------------------------------------
READY = _gauge("pgfanout_ready", "1 while the daemon is connected and its last step succeeded", ["daemon"])
ERRORS = _counter("pgfanout_errors", "errors the daemon's loop met, by class", ["daemon", "class"])
RECONNECTS = _counter("pgfanout_reconnects", "connections made again after an error", ["daemon"])
CONSUMER_LAG = _gauge("pgfanout_consumer_lag_messages", "messages in the consumed topic not read yet", ["daemon", "topic"])

# -- the agent ------------------------------------------------------------------------
AGENT_POSITION = _gauge("pgfanout_agent_published_position", "the last position published", ["source"])
AGENT_TRANSACTIONS = _counter("pgfanout_agent_published_transactions", "source transactions published", ["source"])
AGENT_CHANGES = _counter("pgfanout_agent_published_changes", "row changes published", ["source"])
AGENT_BYTES = _counter("pgfanout_agent_published_bytes", "bytes of messages published", ["source"])
AGENT_MESSAGES = _counter("pgfanout_agent_published_messages", "messages published", ["source"])
AGENT_BATCH = _histogram("pgfanout_agent_batch_transactions", "transactions per tick's batch", ["source"], COUNT_BUCKETS)
AGENT_PUBLISH_SECONDS = _histogram(
    "pgfanout_agent_publish_duration_seconds",
    "a batch from reading the log to recording it published",
    ["source"],
    SECONDS_BUCKETS,
)
AGENT_LOG_BYTES = _gauge("pgfanout_agent_log_bytes", "the size of the primary's log tables", ["source"])
AGENT_UNPUBLISHED = _gauge("pgfanout_agent_unpublished_changes", "committed changes not published yet", ["source"])
AGENT_OLDEST_UNPUBLISHED = _gauge(
    "pgfanout_agent_oldest_unpublished_seconds", "how long the oldest unpublished change has waited (0: none waits)", ["source"]
)
AGENT_TICK_AGE = _gauge("pgfanout_agent_last_tick_age_seconds", "seconds since the agent last took a tick", ["source"])

# -- the distributor ------------------------------------------------------------------
ROUTE_POSITION = _gauge("pgfanout_distributor_forwarded_position", "the last position forwarded to a route", ["route"])
ROUTE_TRANSACTIONS = _counter("pgfanout_distributor_forwarded_transactions", "source transactions forwarded", ["route"])
ROUTE_MESSAGES = _counter("pgfanout_distributor_forwarded_messages", "messages forwarded", ["route"])
ROUTE_BYTES = _counter("pgfanout_distributor_forwarded_bytes", "bytes of messages forwarded", ["route"])
ROUTE_SECONDS = _histogram(
    "pgfanout_distributor_route_duration_seconds", "a message from its poll to its forwarding", ["distributor"], SECONDS_BUCKETS
)

# -- the subscriber -------------------------------------------------------------------
SUBSCRIBER_POSITION = _gauge("pgfanout_subscriber_applied_position", "the last position applied and committed", ["subscriber"])
SUBSCRIBER_LAG_TRANSACTIONS = _gauge(
    "pgfanout_subscriber_lag_transactions", "positions received but not applied yet", ["subscriber"]
)
SUBSCRIBER_LAG_SECONDS = _gauge(
    "pgfanout_subscriber_lag_seconds",
    "since the tick of the last applied transaction was taken on the primary, while anything waits (0 when caught up)",
    ["subscriber"],
)
SUBSCRIBER_TRANSACTIONS = _counter("pgfanout_subscriber_applied_transactions", "source transactions applied", ["subscriber"])
SUBSCRIBER_CHANGES = _counter("pgfanout_subscriber_applied_changes", "row changes applied", ["subscriber"])
SUBSCRIBER_BYTES = _counter("pgfanout_subscriber_received_bytes", "bytes of messages received", ["subscriber"])
SUBSCRIBER_COMMIT_SECONDS = _histogram(
    "pgfanout_subscriber_apply_duration_seconds",
    "a replica transaction from its first change to its commit",
    ["subscriber"],
    SECONDS_BUCKETS,
)
SUBSCRIBER_GROUP = _histogram(
    "pgfanout_subscriber_group_transactions", "source transactions per replica transaction", ["subscriber"], COUNT_BUCKETS
)
COMPARE_DIFFERENCES = _gauge(
    "pgfanout_compare_differences",
    "rows that differ from the primary's share (kind: missing, extra, different) at the last scheduled compare",
    ["subscriber", "table", "kind"],
)
COMPARE_FINISHED = _gauge(
    "pgfanout_compare_last_finished_timestamp_seconds", "when the last scheduled compare finished (epoch)", ["subscriber"]
)
COMPARE_SECONDS = _gauge("pgfanout_compare_duration_seconds", "how long the last scheduled compare took", ["subscriber"])
COMPARE_FAILURES = _counter(
    "pgfanout_compare_failures", "scheduled compares without a verdict (the agent or the applier not reached)", ["subscriber"]
)

# -- traces (pgfanout trace) ----------------------------------------------------------
TRACE_HOP_SECONDS = _gauge(
    "pgfanout_trace_hop_seconds", "each hop of the last trace marker the subscriber applied", ["subscriber", "hop"]
)
TRACE_SECONDS = _gauge(
    "pgfanout_trace_end_to_end_seconds",
    "the last trace marker from its commit on the primary to its commit on the replica",
    ["subscriber"],
)


class Health:
    """What /healthz and /readyz answer from; the daemon loop keeps it."""

    def __init__(self, daemon: str):
        self.daemon = daemon
        self.alive_at = time.monotonic()
        self.problem: str | None = "starting"  # None: ready
        self._ready = READY.labels(daemon)

    def beat(self) -> None:
        self.alive_at = time.monotonic()

    def set_ready(self) -> None:
        self.problem = None
        self._ready.set(1)

    def set_unready(self, problem: str) -> None:
        self.problem = problem
        self._ready.set(0)

    def live(self) -> bool:
        return time.monotonic() - self.alive_at < LIVENESS_SECONDS


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the standard library's name)
        log.debug("metrics: " + format, *args)


def application(health: Health) -> Callable:
    """The WSGI application: /healthz, /readyz, and everything else the metrics."""
    metrics = make_wsgi_app(REGISTRY)

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            ok = health.live() if path == "/healthz" else health.problem is None and health.live()
            text = "ok" if ok else (health.problem or "the loop has not gone round for too long")
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [f"{health.daemon}: {text}\n".encode()]
        return metrics(environ, start_response)

    return app


def serve(address: str, port: int, health: Health) -> WSGIServer:
    """Serve the endpoints from a daemon thread; the server is returned so that tests can shut it down."""
    server = make_server(address, port, application(health), handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("%s: metrics on http://%s:%d/metrics", health.daemon, address, port)
    return server


# -- the metrics of one daemon, their label children bound once ------------------------


class AgentMetrics:
    def __init__(self, source: str, last_tick: Callable[[], float]):
        self.position, self.transactions = AGENT_POSITION.labels(source), AGENT_TRANSACTIONS.labels(source)
        self.changes, self.bytes, self.messages = (
            AGENT_CHANGES.labels(source),
            AGENT_BYTES.labels(source),
            AGENT_MESSAGES.labels(source),
        )
        self.batch, self.seconds = AGENT_BATCH.labels(source), AGENT_PUBLISH_SECONDS.labels(source)
        self.log_bytes, self.unpublished = AGENT_LOG_BYTES.labels(source), AGENT_UNPUBLISHED.labels(source)
        self.oldest = AGENT_OLDEST_UNPUBLISHED.labels(source)
        AGENT_TICK_AGE.labels(source).set_function(lambda: time.monotonic() - last_tick())

    def published(self, position: int, transactions: int, changes: int, sent: int, messages: int, seconds: float) -> None:
        self.position.set(position)
        self.transactions.inc(transactions)
        self.changes.inc(changes)
        self.bytes.inc(sent)
        self.messages.inc(messages)
        self.batch.observe(transactions)
        self.seconds.observe(seconds)

    def log(self, size: int, unpublished: int, oldest_seconds: float) -> None:
        self.log_bytes.set(size)
        self.unpublished.set(unpublished)
        self.oldest.set(oldest_seconds if unpublished else 0.0)


class RouteMetrics:
    def __init__(self, route: str):
        self.position, self.transactions = ROUTE_POSITION.labels(route), ROUTE_TRANSACTIONS.labels(route)
        self.messages, self.bytes = ROUTE_MESSAGES.labels(route), ROUTE_BYTES.labels(route)

    def forwarded(self, position: int, transactions: int, sent: int) -> None:
        self.position.set(position)
        self.transactions.inc(transactions)
        self.messages.inc()
        self.bytes.inc(sent)


class SubscriberMetrics:
    """Lag: positions received but not applied, and while any wait (or the topic holds unread messages),
    the seconds since the tick of the last applied transaction was taken on the primary."""

    def __init__(self, subscriber: str, topic: str):
        self.position, self.transactions = SUBSCRIBER_POSITION.labels(subscriber), SUBSCRIBER_TRANSACTIONS.labels(subscriber)
        self.changes, self.bytes = SUBSCRIBER_CHANGES.labels(subscriber), SUBSCRIBER_BYTES.labels(subscriber)
        self.seconds, self.group = SUBSCRIBER_COMMIT_SECONDS.labels(subscriber), SUBSCRIBER_GROUP.labels(subscriber)
        self.lag_transactions = SUBSCRIBER_LAG_TRANSACTIONS.labels(subscriber)
        self.unread_gauge = CONSUMER_LAG.labels(f"subscriber {subscriber}", topic)
        self.applied_position, self.seen_position, self.unread_messages = 0, 0, 0
        self.source_time: float | None = None  # epoch seconds of the last applied transaction's tick
        SUBSCRIBER_LAG_SECONDS.labels(subscriber).set_function(self.lag_seconds)

    def unread(self, messages: int) -> None:
        self.unread_messages = messages
        self.unread_gauge.set(messages)

    def seen(self, position: int) -> None:
        if position > self.seen_position:
            self.seen_position = position
            self.lag_transactions.set(max(0, position - self.applied_position))

    def committed(self, position: int, source_time: float | None, transactions: int, changes: int, seconds: float) -> None:
        self.applied_position, self.source_time = position, source_time
        self.seen_position = max(self.seen_position, position)
        self.position.set(position)
        self.lag_transactions.set(self.seen_position - position)
        if transactions:
            self.transactions.inc(transactions)
            self.changes.inc(changes)
            self.seconds.observe(seconds)
            self.group.observe(transactions)

    def lag_seconds(self) -> float:
        waiting = self.seen_position > self.applied_position or self.unread_messages > 0
        return max(0.0, time.time() - self.source_time) if waiting and self.source_time is not None else 0.0
