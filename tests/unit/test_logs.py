"""How the command logs: a library's error in one line, pgfanout's own as they are."""

import logging

from pgfanout.cli.logs import LibraryErrorsInALine


def record(name: str, error: Exception | None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error else None
    return logging.LogRecord(name, logging.ERROR, __file__, 1, "Error in task %s", ("reader",), exc_info)


def test_a_kafka_library_error_is_one_line_naming_the_exception():
    logging.getLogger().setLevel(logging.INFO)
    kept = record("kafka.net.selector", ValueError("Invalid file descriptor: -1"))
    assert LibraryErrorsInALine().filter(kept)
    assert kept.exc_info is None and kept.getMessage() == "Error in task reader (ValueError: Invalid file descriptor: -1)"
    ours = record("pgfanout.runtime.daemon", ValueError("x"))
    LibraryErrorsInALine().filter(ours)
    assert ours.exc_info is not None, "pgfanout's own tracebacks are its business, not filtered"
