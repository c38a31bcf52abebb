"""The agent loop: tick, read the batch between two ticks, publish it, record it.

Order of effects, which is what makes publication exactly-once:
1. a tick (a txid snapshot) is committed in the primary;
2. the batch between the last published tick and that tick is published to Kafka and flushed;
3. the primary records the tick as published.
Published log rows are removed by switching log tables and TRUNCATE (``agent.logswitch``).
A crash after 2 and before 3 leaves the topic ahead of the primary. On start the agent
reads the topic's tail and reconciles (``pgfanout.core.positions.plan_resume``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import datetime
from typing import NamedTuple

import psycopg
from psycopg import sql

from agent import capture, faults, logswitch, logtables, primary_role, snapshot_requests, wake
from agent.batch import Part, pack, split_transactions, stream_rows, with_last
from kafka import KafkaProducer
from pgfanout.core.codec import decode_changes, default_codec, encode_batch
from pgfanout.core.config import Config
from pgfanout.core.errors import CaptureFault, FatalError, KafkaUnavailable, PositionError, PostgresUnavailable, TransientError
from pgfanout.core.generations import Generation, Lineage, as_records, first_lineage, generation_header, lineage_of
from pgfanout.core.messages import SnapshotRequest, TableLayout
from pgfanout.core.positions import AgentState, Mark, Progress, Resume, TopicTail, mark_header, mark_of, part_mark, plan_resume
from pgfanout.core.schemachange import wire_definition
from pgfanout.core.trace import Stamp, is_trace, stamped
from pgfanout.runtime import kafka as kafkautil
from pgfanout.runtime import registry
from pgfanout.runtime.daemon import SessionDaemon
from pgfanout.runtime.metrics import AgentMetrics
from pgfanout.runtime.pg import connect, describe

log = logging.getLogger(__name__)
PublishedAfter = Callable[[int, int], list[tuple[int, int]]]  # (position, generation) -> the topic's (position, xid) past it
FETCH_ROWS = 10_000  # rows per round trip of the batch cursor at most...
FETCH_BYTES = 8 * 1024 * 1024  # ...and about this much data
UNACKED_BYTES = 32 * 1024 * 1024  # sent but not yet acknowledged: past this, wait for the acks (memory bound)
CHUNK_CHANGES = 20_000  # changes per chunk at most, whatever their size
LOG_CHECK_SECONDS = 1.0  # how often the agent looks at the log tables' sizes
RATE_WINDOW_SECONDS = 1.0  # the commit rate that decides between waking at commits and ticking on the timer
HELD_WARNING_SECONDS = 300  # how often it repeats that open transactions keep the log from switching


def _size_estimate(column: str) -> str:
    """SQL for a log array's size, close to its Avro size: its stored size, unless TOAST compressed it.

    Formatting every array as text only to measure it (array_out) was a third of the batch query's cost.
    """
    return (
        f"coalesce(CASE WHEN pg_column_compression({column}) IS NULL THEN pg_column_size({column}) "
        f"ELSE octet_length({column}::text) END, 0)"
    )


ROW_SIZE = (
    f"16 + {_size_estimate('l.new_row')} + {_size_estimate('l.old_key')} + {_size_estimate('l.old_values')} "
    "+ coalesce(octet_length(l.changes), 0)"
)
# The rows of transactions visible in the tick `cur` and not in `prev` (docs/ordering.md). Not visible in
# `prev` means started at or after its xmax, or running then (its xip list, of which only those ended by
# `cur` are looked up): each of the two is one index lookup. Reading from `prev`'s xmin instead revisited,
# every tick, every row logged since the oldest transaction still running began, and looking up every
# transaction running at `prev` revisited the rows a large one still running has logged so far.
BATCH_ROWS = """
FROM (SELECT snapshot, pg_snapshot_xmax(snapshot) AS xmax FROM pgfanout.tick WHERE tick_id = %(cur)s) cur,
     LATERAL (SELECT snapshot, pg_snapshot_xmax(snapshot) AS xmax, ARRAY(
                SELECT x FROM pg_snapshot_xip(snapshot) x WHERE pg_visible_in_snapshot(x, cur.snapshot)) AS ended
              FROM pgfanout.tick WHERE tick_id = %(prev)s) prev,
     LATERAL (SELECT * FROM pgfanout.log WHERE txid >= prev.xmax AND txid < cur.xmax
              UNION ALL
              SELECT * FROM pgfanout.log WHERE txid = ANY (prev.ended)) l
