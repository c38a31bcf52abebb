"""Routing on every core: decode, filter and encode run in forked worker processes, in stream order.

One Python process decodes, filters and re-encodes about 100,000 changed rows/s, mostly
in fastavro. The workers do that part for whole messages; the distributor process only
polls, hands messages out, and sends the results in the order the messages came
(results are taken from the front of the queue only), so order and the exactly-once
rules are unchanged. Workers are forked after the schemas were loaded and before any
Kafka client exists, so they inherit the codec and the route filters and no threads.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

from distributor.routing import RouteFilter
from distributor.rowsroute import RowsRoute
from pgfanout.core.errors import FatalError, PgfanoutError, TransientError, Where
from pgfanout.core.positions import Mark, mark_of

WORKER_TIMEOUT = 300  # seconds; routing one message takes well under one
Shaping = RouteFilter | RowsRoute | None  # what a route makes of each batch; None: it takes the message as is
Learned = list[tuple[str, str]]  # schemas made while routing, to register before the message goes out
_WORKER_STATE: tuple[Any, Any, Sequence[Shaping]] | None = None


def route_message(codec: Any, decoder: Any, subscriptions: Sequence[Shaping], value: bytes,
                  where: Where) -> tuple[Mark, list[bytes | None], Learned]:
    """(mark, the message for each shaping route, or None where a route takes it as it is, new schemas)."""
    kind, message = decoder.decode(value, where)
    outputs = [codec.encode(s.kind, s.batch(message, where)) if s is not None and kind == "Batch" else None
               for s in subscriptions]
    learned = [schema for s in subscriptions if isinstance(s, RowsRoute) for schema in s.take_learned()]
    return mark_of(kind, message), outputs, learned


def _route(value: bytes, where: Where) -> tuple[Mark | None, list[bytes | None], Learned, tuple[bool, str] | None]:
    """In a worker: route_message, with an error returned rather than raised."""
    assert _WORKER_STATE is not None
    try:
        return (*route_message(*_WORKER_STATE, value, where), None)
    except PgfanoutError as exc:  # sent back as text: not every error class survives pickling
        return None, [], [], (isinstance(exc, TransientError), str(exc))


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


class RoutingPool:
    def __init__(self, codec: Any, decoder: Any, subscriptions: Sequence[Shaping], workers: int):
        global _WORKER_STATE
        _WORKER_STATE = (codec, decoder, subscriptions)
        self.pool = multiprocessing.get_context("fork").Pool(workers, initializer=_worker_start,
                                                             initargs=(os.getpid(),))

    def submit(self, value: bytes, where: Where) -> Any:
        return self.pool.apply_async(_route, (value, where))

    @staticmethod
    def result(pending: Any) -> tuple[Mark, list[bytes | None], Learned]:
        try:
            mark, outputs, learned, error = pending.get(timeout=WORKER_TIMEOUT)
        except multiprocessing.TimeoutError:  # a worker died (the pool replaces it, but its task is lost)
            raise TransientError(f"a routing worker gave no answer within {WORKER_TIMEOUT} s; "
                                 "starting over from the last committed upstream offset") from None
        if error is not None:
            transient, text = error
            raise (TransientError if transient else FatalError)(text)
        return mark, outputs, learned

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()
