"""The one YAML configuration, validated by pydantic.

Connections follow libpq conventions: ``dsn`` is a libpq connection string or URI
and the usual ``PG*`` environment variables and ``~/.pgpass`` apply. Secrets never
live in the file: ``password_env`` / ``sasl_password_env`` name environment variables.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import psycopg.conninfo
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pgfanout.core.errors import ConfigError, FilterError, NameSyntaxError
from pgfanout.core.names import canonical_table, parse_column
from pgfanout.core.rowfilter import RowFilter, parse_filter

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
T = TypeVar("T")


def table_names(names: list[str], wildcard: bool = False) -> list[str]:
    """Each table name in its canonical spelling (pgfanout.names); a table named twice is refused."""
    canonical = [canonical_table(name, wildcard) for name in names]
    twice = sorted({name for name in canonical if canonical.count(name) > 1})
    if twice:
        raise ValueError(f"listed twice: {', '.join(twice)}")
    return canonical


def table_keyed(mapping: dict[str, T]) -> dict[str, T]:
    """A mapping keyed by table names, keyed by their canonical spellings."""
    return dict(zip(table_names(list(mapping)), mapping.values(), strict=True))


def column_names(names: list[str]) -> list[str]:
    columns = [parse_column(name) for name in names]
    if len(set(columns)) != len(columns):
        raise ValueError("a column is listed twice")
    return columns


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaCluster(Strict):
    bootstrap_servers: list[str] = Field(min_length=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password_env: str | None = Field(default=None, description="the environment variable holding the SASL password")
    ssl_cafile: str | None = Field(
        default=None, description="the CA certificate (PEM) that verifies the brokers' certificates; the system's when not set"
    )

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaCluster:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and not (self.sasl_mechanism and self.sasl_username and self.sasl_password_env):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, sasl_username and sasl_password_env"
            )
        if not sasl and self.sasl_mechanism:
            raise ValueError(f"sasl_mechanism is set, but security_protocol {self.security_protocol} does not use SASL")
        return self

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port(cls, servers: list[str]) -> list[str]:
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return servers


class Database(Strict):
    dsn: str = Field(description="libpq connection string or URI")
    password_env: str | None = None

    @field_validator("dsn")
    @classmethod
    def _parses(cls, dsn: str) -> str:
        try:
            parts = psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"not a libpq connection string: {exc}") from None
        if "password" in parts:
            raise ValueError("put the password in an environment variable named by password_env, not in the dsn")
        return dsn


class Serves(Strict):
    """Where a daemon serves its Prometheus metrics, /healthz and /readyz (docs/operations.md)."""

    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="serve metrics and health on this port; off when not set"
    )
    metrics_address: str = Field(default="127.0.0.1", description="the address the metrics port listens on")


class Source(Database, Serves):
    kafka: Name
    topic: str | None = None
    tables: list[str] = Field(
        min_length=1,
        description="schema-qualified tables to publish; schema.* for all of a schema, schema.prefix* for those "
        "whose name starts so (tables created later that match are published from their first row)",
    )
    exclude: list[str] = Field(default_factory=list, description="tables left out of the schema.* and schema.prefix* entries")
    keys: dict[str, list[str]] = Field(
        default_factory=dict, description="per table without a primary key: the columns of a unique, NOT NULL key"
    )
    tick_interval_ms: int = Field(default=50, ge=5, le=60_000)
    busy_tick_interval_ms: int = Field(
        default=200,
        ge=5,
        le=60_000,
        description="the tick interval while the source commits more than "
        "busy_transactions_per_second: fewer, larger batches, because every tick costs round trips to PostgreSQL "
        "and Kafka; at least tick_interval_ms",
    )
    busy_transactions_per_second: int = Field(default=1000, ge=1)
    woken_tick_gap_ms: int = Field(
        default=20,
        ge=0,
        le=60_000,
        description="while commits wake the agent (C trigger, source not busy): the least time between two "
        "ticks; a commit sooner than that waits, so that a stream of small transactions makes batches of a few, "
        "each a Kafka request at every hop",
    )
    woken_max_transactions_per_second: int = Field(
        default=400,
        ge=0,
        description="above this many commits a second (over the last second) the agent ticks every "
        "tick_interval_ms instead of at commits: fewer, larger batches for the same work",
    )
    agent_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="the agent lowers its CPU priority by this much "
        "(nice), so that on a host it shares with the primary the application's backends come "
        "first; it still uses every idle cycle",
    )
    heartbeat_interval_ms: int = Field(default=1000, ge=50, le=3_600_000)
    trace_interval_seconds: float = Field(
        default=0,
        ge=0,
        le=86_400,
        description="the agent puts a trace marker into the stream this often (0: only `pgfanout trace` does)",
    )
    message_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="target size of one Kafka message; transactions are packed up to it, and larger ones are chunked at it",
    )
    max_message_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="hard limit of one message (the topic's max.message.bytes)",
    )
    log_switch_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=8192,
        description="the agent switches the primary's log to its other table when the "
        "current one has grown this large, and empties the old one with "
        "TRUNCATE once everything in it is published",
    )
    log_switch_seconds: int = Field(default=600, ge=1, description="...or when it has been written this long")
    as_subscriber: Name | None = Field(
        default=None,
        description="the subscriber (in subscribers:) that applies into this source's own database once another "
        "database holds the primary role (docs/switchover.md); needed to switch over from it",
    )
    candidates: list[Name] | None = Field(
        default=None,
        description="the subscribers that may take the primary role (`pgfanout switchover`, `failover`); default: "
        "every subscriber whose route carries this source whole",
    )
    capture_trigger: Literal["auto", "c", "plpgsql"] = Field(
        default="auto",
        description="c: the C trigger library (agent/capture_c), which writes a transaction's "
        "changes as one log row at commit; plpgsql: one log row per changed row, needs nothing on the server; "
        "auto: c when the library is installed on the server and the installing role is a superuser",
    )

    @model_validator(mode="after")
    def _busy_ticks_not_faster(self) -> Source:
        if self.busy_tick_interval_ms < self.tick_interval_ms:
            raise ValueError(
                f"busy_tick_interval_ms ({self.busy_tick_interval_ms}) must be at least "
                f"tick_interval_ms ({self.tick_interval_ms})"
            )
        return self

    @field_validator("tables")
    @classmethod
    def _tables(cls, tables: list[str]) -> list[str]:
        return table_names(tables, wildcard=True)

    @field_validator("exclude")
    @classmethod
    def _excluded(cls, names: list[str]) -> list[str]:
        return table_names(names)

    @field_validator("keys")
    @classmethod
    def _keys(cls, keys: dict[str, list[str]]) -> dict[str, list[str]]:
        return table_keyed({table: column_names(columns) for table, columns in keys.items()})


class TableSubscription(Strict):
    where: str | None = Field(
        default=None, description="a row filter: an SQL boolean expression over the row's columns; a row is sent when it is true"
    )
    columns: list[str] | None = Field(default=None, min_length=1, description="the columns sent (the key included); default: all")

    @field_validator("where")
    @classmethod
    def _parses(cls, where: str | None) -> str | None:
        if where is not None:
            try:
                parsed_filter(where)
            except FilterError as exc:
                raise ValueError(f"{where!r}: {exc.reason}") from None
        return where

    @field_validator("columns")
    @classmethod
    def _columns(cls, columns: list[str] | None) -> list[str] | None:
        return column_names(columns) if columns is not None else None

    def row_filter(self) -> RowFilter | None:
        return parsed_filter(self.where) if self.where is not None else None

    def used_columns(self) -> set[str]:
        """Columns this subscription needs to see: the filter's and the listed ones."""
        row_filter = self.row_filter()
        return set(self.columns or ()) | set(row_filter.columns if row_filter else ())


