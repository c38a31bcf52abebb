"""How the `pgfanout` command logs: readable lines, or with ``--log-format json`` one JSON object a line
(time, level, daemon, logger, message, and where a stream error happened: position, topic, partition, offset)."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET = ("kafka", "kafka.conn", "kafka.client")


class DaemonName(logging.Filter):
    """Names the daemon this process runs in every record (``daemon``), once it is known."""

    daemon = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "daemon"):
            record.daemon = self.daemon
        return True


NAMED = DaemonName()


class LibraryErrorsInALine(logging.Filter):
    """kafka-python logs the errors of its network thread with their tracebacks (a socket closed under it, a
    broker gone): pgfanout handles what they mean itself, so they are kept to one line, the exception's."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.name.startswith("kafka") and logging.getLogger().level > logging.DEBUG:
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(error).__name__}: {error})"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def configure(level: str, form: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(NAMED)
    handler.addFilter(LibraryErrorsInALine())
    if form == "json":
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{daemon}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in QUIET:
        logging.getLogger(noisy).setLevel(logging.ERROR if level != "DEBUG" else logging.INFO)


def name_daemon(name: str) -> None:
    NAMED.daemon = name
