"""`pgfanout switchover` and `pgfanout failover`: move a source's primary role to a subscriber (docs/switchover.md).

Both start a new generation of the stream: the new primary's capture continues the positions after the
last one it holds, its ticks after the stream's last, and a heartbeat that opens the generation goes into
the source topic before anything it publishes. Distributors, subscribers and the agent find the new
primary there (pgfanout.core.generations); nothing downstream is copied again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from agent import primary_role
from agent.agent import fence
from pgfanout.core.codec import default_codec
from pgfanout.core.config import Config
from pgfanout.core.errors import ConfigError, FatalError, PostgresUnavailable, TransientError
from pgfanout.core.generations import (
    Generation,
    Lineage,
    as_records,
    current,
    describe_positions,
    extended,
    generation_header,
    lineage_of,
)
from pgfanout.core.positions import WHOLE, Mark, mark_header, mark_of
from pgfanout.runtime import kafka as kafkautil
from pgfanout.runtime import registry
from pgfanout.runtime.pg import connect, describe
from pgfanout.runtime.registry import RegistryDecoder
from subscriber.state import (
    UNKNOWN_OFFSET,
    ensure_state,
    protect_table,
    resync_lock_key,
    unprotect_tables,
)

POLL_SECONDS = 0.02


@dataclass
class Tail:
    """The source topic's last message: its generation's lineage, its tick, the last position published."""

    lineage: Lineage
    tick_id: int
    position: int


class Report:
    """Each step on its own line, with the seconds since the command started."""

    def __init__(self, write: Callable[[str], None] = print):
        self.started = time.monotonic()
        self.write = write

    def step(self, text: str) -> None:
        self.write(f"[{time.monotonic() - self.started:6.2f}s] {text}")


class Move:
    """What both commands share: the source, its stream, the new primary."""

    def __init__(self, config: Config, source: str, target: str, report: Report):
        if source not in config.sources:
            raise ConfigError("command line", [f"no source named {source!r} (defined: {', '.join(config.sources)})"])
        self.config, self.source, self.target, self.report = config, source, target, report
        self.settings = config.sources[source]
        self.cluster = config.kafka[self.settings.kafka]
        self.topic = config.source_topic(source)
        self.codec = default_codec()
        self.decoder = RegistryDecoder(self.codec, self.cluster)

    def check_target(self, current_primary: str) -> None:
        """A subscriber may take the role only if it holds every table of the source whole."""
        config, target = self.config, self.target
        if target not in config.subscribers:
            raise ConfigError("command line", [f"no subscriber named {target!r}"])
        if not config.carries_whole(target, self.source):
            raise ConfigError(
                "command line",
                [
                    f"subscriber {target} cannot become the primary of source {self.source}: its route "
                    f"{config.subscribers[target].route} does not carry every table of the source whole (a row filter, "
                    "a column list, a table left out, or another source), so its database lacks data"
                ],
            )
        if target not in config.candidates_of(self.source):
            raise ConfigError(
                "command line",
                [
                    f"subscriber {target} is not a candidate primary of source {self.source}: "
                    f"list it in sources.{self.source}.candidates"
                ],
            )
        if config.primary_name(self.source, current_primary) == target:
            raise ConfigError("command line", [f"subscriber {target} is the primary of source {self.source} already"])

    def tail(self) -> Tail:
        last = kafkautil.last_message(self.cluster, self.topic, self.decoder.decode)
        if last is None:
            raise FatalError(f"topic {self.topic} is empty: source {self.source} has published nothing to go on from")
        kind, message = last
        mark = mark_of(kind, message)
        lineage = lineage_of(message) or (Generation(1, 1, self.settings.as_subscriber or ""),)
        return Tail(lineage, mark.tick_id, mark.position if mark.chunk == WHOLE else mark.position - 1)

    def freeze(self, conn: psycopg.Connection) -> int:
        """Stop the target's applier at its next replica transaction (the lock a whole-table resync takes), and
        return the position it committed; held until ``conn`` closes."""
        conn.execute("SELECT pg_advisory_lock(%s, %s)", resync_lock_key(self.target))
        return self.position_of(conn, self.target)[0]

    @staticmethod
    def position_of(conn: psycopg.Connection, subscriber: str) -> tuple[int, int]:
        """The subscriber's (position, generation); polled, so it reads and changes nothing else."""
        try:
            row = conn.execute(
                "SELECT position, generation FROM pgfanout_replica.position WHERE subscriber = %s", (subscriber,)
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            row = None  # no subscriber ever ran there
        if row is None:
            raise FatalError(f"subscriber {subscriber} has applied nothing yet; it cannot take the primary role")
        return row

    def take_role(self, conn: psycopg.Connection, lineage: Lineage, kept: int, tick_id: int) -> Lineage:
        """Capture on the target, continuing after ``kept``; the stream's new generation opened by a heartbeat."""
        database = self.config.subscribers[self.target]
        settings = self.settings.model_copy(update={"dsn": database.dsn, "password_env": database.password_env})
        new_lineage = extended(lineage, kept, self.target)
        generation = new_lineage[-1].generation
        snapshot = primary_role.take_role(conn, settings, self.config.subscriptions_of(self.source), generation, kept, tick_id)
        conn.execute("UPDATE pgfanout_replica.position SET generation = %s WHERE subscriber = %s", (generation, self.target))
        self.report.step(f"capture installed on {self.target}: generation {generation} goes on after position {kept}")
        registry.register(self.cluster, self.codec)
        beat = {
            "source": self.source,
            "position": kept,
            "tick_id": tick_id,
            "tick_time": datetime.now(UTC),
            "snapshot": snapshot,
            "snapshot_requests": [],
            "generation": generation,
            "lineage": as_records(new_lineage),
        }
        producer = kafkautil.producer(self.cluster, self.settings.max_message_bytes)
        try:
            headers = mark_header(Mark(tick_id, kept, WHOLE)) + generation_header(generation)
            producer.send(self.topic, value=self.codec.encode("Heartbeat", beat), headers=headers)
            producer.flush(timeout=60)
        finally:
            producer.close(timeout=5)
        self.report.step(f"generation {generation} opened in {self.topic} at tick {tick_id}")
        return new_lineage

    def allow_writes(self, conn: psycopg.Connection) -> None:
        with conn.transaction():
            unprotect_tables(conn)
            primary_role.set_read_only_default(conn, False)

    def target_connection(self) -> psycopg.Connection:
        return connect(self.config.subscribers[self.target], f"pgfanout-{self.target}-takes-primary")


def switchover(config: Config, source: str, target: str, timeout: float, report: Report | None = None) -> int:
    """Planned: the primary is alive. Writes stop there, the target applies everything, takes the role; the old
    primary becomes a subscriber. Writes are refused meanwhile, never lost."""
    report = report or Report()
    move = Move(config, source, target, report)
    tail = move.tail()
    primary = current(tail.lineage)
    move.check_target(primary.primary)
    old_name = config.primary_name(source, primary.primary)
    if not old_name or old_name not in config.subscribers:
        raise ConfigError(
            "command line",
            [f"name the subscriber the database of source {source} becomes: sources.{source}.as_subscriber"],
        )
    old_database = config.primary_database(source, primary.primary)
    assert old_database is not None
    generation = primary.generation + 1
    with ExitStack() as stack:
        old = stack.enter_context(connect(old_database, f"pgfanout-switchover-{source}"))
        new = stack.enter_context(move.target_connection())
        state = old.execute("SELECT generation, handed_to FROM pgfanout.agent_state").fetchone()
        if state != (primary.generation, None):
            raise FatalError(
                f"{describe(old_database.dsn)} is not the primary of generation {primary.generation} of source {source} "
                f"(its capture state: generation {state[0]}, handed to {state[1]}); a switchover or failover did not finish"
            )
        move.position_of(new, target)
        report.step(f"source {source}: primary {old_name} ({describe(old_database.dsn)}), generation {primary.generation}")
        writes_stopped = time.monotonic()
        guard_xid = primary_role.stop_writes(
            old, f"source {source} is moving its primary role to subscriber {target} (generation {generation})"
        )
        report.step(f"writes stopped on {old_name}: its published tables refuse them")
        try:
            last = _wait(lambda: primary_role.published_through(old, guard_xid), timeout, "the agent to publish every write")
            report.step(f"the agent published everything: the last position is {last}")
            _wait(
                lambda: p if (p := move.position_of(new, target)[0]) >= last else None,
                timeout,
                f"subscriber {target} to apply position {last} (is it running?)",
            )
            report.step(f"{target} applied position {last}")
            primary_role.hand_over(old, target)
            if not primary_role.take_agent_lock(old, source, timeout):
                raise TransientError(f"the agent of source {source} did not leave {old_name} in {timeout:.0f}s")
            report.step(f"the agent left {old_name}")
        except BaseException:
            _undo_stop(old)
            report.step(f"switchover abandoned: {old_name} accepts writes again")
            raise
        applied = move.freeze(new)
        if applied != last:
            raise FatalError(f"subscriber {target} is at position {applied}, not {last}; nothing was changed on it")
        tail = move.tail()
        lineage = move.take_role(new, tail.lineage, last, tail.tick_id + 1)
        move.allow_writes(new)
        unavailable = time.monotonic() - writes_stopped
        report.step(f"{target} accepts writes: writes were unavailable for {unavailable:.2f}s")
        demote(old, config, source, old_name, last, tail.tick_id + 1, lineage[-1].generation)
        report.step(
            f"{old_name} is a subscriber of {target} now, read-only; run `pgfanout subscriber run {old_name}` "
            "if it is not running"
        )
    report.step(f"switchover done: {target} is the primary of source {source}, generation {generation}")
    print(f"write unavailability: {unavailable:.3f} s")
    return 0


def demote(
    conn: psycopg.Connection, config: Config, source: str, name: str, position: int, tick_id: int, generation: int
) -> None:
    """The old primary's tables read-only for all but the applier, its subscriber going on after ``position``."""
    with conn.transaction():
        tables = primary_role.published_relations(conn)
        primary_role.remove_guard(conn)
        ensure_state(conn)
        for schema_name, table_name in tables:
            protect_table(conn, schema_name, table_name, source)
        conn.execute(
            "INSERT INTO pgfanout_replica.position (subscriber, source, position, tick_id, topic, kafka_offset, generation) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (subscriber) DO NOTHING",
            (name, source, position, tick_id, config.stream(config.subscribers[name].route)[1], UNKNOWN_OFFSET, generation),
        )


def _undo_stop(conn: psycopg.Connection) -> None:
    with conn.transaction():
        primary_role.remove_guard(conn)
        primary_role.set_read_only_default(conn, False)
        conn.execute("UPDATE pgfanout.agent_state SET handed_to = NULL")


def _wait(check: Callable[[], int | None], timeout: float, what: str) -> int:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            raise TransientError(f"waited {timeout:.0f}s for {what}")
        time.sleep(POLL_SECONDS)


# -- failover ---------------------------------------------------------------------------


def failover(config: Config, source: str, target: str | None, wait_seconds: float, report: Report | None = None) -> int:
    """Unplanned: the primary is gone. The target (or the candidate furthest ahead) applies what reached it and
    takes the role; what was published past its position is listed as lost, and so is every subscriber that
    applied any of it."""
    report = report or Report()
    probe = Move(config, source, target or "", report)
    tail = probe.tail()
    primary = current(tail.lineage)
    old_name = config.primary_name(source, primary.primary) or f"the database of source {source}"
    report.step(f"source {source}: generation {primary.generation}, last position published {tail.position}")
    candidates = [target] if target else [c for c in config.candidates_of(source) if c != old_name]
    positions = _drained_positions(config, candidates, wait_seconds, report)
    if not positions:
        raise TransientError(f"no candidate primary of source {source} could be reached: {', '.join(candidates)}")
    chosen = target or max(positions, key=lambda name: (positions[name], -candidates.index(name)))
    move = Move(config, source, chosen, report)
    move.check_target(primary.primary)
    with ExitStack() as stack:
        new = stack.enter_context(move.target_connection())
        kept = move.freeze(new)
        generation = move.position_of(new, chosen)[1]
        if generation != primary.generation:
            raise FatalError(
                f"subscriber {chosen} is at generation {generation}, the stream at {primary.generation}: it missed a "
                f"switchover or failover; copy it again (`pgfanout subscriber resync {chosen}`) or choose another"
            )
        report.step(f"{chosen} takes the role at position {kept}")
        lost = kafkautil.published_after(move.cluster, move.topic, move.decoder.decode, kept, primary.generation)
        if lost:
            report.step(
                f"loss window: {len(lost)} transactions published but not applied at {chosen} are lost: positions "
                f"{describe_positions([p for p, _ in lost])}"
            )
            for position, xid in lost:
                report.write(f"  lost: position {position}, xid {xid} on the old primary")
        else:
            report.step(f"loss window: none; {chosen} applied every position published")
        ahead = _subscribers_ahead(config, source, chosen, kept, primary.generation)
        for name, position in ahead.items():
            report.step(
                f"subscriber {name} applied positions {kept + 1}..{position}, which the new primary lacks: it stops "
                f"there; copy it again: `pgfanout subscriber resync {name}`"
            )
        new_primary = Generation(primary.generation + 1, kept + 1, chosen)
        old_database = config.primary_database(source, primary.primary)
        note = "not named in this configuration"
        if old_database is not None:
            try:
                with connect(old_database, f"pgfanout-failover-{source}") as old:
                    note = fence(
                        old,
                        source,
                        new_primary,
                        lambda position, generation: kafkautil.published_after(
                            move.cluster, move.topic, move.decoder.decode, position, generation
                        ),
                    )
            except PostgresUnavailable:
                note = "unreachable: when it comes back, the first agent that reaches it guards it against writes"
        report.step(f"old primary {old_name}: {note}")
        tail = move.tail()
        move.take_role(new, tail.lineage, kept, tail.tick_id + 1)
        move.allow_writes(new)
        report.step(f"{chosen} accepts writes")
    report.step(f"failover done: {chosen} is the primary of source {source}, generation {new_primary.generation}")
    return 0


def _drained_positions(config: Config, candidates: list[str], wait_seconds: float, report: Report) -> dict[str, int]:
    """Each reachable candidate's position once it has applied what reached it (it no longer moves)."""
    positions: dict[str, int] = {}
    deadline = time.monotonic() + wait_seconds
    for name in candidates:
        if name not in config.subscribers:
            raise ConfigError("command line", [f"no subscriber named {name!r}"])
        try:
            with connect(config.subscribers[name], "pgfanout-failover") as conn:
                position = Move.position_of(conn, name)[0]
                still_since = time.monotonic()
                while time.monotonic() - still_since < 1.0 and time.monotonic() < deadline:
                    time.sleep(0.1)
                    now = Move.position_of(conn, name)[0]
                    if now != position:
                        position, still_since = now, time.monotonic()
        except PostgresUnavailable as exc:
            report.step(f"candidate {name}: unreachable ({exc})")
            continue
        except FatalError as exc:
            report.step(f"candidate {name}: {exc}")
            continue
        positions[name] = position
        report.step(f"candidate {name}: position {position}")
    return positions


def _subscribers_ahead(config: Config, source: str, chosen: str, kept: int, generation: int) -> dict[str, int]:
    ahead = {}
    for name, settings in config.subscribers.items():
        if name == chosen or config.origin_source(settings.route) != source:
            continue
        try:
            with connect(settings, "pgfanout-failover") as conn:
                row = conn.execute(
                    "SELECT position, generation FROM pgfanout_replica.position WHERE subscriber = %s", (name,)
                ).fetchone()
        except (PostgresUnavailable, psycopg.Error):
            continue
        if row is not None and row[1] == generation and row[0] > kept:
            ahead[name] = row[0]
    return ahead