@cache
def parsed_filter(text: str) -> RowFilter:
    return parse_filter(text)


class Route(Strict):
    upstream: Name = Field(description="the source or route this route is fed from")
    kafka: Name
    topic: str | None = None
    tables: dict[str, TableSubscription] | None = Field(
        default=None,
        description="the subscription: the tables this route receives, each with an optional row "
        "filter and column list; default: everything its upstream carries",
    )
    format: Literal["pgfanout", "rows"] = Field(
        default="pgfanout",
        description="pgfanout: for subscribers and further distributors; rows: for other "
        "consumers, each change's key and row typed by its table's own Avro schemas",
    )

    @field_validator("tables")
    @classmethod
    def _tables(cls, tables: dict[str, TableSubscription] | None) -> dict[str, TableSubscription] | None:
        return table_keyed(tables) if tables is not None else None


class Distributor(Serves):
    routes: list[Name] = Field(min_length=1)
    workers: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="processes that filter and encode for routes with subscriptions; default: one per core, at most 4",
    )


class ScheduledCompare(Strict):
    """`pgfanout compare` run by the subscriber daemon itself, its result in the metrics (docs/compare.md)."""

    every_minutes: float = Field(gt=0, description="compare every this many minutes")
    tables: list[str] = Field(default_factory=list, description="the tables to compare; default: every table it receives")
    pace: float = Field(
        default=0.1, gt=0, le=1, description="the fraction of the time the compare works (pgfanout compare --pace)"
    )
    timeout_seconds: float = Field(default=60, gt=0, description="how long to wait for the agent's tick and for the applier")

    @field_validator("tables")
    @classmethod
    def _tables(cls, tables: list[str]) -> list[str]:
        return table_names(tables)


