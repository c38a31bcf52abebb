"""The one loop every daemon runs: connect, work until told to stop, back off on transient errors.

A worker's ``work()`` returns True when there is more to do right away and False
when it may sleep ``idle_seconds``. Signal handlers only set a flag.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import kafka.errors
import psycopg

from pgfanout.core.errors import FatalError, PgfanoutError, TransientError
from pgfanout.runtime.metrics import ERRORS, RECONNECTS, Health

log = logging.getLogger(__name__)


class Session(Protocol):
    """A daemon's connections, all open, and the work it does with them."""

    def work(self) -> bool: ...
    def close(self) -> None: ...


S = TypeVar("S", bound=Session)


class SessionDaemon(Generic[S]):
    """A daemon whose ``connect()`` opens a session (never a connection that is None) that does its work."""

    session: S | None = None

    def work(self) -> bool:
        assert self.session is not None, "connect() first"
        return self.session.work()

    def close(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            session.close()


class Worker(Protocol):
    name: str
    idle_seconds: float

    def connect(self) -> None: ...
    def work(self) -> bool: ...
    def close(self) -> None: ...


def backoff(failures: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with jitter; the jitter keeps many daemons from retrying in step."""
    return min(cap, base * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)


def install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.info("received %s, stopping after the current step", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


AUTOGROUP_SWITCH = Path("/proc/sys/kernel/sched_autogroup_enabled")


def autogroups_enabled() -> bool | None:
    """Whether the kernel shares the CPUs between sessions first (None: not Linux, or no autogroups)."""
    try:
        return AUTOGROUP_SWITCH.read_text().strip() == "1"
    except OSError:
        return None


def lower_priority(nice: int) -> None:
    """Lower this process's CPU priority by ``nice``, in its session's scheduling group too.

    With autogroups (on by default in Debian's kernels) the scheduler shares the CPUs between sessions
    first and by nice values only inside one, so a daemon leading its own session (systemd, `make demo`)
    niced alone still competes with all of PostgreSQL's backends together as an equal. The group is
    lowered only when this process leads its session: in a terminal's session it would slow the shell
    and its other jobs as well.
    """
    if nice <= 0:
        return
    niceness = os.nice(nice)
    if os.getsid(0) != os.getpid() or not autogroups_enabled():
        return
    for _attempt in range(5):
        try:
            Path("/proc/self/autogroup").write_text(str(niceness))
            return
        except BlockingIOError:  # unprivileged changes are rate-limited machine-wide (one per 100 ms)
            time.sleep(0.1)
        except OSError as exc:  # a read-only /proc in a container: the process nice still applies
            log.debug("could not lower the session's scheduling group: %s", exc)
            return
    log.debug("could not lower the session's scheduling group: other processes kept changing theirs")


GC_THRESHOLDS = (50_000, 20, 100)


def tune_garbage_collector() -> None:
    """Collect cyclic garbage less often.

    Decoding a message makes thousands of small dicts and lists that reference counting frees; the
    default generation-0 threshold (700 allocations) runs the cycle collector over them again and again,
    and that cost the subscriber 40% of its decode time. Objects that live through start-up are frozen
    out of the collector's sight.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(worker: Worker, stop: threading.Event, health: Health | None = None) -> int:
    """Run until ``stop`` is set (exit 0) or a fatal error (its exit code)."""
    tune_garbage_collector()
    health = health or Health(worker.name)
    failures = connects = 0
    while not stop.is_set():
        try:
            worker.connect()
            if connects:
                RECONNECTS.labels(worker.name).inc()
            connects += 1
            health.set_ready()
            while not stop.is_set():
                health.beat()
                more = worker.work()
                failures = 0
                if not more:
                    pause = getattr(worker, "pause", None)  # a worker that knows better than a timer
                    if pause is not None:
                        pause(stop)
                    else:
                        stop.wait(worker.idle_seconds)
        except FatalError as exc:
            _count(worker, health, exc)
            log.error("%s stopped: %s", worker.name, exc, extra=_where(exc))
            return exc.exit_code
        except (TransientError, psycopg.OperationalError, kafka.errors.KafkaError) as exc:
            _count(worker, health, exc)
            failures += 1
            delay = backoff(failures)
            log.warning("%s: %s; retrying in %.1fs (attempt %d)", worker.name, _one_line(exc), delay, failures)
            health.beat()
            stop.wait(delay)
        except PgfanoutError as exc:
            _count(worker, health, exc)
            log.error("%s stopped: %s", worker.name, exc)
            return exc.exit_code
        finally:
            _close_quietly(worker)
    log.info("%s stopped", worker.name)
    return 0


def _where(exc: FatalError) -> dict[str, object]:
    """Where in a stream a fatal error happened, as fields of its log record (for --log-format json)."""
    fields = {"position": exc.position, "topic": exc.topic, "partition": exc.partition, "offset": exc.offset}
    return {key: value for key, value in fields.items() if value is not None}


def _count(worker: Worker, health: Health, exc: BaseException) -> None:
    ERRORS.labels(worker.name, type(exc).__name__).inc()
    health.set_unready(_one_line(exc))
    if not isinstance(exc, TransientError | psycopg.OperationalError | kafka.errors.KafkaError):
        stopped = getattr(worker, "stopped", None)  # a worker may leave word of why it stops, for `pgfanout status`
        if stopped is not None:
            try:
                stopped(exc)
            except Exception:  # saying why must not hide why
                log.debug("%s could not record why it stops", worker.name, exc_info=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ") or type(exc).__name__
    return text if isinstance(exc, PgfanoutError) else f"{type(exc).__name__}: {text}"


def _close_quietly(worker: Worker) -> None:
    try:
        worker.close()
    except Exception:  # closing after a failure must not hide the failure
        log.debug("error while closing %s", worker.name, exc_info=True)