WHERE pg_visible_in_snapshot(l.txid, cur.snapshot)
  AND NOT pg_visible_in_snapshot(l.txid, prev.snapshot)
"""
# Transactions by their largest log sequence number, then their changes in order (docs/ordering.md).
LOG_ORDER = "max(l.seq) OVER (PARTITION BY l.txid), l.ordinal NULLS FIRST, l.seq"
BATCH_QUERY = f"""
SELECT l.txid::text::bigint, l.table_id, l.op, array_replace(l.new_row, NULL, ''), l.old_key, {ROW_SIZE},
       array_positions(l.new_row, NULL), array_replace(l.old_values, NULL, ''), array_positions(l.old_values, NULL),
       l.change_count, l.table_ids, l.changes
{BATCH_ROWS}
ORDER BY {LOG_ORDER}
"""
# Prepared once per connection: planning it again at every tick was a sixth of its cost in the primary.
BATCH_STATEMENT = "pgfanout_batch"
PREPARE_BATCH = sql.SQL("PREPARE {} (bigint, bigint) AS {}").format(
    sql.Identifier(BATCH_STATEMENT), sql.SQL(BATCH_QUERY % {"prev": "$1", "cur": "$2"})
)
# The batch's largest row (to size the stream's pieces), a version of pgfanout.tables (layout rows are
# never changed, only added, or replaced by a reinstall) to tell when the layouts must be read again, and
# how many capture faults its transactions hold (agent.faults).
LARGEST_ROW_QUERY = (
    f"SELECT coalesce(max({ROW_SIZE}), 0), "
    "(SELECT count(*) || '/' || coalesce(sum(xmin::text::bigint), 0) FROM pgfanout.tables), "
    f"{faults.COUNT_IN_BATCH} {BATCH_ROWS}"
)


# For the metrics, once a second: the log tables' size, the changes not published yet, and how long since
# the published tick was taken (the oldest of them has waited at most that long).
LOG_FACTS = sql.SQL(
    "SELECT pg_total_relation_size('pgfanout.log_1') + pg_total_relation_size('pgfanout.log_2'), {}, "
    "extract(epoch FROM clock_timestamp() - t.tick_time)::float8 "
    "FROM pgfanout.agent_state s JOIN pgfanout.tick t ON t.tick_id = s.published_tick"
).format(logtables.UNPUBLISHED_CHANGES)


class Tick(NamedTuple):
    tick_id: int
    tick_time: datetime
    snapshot: str  # pg_snapshot text: what the tick's batch completes (read-your-writes tokens)
    requests: tuple[SnapshotRequest, ...] = ()  # subscribers a compare asked to export a snapshot here


class Agent(SessionDaemon["AgentSession"]):
    """The agent of one source; ``connect()`` gives the session that publishes."""

    def __init__(self, config: Config, source: str):
        self.name = f"agent {source}"
        self.config, self.source = config, source
        self.settings = config.sources[source]
        self.cluster = config.kafka[self.settings.kafka]
        self.topic = config.source_topic(source)
        self.codec = default_codec()
        self.session: AgentSession | None = None

    @property
    def idle_seconds(self) -> float:
        return self.session.idle_seconds if self.session else self.settings.tick_interval_ms / 1000

    def pause(self, stop: threading.Event) -> None:
        if self.session is None:
            stop.wait(self.idle_seconds)
        else:
            self.session.pause(stop)

    def connect(self) -> AgentSession:
        """Connect to the database the stream names as the primary (its last message's generation), the
        source's own until a switchover or failover moved the role (docs/switchover.md)."""
        registry.register(self.cluster, self.codec)  # before anything is written with them
        kafkautil.ensure_topic(self.cluster, self.topic, self.settings.max_message_bytes)
        tail, lineage = self._read_tail()
        lineage = lineage or first_lineage(self.settings.as_subscriber or "")
        primary = lineage[-1]
        database = self.config.primary_database(self.source, primary.primary)
        if database is None:
            raise self._fenced(primary)
        settings = self.settings.model_copy(update={"dsn": database.dsn, "password_env": database.password_env})
        conn = connect(settings, f"pgfanout-agent-{self.source}")
        producer = None
        try:
            if not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", primary_role.agent_lock_key(self.source)).fetchone()[0]:
                raise TransientError(
                    f"another agent of source {self.source} is connected to {describe(settings.dsn)}, or a switchover "
                    "is moving the primary role; waiting"
                )
            kafkautil.outlive_orphaned_writes()  # an earlier agent's last sends land before the tail is read
            tail, lineage = self._read_tail()  # again: an agent that held the lock may have published since
            if lineage and lineage[-1].primary != primary.primary:
                raise primary_role.PrimaryMoved(f"source {self.source}: the primary role moved to {lineage[-1].primary}")
            lineage = lineage or first_lineage(self.settings.as_subscriber or "")
            if not capture.installed(conn):
                raise FatalError(
                    f"capture is not installed on source {self.source} ({describe(settings.dsn)}); "
                    f"run `pgfanout agent install --source {self.source}`"
                )
            conn.execute(PREPARE_BATCH)
            producer = kafkautil.producer(self.cluster, self.settings.max_message_bytes)
            self.session = AgentSession(self, conn, producer, lineage)
            self.session.resume(tail)
        except BaseException:
            if producer is not None:
                kafkautil.close_producer(producer)
            conn.close()
            self.session = None
            raise
        return self.session

    def _read_tail(self) -> tuple[TopicTail | None, Lineage]:
        last = kafkautil.last_message(self.cluster, self.topic, self.codec.decode)
        if last is None:
            return None, ()
        kind, record = last
        mark, lineage = mark_of(kind, record), lineage_of(record)
        generation = lineage[-1].generation if lineage else 1
        return TopicTail(mark.tick_id, mark.position, mark.chunk, kind == "Heartbeat" or record["batch_end"], generation), lineage

    def _published_after(self, position: int, generation: int) -> list[tuple[int, int]]:
        return kafkautil.published_after(self.cluster, self.topic, self.codec.decode, position, generation)

    def _fenced(self, primary: Generation) -> FatalError:
        """This configuration does not name the stream's primary: the database it names as the source was
        deposed. Guard that database against writes where it can be reached, and say what it holds that was
        never published."""
        try:
            with connect(self.settings, f"pgfanout-agent-{self.source}") as conn:
                note = fence(conn, self.source, primary, self._published_after)
        except PostgresUnavailable as exc:
            note = f"could not reach it to guard it against writes ({exc})"
        return FatalError(
            f"source {self.source}: the primary of generation {primary.generation} of topic {self.topic} (since "
            f"position {primary.first_position}) is subscriber {primary.primary}, which this configuration does not "
            f"name. This agent refuses to publish from {describe(self.settings.dsn)}: that database is no longer the "
            f"primary; {note}. Run the agent with the configuration that names the new primary, and make the old "
            "one a subscriber (`pgfanout subscriber resync NAME`)"
        )


def fence(conn: psycopg.Connection, source: str, primary: Generation, published_after: PublishedAfter) -> str:
    """Guard a deposed primary against writes (once) and say what it holds that was never published.

    ``published_after(position, generation)`` lists the (position, xid) the topic holds past a position: an
    agent killed between publishing a tick and recording it leaves the topic ahead of this database, and what
    the topic holds was published (a failover reports it as published and lost, not as never published)."""
    if not capture.installed(conn):
        return "capture is not installed there"
    generation, handed_to, next_position = conn.execute(
        "SELECT generation, handed_to, next_position FROM pgfanout.agent_state"
    ).fetchone()
    if generation >= primary.generation:
        return f"its capture state is of generation {generation}"
    in_topic = {xid for _, xid in published_after(next_position - 1, generation)}
    lost = [xid for xid in primary_role.unpublished_transactions(conn) if xid not in in_topic]
    if handed_to is None:
        primary_role.stop_writes(
            conn,
            f"source {source} moved its primary role to subscriber {primary.primary} (generation {primary.generation})",
            mark=False,
        )
        primary_role.hand_over(conn, primary.primary)
        note = "it is now guarded against writes"
    else:
        note = "it was guarded against writes before"
    if lost:
        note += (
            f"; it holds {len(lost)} transactions committed there and never published, which the new primary "
            f"lacks (xids {', '.join(map(str, lost))})"
        )
    return note


class AgentSession:
    """A connected agent: its primary connection and its producer, both open."""

    def __init__(self, agent: Agent, conn: psycopg.Connection, producer: KafkaProducer, lineage: Lineage):
        self.source, self.settings, self.cluster = agent.source, agent.settings, agent.cluster
        self.lineage, self.generation = as_records(lineage), lineage[-1].generation
        self.topic, self.codec = agent.topic, agent.codec
        self.conn, self.producer = conn, producer
        self.idle_seconds = self.settings.tick_interval_ms / 1000
        self.state = AgentState(0, 1)
        self.tables: dict[int, TableLayout] = {}
        self.tables_version: str | None = None
        self.logged_at_last_tick: tuple[int, bool] | None = None  # the log sequence when the last tick was taken
        self.running_at_last_tick = True  # whether other transactions were running then
        self.last_sent = 0.0
        self.last_tick_at = time.monotonic()
        self.last_log_check = 0.0
        self.held_warned_at: float | None = None  # when the agent last warned that the old log table is held
        self.unacked = 0  # bytes sent since the last flush
        self.metrics = AgentMetrics(self.source, lambda: self.last_tick_at)
        self.trace_ids: set[int] = set()  # the table ids of pgfanout.trace's layouts
        self.last_trace = time.monotonic()
        self.published_by = f"published by agent {agent.source}"
        self.waker: wake.Waker | None = None  # while only C triggers capture: commits wake the idle agent
        self.ticked = False  # the last work() published a tick
        self.recent_ticks: deque[tuple[float, int]] = deque()  # (when, transactions) of the last second's ticks

    def resume(self, tail: TopicTail | None) -> None:
        """Reconcile the primary's record with the topic's tail (positions.plan_resume)."""
        self.state, handed_to = self._read_state()
        if handed_to is not None:
            raise primary_role.PrimaryMoved(f"source {self.source}: this database handed the primary role to {handed_to}")
        resume = plan_resume(self.state, tail, self.topic)
        if resume.tick_id is not None:
            log.info("topic %s is ahead of the primary: finishing tick %d after %s", self.topic, resume.tick_id, resume.after)
            self._finish(resume)
        self._watch_commits()
        log.info(
            "agent %s ready: published tick %d, next position %d, topic %s",
            self.source,
            self.state.published_tick,
            self.state.next_position,
            self.topic,
        )

    def close(self) -> None:
        try:
            kafkautil.close_producer(self.producer)
        finally:
            self.conn.close()

    # -- one cycle -----------------------------------------------------------------

    def work(self) -> bool:
        if self.settings.trace_interval_seconds and time.monotonic() - self.last_trace >= self.settings.trace_interval_seconds:
            self.conn.execute("INSERT INTO pgfanout.trace DEFAULT VALUES")  # a marker, published like any transaction
            self.last_trace = time.monotonic()
        heartbeat_due = time.monotonic() - self.last_sent >= self.settings.heartbeat_interval_ms / 1000
        tick = self._next_tick(heartbeat_due)
        self.ticked = tick is not None
        if tick is None:
            self.idle_seconds = self.settings.tick_interval_ms / 1000
            return False
        now = time.monotonic()
        published = self._publish_batch(tick, Progress(self.state.next_position - 1), heartbeat=heartbeat_due)
        self.recent_ticks.append((now, published))
        while self.recent_ticks[0][0] < now - RATE_WINDOW_SECONDS:
            self.recent_ticks.popleft()
        self.idle_seconds = tick_pause(
            published,
            now - self.last_tick_at,
            self.settings.tick_interval_ms,
            self.settings.busy_tick_interval_ms,
            self.settings.busy_transactions_per_second,
        )
        self.last_tick_at = now
        self._maintain_log()
        return False  # ticks are paced (tick_pause), busy or idle: that sizes the batches

    def pause(self, stop: threading.Event) -> None:
        """Wait before the next tick: on a timer while the source is busy or PL/pgSQL triggers capture,
        else until a commit wakes the agent (agent.wake), or a heartbeat is due."""
        if self.waker is None or self.idle_seconds > self.settings.tick_interval_ms / 1000 or not self._slow_stream():
            stop.wait(self.idle_seconds)
            return
        too_soon = self.settings.woken_tick_gap_ms / 1000 - (time.monotonic() - self.last_tick_at)
        if self.ticked and too_soon > 0:
            stop.wait(too_soon)
            return
        if not self.waker.fall_asleep():
            return  # a commit that wrote the log is becoming visible: tick now
        try:
            if self._quiet():  # the last look, now that any commit under way is visible
                self.waker.sleep(self._quiet_seconds())
        finally:
            self.waker.wake()

    def _slow_stream(self) -> bool:
        """At most woken_max_transactions_per_second committed over the last second: waking at each commit
        keeps lag low; above it, the timer's fewer, larger batches cost fewer Kafka requests at every hop."""
        recent = sum(count for at, count in self.recent_ticks if at >= time.monotonic() - RATE_WINDOW_SECONDS)
        return recent / RATE_WINDOW_SECONDS <= self.settings.woken_max_transactions_per_second

    def _quiet(self) -> bool:
        """Nothing to tick for: no heartbeat due, no tick left over, no snapshot request, no handover, and
        nothing logged since the last tick (as _next_tick decides, without taking a tick)."""
        if time.monotonic() - self.last_sent >= self.settings.heartbeat_interval_ms / 1000:
            return False
        left_over, asked, handed_to, *logged = self.conn.execute(
            "SELECT EXISTS (SELECT FROM pgfanout.tick WHERE tick_id > %s), "
            + snapshot_requests.PENDING
            + ", (SELECT handed_to FROM pgfanout.agent_state), s.last_value, s.is_called FROM pgfanout.log_seq s",
            (self.state.published_tick,),
        ).fetchone()
        return not (left_over or asked or handed_to is not None or self._may_have_work(tuple(logged)))

    def _quiet_seconds(self) -> float:
        """How long a quiet agent may sleep: until its next heartbeat, a second at most (log maintenance)."""
        until_heartbeat = self.settings.heartbeat_interval_ms / 1000 - (time.monotonic() - self.last_sent)
        if self.settings.trace_interval_seconds:
            until_heartbeat = min(until_heartbeat, self.settings.trace_interval_seconds - (time.monotonic() - self.last_trace))
        return max(self.settings.tick_interval_ms / 1000, min(LOG_CHECK_SECONDS, until_heartbeat))

    def _watch_commits(self) -> None:
        """Listen for commits while only the C trigger captures (it is the one that notifies)."""
        if wake.c_capture_only(self.conn):
            if self.waker is None:
                self.waker = wake.Waker(self.conn)
        elif self.waker is not None:
            self.waker.close()
            self.waker = None

    def _next_tick(self, heartbeat_due: bool) -> Tick | None:
        """The tick after the published one: left over from a crash, or taken now if there is work."""
        # Each statement on its own (autocommit): round trips are most of the agent's cost at a tick every
        # 50 ms. The log's sequence is read before the tick is taken, so a tick never claims to cover more.
        tick_id, tick_time, snapshot, asked, handed_to, *logged = self.conn.execute(
            "SELECT t.tick_id, t.tick_time, t.snapshot::text, "
            + snapshot_requests.PENDING
            + ", (SELECT handed_to FROM pgfanout.agent_state), s.last_value, s.is_called FROM pgfanout.log_seq s "
            "LEFT JOIN LATERAL (SELECT tick_id, tick_time, snapshot FROM pgfanout.tick WHERE tick_id > %s "
            "ORDER BY tick_id LIMIT 1) t ON true",
            (self.state.published_tick,),
        ).fetchone()
        if handed_to is not None:  # a switchover: everything was published, the new primary goes on
            raise primary_role.PrimaryMoved(f"source {self.source}: the primary role moved to {handed_to}; following it")
        if tick_id is not None:
            return Tick(tick_id, tick_time, snapshot, snapshot_requests.requested_at(self.conn, tick_id))
        if asked:
            # a compare's snapshot, older than the log sequence just read: the next round looks at the log again
            tick_id, tick_time, snapshot, others_running, pairs = self.conn.execute(
                snapshot_requests.REQUESTED_TICK, {"published": self.state.published_tick}
            ).fetchone()
            self.logged_at_last_tick, self.running_at_last_tick = None, others_running
            self.conn.execute(snapshot_requests.FORGET_OLD)
            return Tick(tick_id, tick_time, snapshot, snapshot_requests.requests_of(pairs))
        if not heartbeat_due and not self._may_have_work(tuple(logged)):
            return None
        tick_id, tick_time, snapshot, others_running = self.conn.execute(
            "INSERT INTO pgfanout.tick (tick_id, snapshot, tick_time) "
            "VALUES (nextval('pgfanout.tick_seq'), pg_current_snapshot(), clock_timestamp()) "
            "RETURNING tick_id, tick_time, snapshot::text, " + logtables.others_running("snapshot")
        ).fetchone()
        self.logged_at_last_tick, self.running_at_last_tick = tuple(logged), others_running
        return Tick(tick_id, tick_time, snapshot)

    def _may_have_work(self, logged: tuple[int, bool]) -> bool:
        known = tick_needed(logged, self.logged_at_last_tick, self.running_at_last_tick)
        if known is not None:
            return known
        return self.conn.execute(sql.SQL("SELECT EXISTS ({})").format(logtables.unpublished())).fetchone()[0]

    def _maintain_log(self) -> None:
        """Switch log tables, or empty the old one, when it is time (see agent.logswitch)."""
        if time.monotonic() - self.last_log_check < LOG_CHECK_SECONDS:
            return
        self.last_log_check = time.monotonic()
        held = logswitch.maintain(self.conn, self.settings.log_switch_bytes, self.settings.log_switch_seconds)
        self._watch_commits()  # install or uninstall may have changed the triggers
        self.metrics.log(*self.conn.execute(LOG_FACTS).fetchone())
        if held is None:
            if self.held_warned_at is not None:
                log.info("the old log table is no longer held by an open transaction")
            self.held_warned_at = None
        elif self.held_warned_at is None or self.last_log_check - self.held_warned_at >= HELD_WARNING_SECONDS:
            log.warning("%s", logswitch.held_message(held))
            self.held_warned_at = self.last_log_check

    def _publish_batch(self, tick: Tick, after: Progress, heartbeat: bool, must_publish: bool = False) -> int:
        """Stream the batch of ``tick`` to Kafka (parts after ``after`` only), flush, then record it; returns how
        many transactions the batch held."""
        tick_id, tick_time, snapshot, requests = tick
        first_position = self.state.next_position
        last: Part | None = None
        sent = changes = sent_bytes = 0
        started = time.perf_counter()

        def unpublished(parts: Iterator[Part]) -> Iterator[Part]:
            nonlocal last
            for part in parts:
                last = part
                if Progress(part.position, part.chunk) > after:
                    yield part

        # binary: arrays arrive without array_out on the server and are parsed in C by psycopg. No transaction:
        # the rows between two committed ticks never change.
        with self.conn.cursor(binary=True) as cur:
            batch = {"prev": self.state.published_tick, "cur": tick_id}
            # stream(): PostgreSQL keeps producing rows while this process encodes them (a server-side cursor,
            # fetched piece by piece, was 30% slower). libpq holds `size` rows at a time, so the size comes
            # from the batch's largest row: memory holds one piece and the unacknowledged messages, whatever
            # the size of the batch or of its rows
            largest, tables_version, fault_count = cur.execute(LARGEST_ROW_QUERY, batch).fetchone()
            if fault_count:
                raise CaptureFault(self.source, tick_id, first_position, faults.in_batch(self.conn, batch["prev"], tick_id))
            if tables_version != self.tables_version:  # capture installed on more tables, or ALTER TABLE
                self.tables, self.tables_version = self._read_tables(), tables_version
                self.trace_ids = {i for i, t in self.tables.items() if is_trace(t["schema_name"], t["table_name"])}
            rows = self._batch_rows(cur, batch["prev"], tick_id, stream_rows(largest, FETCH_ROWS, FETCH_BYTES))
            # closing() ends the stream even when sending fails: a suspended stream holds the connection's
            # lock, and the next statement would wait for it forever
            with closing(rows):
                parts = split_transactions(
                    rows,
                    first_position,
                    CHUNK_CHANGES,
                    self.settings.message_bytes,
                    unpack=lambda data: decode_changes(self.codec, data),
                )
                if after >= Progress(first_position, 0):  # resuming a batch whose beginning the topic holds
                    parts = unpublished(parts)
                for package, batch_end in with_last(pack(parts, self.settings.message_bytes)):
                    last = package[-1]
                    value = encode_batch(
                        self.codec,
                        {
                            "source": self.source,
                            "tick_id": tick_id,
                            "tick_time": tick_time,
                            "snapshot": snapshot,
                            "snapshot_requests": requests if batch_end else (),
                            "batch_end": batch_end,
                            "generation": self.generation,
                            "lineage": self.lineage,
                            "tables": self._tables_of(package),
                            "transactions": [p.record() for p in package],
                        },
                    )
                    traced = bool(self.trace_ids) and any(p.tables & self.trace_ids for p in package)
                    self._send(value, part_mark(tick_id, last.position, last.chunk, last.last_chunk), traced)
                    sent += 1
                    sent_bytes += len(value)
                    changes += sum(p.count for p in package)
        if must_publish and sent == 0:
            raise PositionError(
                f"topic {self.topic} holds {after} of tick {tick_id} without its batch's end, but the primary's batch "
                f"for that tick has nothing after it; the topic and the primary disagree"
            )
        if last is None and (heartbeat or requests):  # a compare's tick ends at a heartbeat when its batch is empty
            beat = {
                "source": self.source,
                "position": first_position - 1,
                "tick_id": tick_id,
                "tick_time": tick_time,
                "snapshot": snapshot,
                "snapshot_requests": requests,
                "generation": self.generation,
                "lineage": self.lineage,
            }
            self._send(self.codec.encode("Heartbeat", beat), mark_of("Heartbeat", beat))
        self._flush()
        next_position = last.position + 1 if last is not None else first_position
        self._record(tick_id, next_position)
        self.metrics.published(
            next_position - 1, next_position - first_position, changes, sent_bytes, sent, time.perf_counter() - started
        )
        if sent:
            log.debug("tick %d: published positions %d..%d in %d messages", tick_id, first_position, next_position - 1, sent)
        return next_position - first_position

    def _batch_rows(self, cur: psycopg.Cursor, prev: int, tick_id: int, size: int) -> Iterator[tuple]:
        """The batch's rows, streamed by the statement prepared for them. psycopg deallocates every prepared
        statement of its session after a ROLLBACK, DROP or ALTER on it (a log switch that finds a lock taken
        rolls back); then the statement is prepared again, before any row was read."""
        execute = sql.SQL("EXECUTE {}({}, {})").format(sql.Identifier(BATCH_STATEMENT), prev, tick_id)
        for attempt in range(2):
            rows = cur.stream(execute, size=size)
            try:
                first = next(rows)
                break
            except StopIteration:
                return
            except psycopg.errors.InvalidSqlStatementName:
                if attempt:
                    raise
                cur.execute(PREPARE_BATCH)
        yield first
        yield from rows

    def _tables_of(self, package: list[Part]) -> list[TableLayout]:
        used = set().union(*(part.tables for part in package))
        return [self.tables[table_id] for table_id in sorted(used)]

    def _read_tables(self) -> dict[int, TableLayout]:
        rows = self.conn.execute(
            "SELECT table_id, schema_name, table_name, columns, key_columns, column_types, missing_values, old_columns, "
            "definition FROM pgfanout.tables"
        ).fetchall()
        return {
            r[0]: {
                "table_id": r[0],
                "schema_name": r[1],
                "table_name": r[2],
                "columns": r[3],
                "key_columns": r[4],
                "column_types": r[5],
                "missing_values": r[6],
                "old_columns": r[7],
                "definition": wire_definition(r[8]),
            }
            for r in rows
        }

    def _send(self, value: bytes, mark: Mark, traced: bool = False) -> None:
        if len(value) > self.settings.max_message_bytes:
            raise FatalError(
                f"a message holding position {mark.position} (tick {mark.tick_id}) encodes to {len(value)} bytes, "
                f"over sources.{self.source}.max_message_bytes={self.settings.max_message_bytes}: a single row is "
                "that large; raise that limit (and the consumers' fetch sizes)"
            )
        headers = mark_header(mark) + generation_header(self.generation)
        if traced:  # it carries a trace marker: the first stamp after its commit
            headers = stamped(headers, Stamp(self.published_by, time.time()))
        self.producer.send(self.topic, value=value, headers=headers)
        self.last_sent = time.monotonic()
        self.unacked += len(value)
        if self.unacked >= UNACKED_BYTES:  # a batch of large rows must not pile up in the producer
            self._flush()

    def _flush(self) -> None:
        self.unacked = 0
        try:
            self.producer.flush(timeout=60)
        except Exception as exc:
            raise KafkaUnavailable(kafkautil.where(self.cluster), f"publishing to {self.topic} did not complete: {exc}") from exc

    def _record(self, tick_id: int, next_position: int) -> None:
        """Mark the tick published, in one primary transaction."""
        self.conn.execute(  # one statement, one transaction
            "WITH old AS (DELETE FROM pgfanout.tick WHERE tick_id < %(tick)s) "
            "UPDATE pgfanout.agent_state SET published_tick = %(tick)s, next_position = %(next)s",
            {"tick": tick_id, "next": next_position},
        )
        self.state = AgentState(tick_id, next_position, self.state.generation)

    # -- reconciliation ------------------------------------------------------------

    def _read_state(self) -> tuple[AgentState, str | None]:
        with self.conn.transaction():
            *state, handed_to = self.conn.execute(
                "SELECT published_tick, next_position, generation, handed_to FROM pgfanout.agent_state"
            ).fetchone()
        return AgentState(*state), handed_to

    def _finish(self, resume: Resume) -> None:
        assert resume.tick_id is not None
        with self.conn.transaction():
            row = self.conn.execute(
                "SELECT tick_id, tick_time, snapshot::text FROM pgfanout.tick WHERE tick_id = %s", (resume.tick_id,)
            ).fetchone()
        if row is None:
            raise PositionError(
                f"topic {self.topic} holds tick {resume.tick_id}, which the primary does not know; "
                "the topic belongs to another installation"
            )
        if resume.batch_complete:
            self._record(resume.tick_id, resume.after.position + 1)
        else:
            requests = snapshot_requests.requested_at(self.conn, resume.tick_id)
            self._publish_batch(Tick(*row, requests), resume.after, heartbeat=False, must_publish=True)


def tick_pause(transactions: int, seconds: float, tick_ms: int, busy_tick_ms: int, busy_tps: int) -> float:
    """Seconds to wait before the next tick, after a batch of ``transactions`` committed in ``seconds``.

    Every tick costs the agent and the primary a few round trips and Kafka a request, whatever the batch
    holds: while the source commits more than ``busy_tps`` transactions a second, ticking every
    ``busy_tick_ms`` makes fewer, larger batches (lag stays well under a second); below that rate the
    short interval keeps lag low.
    """
    rate = transactions / seconds if seconds > 0 else 0.0
    return (busy_tick_ms if rate > busy_tps else tick_ms) / 1000


def tick_needed(
    logged: tuple[int, bool], logged_at_last_tick: tuple[int, bool] | None, running_at_last_tick: bool
) -> bool | None:
    """Whether the log may hold rows the last tick did not cover; None: only the log itself can tell.

    The log's sequence moved: something was logged since (or rolled back: an empty tick). It did not,
    and no transaction was running at the last tick: everything logged before it was in its batch. A
    transaction running at the last tick may have logged before it and committed after: ask the log
    (an index scan, but a query each tick, which is why it is the last resort).
    """
    if logged != logged_at_last_tick:
        return True
    if not running_at_last_tick:
        return False
    return None
