"""The exception hierarchy. Every message says what went wrong, where, and what to do.

- ``PgfanoutError``: the root; the CLI turns any of these into one line and an exit code.
- ``TransientError``: the world is temporarily unavailable (server down, network). Daemons
  back off and retry; one-shot commands report and exit.
- ``FatalError``: continuing could lose, duplicate or reorder data. Daemons stop.
"""

from __future__ import annotations


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


class LocalStackError(PgfanoutError):
    exit_code = 4
