"""The exception hierarchy, every class of it. Every message says what went wrong, where, and what to do.

- ``PgfanoutError``: the root; the CLI turns any of these into one line and an exit code.
- ``TransientError``: the world is temporarily unavailable (server down, network). Daemons
  back off and retry; one-shot commands report and exit.
- ``FatalError``: continuing could lose, duplicate or reorder data. Daemons stop. Where it
  happened in a stream, its fields say too: ``at`` (topic, partition, offset, and the log
  shipping file it was read from), ``position``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class StreamPlace(NamedTuple):
    """A record of a Kafka topic (or of a log shipping file holding that topic's records)."""

    topic: str
    partition: int
    offset: int
    file: str | None = None

    def __str__(self) -> str:
        place = f"{self.topic}[{self.partition}]@{self.offset}"
        return f"{self.file} ({place})" if self.file else place


Where = StreamPlace | str  # where a message was read; a string for what is not one record (a range, a file)


class PgfanoutError(Exception):
    exit_code = 1


class ConfigError(PgfanoutError):
    """The configuration is invalid; ``problems`` holds one line per problem."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration in {source}:\n{lines}")


class FilterError(PgfanoutError):
    """A row filter uses something the evaluator does not support, or a column the table lacks."""

    exit_code = 2

    def __init__(self, expression: str, reason: str):
        self.expression = expression
        self.reason = reason
        super().__init__(f"row filter {expression!r}: {reason}")


class NameSyntaxError(PgfanoutError, ValueError):
    """A table or column name that PostgreSQL's identifier syntax does not read."""

    exit_code = 2

    def __init__(self, text: str, reason: str):
        self.text = text
        self.reason = reason
        super().__init__(f"{text!r} is not a valid name: {reason}")


class TransientError(PgfanoutError):
    exit_code = 75  # EX_TEMPFAIL: trying again later may work


class PostgresUnavailable(TransientError):
    def __init__(self, where: str, reason: str):
        super().__init__(f"cannot reach PostgreSQL at {where}: {reason}")


class KafkaUnavailable(TransientError):
    def __init__(self, where: str, reason: str):
        super().__init__(f"cannot reach Kafka at {where}: {reason}")


class FatalError(PgfanoutError):
    exit_code = 3

    def __init__(self, message: str, *, at: StreamPlace | str | None = None, position: int | None = None):
        super().__init__(message)
        self.at = at if isinstance(at, StreamPlace) else None
        self.position = position

    def locate(self, at: StreamPlace | str | None, position: int | None) -> FatalError:
        """Fill in where in the stream it happened, where that is not known yet; returns the error."""
        if self.at is None and isinstance(at, StreamPlace):
            self.at = at
        if self.position is None:
            self.position = position
        return self

    @property
    def topic(self) -> str | None:
        return self.at.topic if self.at else None

    @property
    def partition(self) -> int | None:
        return self.at.partition if self.at else None

    @property
    def offset(self) -> int | None:
        return self.at.offset if self.at else None


class PositionError(FatalError):
    """The stream does not continue where the stored position says it should."""


class StreamGap(PositionError):
    """Positions the consumer needs are missing from the stream (deleted by retention, or never delivered)."""


class MaterializeError(FatalError):
    """A replica cannot be materialized (initial copy or resync) as asked."""


class ApplierBusy(TransientError):
    """Another process applies to (or materializes) this subscriber right now."""


class PoisonMessage(FatalError):
    """A message cannot be decoded or applied; nothing of it was committed."""


class CaptureError(FatalError):
    """Capture cannot be installed as configured (keyless table, missing table...)."""


class CaptureFault(FatalError):
    """A batch holds transactions whose changes capture could not all record (agent.faults): the agent
    stops before publishing it. ``faults``: (txid, table, reason) of each."""

    def __init__(self, source: str, tick_id: int, first_position: int, faults: Sequence[tuple[int, str, str]]):
        self.source, self.tick_id, self.faults = source, tick_id, list(faults)
        listed = "; ".join(f"{table} in transaction {txid}: {reason}" for txid, table, reason in faults)
        tables = sorted({table for _, table, _ in faults})
        super().__init__(
            f"source {source}: capture could not record some changes ({listed}); the agent stops before publishing "
            f"tick {tick_id} (positions from {first_position} on), so nothing of those transactions is published. "
            f"Repair capture (`pgfanout agent install --source {source}`), then `pgfanout agent faults --source {source} "
            f"--accept` lets those transactions go out without the changes that were not recorded; then copy "
            f"{', '.join(tables)} again on every subscriber (`pgfanout subscriber resync NAME --table TABLE`)",
            position=first_position,
        )


class RouteError(FatalError):
    """A route's subscription cannot be applied to what the upstream sends."""


class ExportError(FatalError):
    """A log shipping file cannot be written as asked."""


class ShipFileError(FatalError):
    """A log shipping file is unreadable, incomplete or not the one asked for."""


class CompareError(PgfanoutError):
    """`pgfanout compare` or `repair` cannot give a verdict as asked (an unknown table, a table without a key,
    a subscriber that does not reach the compare's position in time); nothing was changed. Exit status 2:
    1 means the replica differs."""

    exit_code = 2


class LocalStackError(PgfanoutError):
    exit_code = 4