class Subscriber(Database, Serves):
    route: Name
    group_max_transactions: int = Field(
        default=5000, ge=1, le=100_000, description="source transactions applied in one replica transaction at most"
    )
    group_max_ms: int = Field(
        default=200, ge=1, le=60_000, description="how long a replica transaction may collect before it commits"
    )
    copy_from: Name | None = Field(
        default=None,
        description="another subscriber of the same source whose replica "
        "init and resync copy from (for tiers that cannot reach the primary); "
        "default: the source primary",
    )
    on_gap: Literal["stop", "resync"] = Field(
        default="stop",
        description="when positions the subscriber needs were deleted by retention: stop with an error, or resync by itself",
    )
    compare: ScheduledCompare | None = Field(
        default=None, description="compare this replica with its share of the primary on a schedule, the result in the metrics"
    )
    on_drop: Literal["keep", "drop"] = Field(
        default="keep",
        description="when a published table is dropped on the primary: keep the replica's table (its rows stay "
        "as they were), or drop it too",
    )
    synchronous_commit: Literal["on", "off"] = Field(
        default="off",
        description="the applier's replica transactions wait for their WAL flush (on) or not (off, as "
        "PostgreSQL's own subscriptions do): a replica that crashes loses its last applied transactions and "
        "their position together, and applies them again from the route",
    )


class Config(Strict):
    kafka: dict[Name, KafkaCluster] = Field(min_length=1)
    sources: dict[Name, Source] = Field(min_length=1)
    routes: dict[Name, Route] = Field(default_factory=dict)
    distributors: dict[Name, Distributor] = Field(default_factory=dict)
    subscribers: dict[Name, Subscriber] = Field(default_factory=dict)

    def source_topic(self, name: str) -> str:
        return self.sources[name].topic or f"pgfanout.source.{name}"

    def route_topic(self, name: str) -> str:
        return self.routes[name].topic or f"pgfanout.route.{name}"

    def stream(self, name: str) -> tuple[str, str]:
        """(kafka cluster, topic) of a source or route by name."""
        if name in self.sources:
            return self.sources[name].kafka, self.source_topic(name)
        return self.routes[name].kafka, self.route_topic(name)

    def subscription_chain(self, name: str) -> list[dict[str, TableSubscription]]:
        """The subscriptions a route's messages passed through, from the source down to the route itself."""
        chain = []
        while name in self.routes:
            if self.routes[name].tables is not None:
                chain.append(self.routes[name].tables)
            name = self.routes[name].upstream
        return chain[::-1]

    def share_of(self, route: str) -> dict[str, tuple[frozenset[str] | None, list[RowFilter]]] | None:
        """What a route receives, through every tier above it: table -> (columns or None for all, filters).

        None when no tier subscribes (the route carries every published table whole).
        """
        chain = self.subscription_chain(route)
        if not chain:
            return None
        share: dict[str, tuple[frozenset[str] | None, list[RowFilter]]] = {}
        for table in chain[-1]:
            columns: frozenset[str] | None = None
            filters: list[RowFilter] = []
            for tier in chain:
                subscription = tier.get(table)
                if subscription is None:
                    break
                if subscription.columns is not None:
                    listed = frozenset(subscription.columns)
                    columns = listed if columns is None else columns & listed
                if subscription.row_filter() is not None:
                    filters.append(subscription.row_filter())  # type: ignore[arg-type]
            else:
                share[table] = (columns, filters)
        return share

    def subscriptions_of(self, source: str) -> dict[str, dict[str, TableSubscription]]:
        """The subscriptions of every route, at any tier, that carries ``source``: route -> table -> subscription."""
        return {
            name: route.tables
            for name, route in self.routes.items()
            if route.tables is not None and self.origin_source(name) == source
        }

    def carries_whole(self, subscriber: str, source: str) -> bool:
        """Whether a subscriber receives every table of ``source`` whole (no row filter, no column list)."""
        route = self.subscribers[subscriber].route
        return self.origin_source(route) == source and self.share_of(route) is None and self.routes[route].format == "pgfanout"

    def candidates_of(self, source: str) -> list[str]:
        """The subscribers that may take the primary role of ``source``."""
        listed = self.sources[source].candidates
        if listed is not None:
            return list(listed)
        return [name for name in self.subscribers if self.carries_whole(name, source)]

    def primary_name(self, source: str, name: str) -> str:
        """The subscriber name of a generation's primary ("" stands for the source's own database)."""
        return name or self.sources[source].as_subscriber or ""

    def primary_database(self, source: str, name: str) -> Database | None:
        """The database a generation's primary is: the source's own, or a subscriber's; None if not named here."""
        if not name or name == self.sources[source].as_subscriber:
            return self.sources[source]
        subscriber = self.subscribers.get(name)
        return Database(dsn=subscriber.dsn, password_env=subscriber.password_env) if subscriber else None

    def origin_source(self, name: str) -> str:
        """The source a route (or source) ultimately carries."""
        while name in self.routes:
            name = self.routes[name].upstream
        return name


