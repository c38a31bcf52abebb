"""Where routing runs: in the distributor's process (Inline), or on every core (RoutingPool).

One Python process decodes, filters and re-encodes about 100,000 changed rows/s, mostly in
fastavro. The pool's workers do that part for whole messages; the distributor process only
polls, hands messages out, and sends the results in the order the messages came (results are
taken from the front of its queue only), so order and the exactly-once rules are the same
either way. Workers are forked after the schemas were loaded and before any Kafka client
exists, so they inherit the codec and the route filters and no threads.

Both executors take ``submit(record, where)`` and give back a pending routing whose ``ready()``
says it is done and whose ``result()`` is its Routed; ``capacity`` bounds the messages in flight.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from distributor.shaping import Routed, Shaping, route_message
from pgfanout.core.errors import FatalError, PgfanoutError, TransientError, Where

WORKER_TIMEOUT = 300  # seconds; routing one message takes well under one
_WORKER_STATE: tuple[Any, Any, Sequence[Shaping]] | None = None


class Done:
    """A routing already made."""

    __slots__ = ("routed",)

    def __init__(self, routed: Routed):
        self.routed = routed

    @staticmethod
    def ready() -> bool:
        return True

    def result(self) -> Routed:
        return self.routed


class Inline:
    """Routing in this process, as each message is submitted, by ``route`` (the session sets it)."""

    capacity = 500  # a poll's worth of messages

    def __init__(self) -> None:
        self.route: Callable[[Any, Where], Routed] | None = None

    def submit(self, record: Any, where: Where) -> Done:
        assert self.route is not None
        return Done(self.route(record, where))

    def close(self) -> None:
        pass


def _route(value: bytes, where: Where) -> tuple[Routed | None, tuple[bool, str] | None]:
    """In a worker: route_message, with an error returned rather than raised."""
    assert _WORKER_STATE is not None
    try:
        return route_message(*_WORKER_STATE, value, where), None
    except PgfanoutError as exc:  # sent back as text: not every error class survives pickling
        return None, (isinstance(exc, TransientError), str(exc))


def _worker_start(parent: int) -> None:
    """In a worker: stop on SIGTERM, and leave when the distributor is gone, even killed with SIGKILL.

    A forked worker inherits the daemon's SIGTERM handler, which only asks the loop to stop: the pool's
    terminate() (SIGTERM) would then wait for it forever. Ctrl-C reaches the whole process group; the
    distributor handles it and terminates the pool.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def worker_count() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class Pending:
    """A routing handed to a worker."""

    __slots__ = ("result_of",)

    def __init__(self, result_of: Any):
        self.result_of = result_of

    def ready(self) -> bool:
        return bool(self.result_of.ready())

    def result(self) -> Routed:
        try:
            routed, error = self.result_of.get(timeout=WORKER_TIMEOUT)
        except multiprocessing.TimeoutError:  # a worker died (the pool replaces it, but its task is lost)
            raise TransientError(
                f"a routing worker gave no answer within {WORKER_TIMEOUT} s; "
                "starting over from the last committed upstream offset"
            ) from None
        if error is not None:
            transient, text = error
            raise (TransientError if transient else FatalError)(text)
        return routed


class RoutingPool:
    """Routing in forked worker processes, one per core by default."""

    capacity = 16  # messages handed out and not yet forwarded

    def __init__(self, codec: Any, decoder: Any, subscriptions: Sequence[Shaping], workers: int):
        global _WORKER_STATE
        _WORKER_STATE = (codec, decoder, subscriptions)
        self.pool = multiprocessing.get_context("fork").Pool(workers, initializer=_worker_start, initargs=(os.getpid(),))

    def submit(self, record: Any, where: Where) -> Pending:
        return Pending(self.pool.apply_async(_route, (record.value, where)))

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()
