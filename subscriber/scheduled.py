"""A subscriber's compare on a schedule (the config's `compare:`): run by the daemon in a thread of its
own, while its applier goes on and stops at each aligned tick for it; the result goes to the metrics
(pgfanout_compare_differences by table and kind) and to the log."""

from __future__ import annotations

import logging
import threading
import time

from pgfanout.core.config import Config
from pgfanout.core.errors import PgfanoutError
from pgfanout.runtime.metrics import COMPARE_DIFFERENCES, COMPARE_FAILURES, COMPARE_FINISHED, COMPARE_SECONDS
from subscriber import compare as comparing

log = logging.getLogger(__name__)


class ScheduledCompare(threading.Thread):
    def __init__(self, config: Config, subscriber: str):
        super().__init__(name=f"compare-{subscriber}", daemon=True)  # it ends with the daemon
        self.config, self.subscriber = config, subscriber
        schedule = config.subscribers[subscriber].compare
        assert schedule is not None
        self.schedule = schedule
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.schedule.every_minutes * 60):
            self.compare_once()

    def compare_once(self) -> None:
        started = time.monotonic()
        try:
            found = comparing.targets(self.config, self.subscriber, self.schedule.tables or None)
            result = comparing.compare(
                self.config, self.subscriber, found, self.schedule.timeout_seconds, examples=3, pace=self.schedule.pace
            )
        except (PgfanoutError, OSError) as exc:
            COMPARE_FAILURES.labels(self.subscriber).inc()
            log.warning("subscriber %s: the scheduled compare gave no verdict: %s", self.subscriber, exc)
            return
        except Exception as exc:  # psycopg's errors among them: the next round tries again
            COMPARE_FAILURES.labels(self.subscriber).inc()
            log.warning("subscriber %s: the scheduled compare failed: %s: %s", self.subscriber, type(exc).__name__, exc)
            return
        keys = {t.name: t.keys for t in found}
        for report in result.reports:
            for kind, count in report.counts.items():
                COMPARE_DIFFERENCES.labels(self.subscriber, report.table, kind).set(count)
            if not report.equal:
                log.warning("subscriber %s: scheduled compare: %s", self.subscriber, "; ".join(report.lines(keys[report.table])))
        COMPARE_SECONDS.labels(self.subscriber).set(time.monotonic() - started)
        COMPARE_FINISHED.labels(self.subscriber).set(time.time())
        log.info(
            "subscriber %s: scheduled compare of %d tables at positions %d..%d: %s",
            self.subscriber,
            len(result.reports),
            result.positions[0],
            result.positions[-1],
            "equal" if all(r.equal for r in result.reports) else "DIFFERENT",
        )