def _section(data: dict, name: str) -> dict[str, dict]:
    section = data.get(name)
    if not isinstance(section, dict):
        return {}
    return {key: value for key, value in section.items() if isinstance(value, dict)}


def cross_reference_problems(data: dict) -> list[str]:
    """Problems pydantic cannot see: references between sections and the topology.

    Works on the raw mapping, so these are reported together with type errors.
    """
    kafka, sources, routes = _section(data, "kafka"), _section(data, "sources"), _section(data, "routes")
    distributors, subscribers = _section(data, "distributors"), _section(data, "subscribers")
    problems: list[str] = []
    for name in sorted(set(sources) & set(routes)):
        problems.append(f"routes.{name}: a source already has this name; sources and routes share one namespace")
    for section, entries in (("sources", sources), ("routes", routes)):
        for name, entry in entries.items():
            cluster = entry.get("kafka")
            if isinstance(cluster, str) and cluster not in kafka:
                problems.append(f"{section}.{name}.kafka: no Kafka cluster named {cluster!r} (defined: {_names(kafka)})")
    for name, route in routes.items():
        upstream = route.get("upstream")
        if isinstance(upstream, str) and upstream not in sources and upstream not in routes:
            problems.append(f"routes.{name}.upstream: no source or route named {upstream!r}")
        elif isinstance(upstream, str) and routes.get(upstream, {}).get("format") == "rows":
            problems.append(
                f"routes.{name}.upstream: route {upstream!r} has format: rows, which is for consumers "
                "outside pgfanout; feed this route from that route's upstream instead"
            )
    problems += _loop_problems(routes)
    problems += _subscription_problems(routes)
    fed_by: dict[str, str] = {}
    for name, distributor in distributors.items():
        upstreams = set()
        names = distributor.get("routes")
        for i, route in enumerate(names if isinstance(names, list) else []):
            if not isinstance(route, str):
                continue  # reported by the model itself
            if route not in routes:
                problems.append(f"distributors.{name}.routes.{i}: no route named {route!r}")
                continue
            if route in fed_by:
                problems.append(
                    f"distributors.{name}.routes.{i}: route {route!r} is already fed by distributor {fed_by[route]!r}"
                )
            fed_by[route] = name
            upstreams.add(str(routes[route].get("upstream")))
        if len(upstreams) > 1:
            problems.append(
                f"distributors.{name}.routes: all routes of one distributor must share one upstream, found {sorted(upstreams)}"
            )
    for name, subscriber in subscribers.items():
        route = subscriber.get("route")
        if isinstance(route, str) and route not in routes:
            problems.append(f"subscribers.{name}.route: no route named {route!r}")
        elif isinstance(route, str) and routes[route].get("format") == "rows":
            problems.append(
                f"subscribers.{name}.route: route {route!r} has format: rows, which subscribers cannot "
                "apply; give them a route with the default format"
            )
        copy_from = subscriber.get("copy_from")
        if isinstance(copy_from, str) and (copy_from not in subscribers or copy_from == name):
            problems.append(f"subscribers.{name}.copy_from: no other subscriber named {copy_from!r}")
    for name, source in sources.items():
        for field, names in (("as_subscriber", [source.get("as_subscriber")]), ("candidates", source.get("candidates"))):
            for i, subscriber in enumerate(names if isinstance(names, list) else []):
                if isinstance(subscriber, str) and subscriber not in subscribers:
                    at = field if field == "as_subscriber" else f"{field}.{i}"
                    problems.append(f"sources.{name}.{at}: no subscriber named {subscriber!r}")
    return problems


def _loop_problems(routes: dict[str, dict]) -> list[str]:
    problems = []
    for start in sorted(routes):
        seen = [start]
        name = routes[start].get("upstream")
        while isinstance(name, str) and name in routes:
            if name in seen:
                problems.append(f"routes.{start}.upstream: routes form a loop: {' -> '.join(seen + [name])}")
                break
            seen.append(name)
            name = routes[name].get("upstream")
    return problems


def _subscription_problems(routes: dict[str, dict]) -> list[str]:
    """A route can only subscribe to what its upstream route receives: its tables and columns."""
    problems = []
    for name, route in sorted(routes.items()):
        tables, upstream = route.get("tables"), _route_named(routes, route.get("upstream"))
        seen = [route]
        while upstream is not None and not isinstance(upstream.get("tables"), dict) and upstream not in seen:
            seen.append(upstream)
            upstream = _route_named(routes, upstream.get("upstream"))
        if upstream in seen:
            continue  # a loop, reported on its own
        if not isinstance(tables, dict) or upstream is None:
            continue
        offered = _canonically_keyed(upstream["tables"])
        for table, wanted in tables.items():
            canonical = _canonical_or_none(table)
            if canonical is None:
                continue  # reported by the model itself
            if canonical not in offered:
                problems.append(
                    f"routes.{name}.tables.{table}: the upstream route does not carry this table (it carries {_names(offered)})"
                )
                continue
            carried = offered[canonical]
            columns = carried.get("columns") if isinstance(carried, dict) else None
            if not isinstance(columns, list) or not isinstance(wanted, dict):
                continue
            try:
                needed = TableSubscription.model_validate(wanted).used_columns()
                columns = column_names(columns)
            except (ValidationError, FilterError, ValueError):
                continue  # reported by the model itself
            lacking = sorted(needed - set(columns))
            if lacking:
                problems.append(
                    f"routes.{name}.tables.{table}: uses columns the upstream route does not carry: {', '.join(lacking)}"
                )
    return problems


def _route_named(routes: dict[str, dict], name: object) -> dict | None:
    return routes.get(name) if isinstance(name, str) else None


def _canonical_or_none(table: object) -> str | None:
    try:
        return canonical_table(table) if isinstance(table, str) else None
    except NameSyntaxError:
        return None


def _canonically_keyed(tables: dict) -> dict[str, object]:
    """A raw mapping of tables keyed by their canonical names, leaving out names that do not parse."""
    return {canonical: value for table, value in tables.items() if (canonical := _canonical_or_none(table))}


def _names(section: dict) -> str:
    return ", ".join(sorted(section)) or "none"


def _location(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse_config(data: object, source: str = "<config>") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): expected a mapping of sections"])
    problems: list[str] = []
    config = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems += [f"{_location(e['loc'])}: {e['msg']}" for e in exc.errors()]
    problems += cross_reference_problems(data)
    if problems or config is None:
        raise ConfigError(source, problems)
    return config


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    return parse_config(data, str(path))


def secret(env_name: str | None) -> str | None:
    """The value of a secret's environment variable; an unset variable is an error."""
    if env_name is None:
        return None
    value = os.environ.get(env_name)
    if value is None:
        raise ConfigError("environment", [f"{env_name}: the configuration names this variable for a secret, but it is not set"])
    return value
