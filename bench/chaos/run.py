"""One chaos run: the tree under load, two lanes of faults, marks that time each recovery, the checks."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import threading
import time
from dataclasses import dataclass

import psycopg

from bench.chaos import check
from bench.chaos.faults import Faults, nftables_usable
from bench.chaos.schedule import Account, Injected, deck
from bench.chaos.tree import MARKS, SHARE, Tree
from devstack import transfers
from devstack.stack import Stack

log = logging.getLogger(__name__)
# Faults on the daemons, and faults on what they stand on, go in two lanes at once: a broker restart takes
# seconds, and daemons are killed meanwhile as they would be in a bad hour of production.
LANES = {"daemons": ("kill", "pause"), "servers": ("kafka", "postgres", "netcut", "diskfull")}
COST = {"kill": 1.5, "pause": 3.0, "kafka": 10.0, "postgres": 4.0, "netcut": 5.0, "diskfull": 5.0}  # seconds, about
CATCH_UP_SECONDS = 300


@dataclass
class Settings:
    minutes: float
    per_kind: int
    seed: int = 1
    writers: int = 2
    pgbench_rate: int = 20  # transactions per second of pgbench's TPC-B, besides the transfers


def per_kind_for(minutes: float) -> int:
    """Faults of each kind a run of ``minutes`` has room for (the servers' lane is the longer)."""
    lane = sum(COST[kind] + 1.0 for kind in LANES["servers"])
    return max(1, int(minutes * 60 / lane))


class Marks:
    """Numbered rows written on the primary after each fault; a fault has recovered once its mark is on
    every replica."""

    def __init__(self, tree: Tree, started: float):
        self.tree, self.started = tree, started
        self.lock = threading.Lock()
        self.last = 0
        self.waiting: list[tuple[int, Injected]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True, name="chaos-marks")

    def write(self, fault: Injected | None = None, timeout: float = 120) -> int:
        with self.lock:
            self.last += 1
            mark = self.last
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.tree.primary_dsn, autocommit=True, connect_timeout=2) as conn:
                    conn.execute(f"INSERT INTO {MARKS} (id) VALUES (%s) ON CONFLICT DO NOTHING", (mark,))
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        if fault is not None:
            with self.lock:
                self.waiting.append((mark, fault))
        return mark

    def _watch(self) -> None:
        conns: dict[str, psycopg.Connection | None] = dict.fromkeys(self.tree.tier1 + self.tree.tier2)
        stopping = False
        while not stopping:
            # One more sweep once stopped: the last faults' marks arrive with the final mark, which ends the run.
            stopping = self.stop.wait(0.25)
            with self.lock:
                if not self.waiting:
                    continue
            self._sweep(conns)
        _close(conns)

    def _sweep(self, conns: dict[str, psycopg.Connection | None]) -> None:
        """Mark recovered every waiting fault whose mark is on every replica."""
        everywhere = min(self._replica_marks(conns))
        now = time.monotonic() - self.started
        with self.lock:
            for _, fault in [w for w in self.waiting if w[0] <= everywhere]:
                fault.recovered = now
            self.waiting = [w for w in self.waiting if w[0] > everywhere]

    def _replica_marks(self, conns: dict[str, psycopg.Connection | None]) -> list[int]:
        """The last mark on each replica (0 for one out of reach), on connections kept between sweeps."""
        seen = []
        for name, conn in conns.items():
            try:
                if conn is None or conn.closed:
                    conn = conns[name] = psycopg.connect(self.tree.replica_dsn(name), autocommit=True, connect_timeout=2)
                seen.append(conn.execute(f"SELECT coalesce(max(id), 0) FROM {MARKS}").fetchone()[0])
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                seen.append(0)
        return seen

    def wait_everywhere(self, mark: int, timeout: float) -> bool:
        conns: dict[str, psycopg.Connection | None] = dict.fromkeys(self.tree.tier1 + self.tree.tier2)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if min(self._replica_marks(conns)) >= mark:
                    return True
                time.sleep(0.5)
            return False
        finally:
            _close(conns)


class Pgbench:
    """pgbench at a fixed rate, started again when a restart of the primary ends it, until stopped."""

    def __init__(self, tree: Tree, rate: int, seconds: float):
        self.tree, self.rate, self.seconds = tree, rate, seconds
        self.stop = threading.Event()
        self.runs = 0
        self.thread = threading.Thread(target=self._run, daemon=True, name="chaos-pgbench")

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            chunk = max(1, min(20, int(deadline - time.monotonic())))
            with contextlib.suppress(Exception):  # a restart of the primary ends a run; the next one goes on
                self.tree.pgbench("-n", "-c", "2", "-j", "1", "-R", str(self.rate), "-T", str(chunk), seconds=chunk + 60)
            self.runs += 1
            self.stop.wait(0.5)


def run_chaos(stack: Stack, settings: Settings, name: str = "chaos") -> Account:
    """The whole run on ``stack`` (its clusters primary and replica, its Kafka clusters main and second)."""
    rng = random.Random(settings.seed)
    tree = Tree(stack, name)
    network_problem = nftables_usable()
    disk = _can_mount()
    if network_problem:
        log.warning("network cuts are skipped: %s", network_problem)
    tree.prepare(with_tmpfs=disk)
    faults = Faults(tree, rng, disk=disk, network=network_problem is None)
    account = Account()
    seconds = settings.minutes * 60
    started = time.monotonic()
    stop = threading.Event()
    tree.start_all()
    tree.wait_ready()
    supervisor = tree.supervise(stop)
    writers = transfers.Writers(tree.primary_dsn, count=settings.writers, seconds=seconds + 120, pause=0.02, groups=2)
    expected = {s: (transfers.ACCOUNTS, transfers.TOTAL) for s in tree.tier1}
    expected |= {s: (SHARE, SHARE * transfers.OPENING) for s in tree.tier2}
    sampler = transfers.Sampler(
        {s: tree.replica_dsn(s) for s in tree.tier1 + tree.tier2}, expected, seconds=seconds + CATCH_UP_SECONDS + 120
    )
    pgbench = Pgbench(tree, settings.pgbench_rate, seconds + 60)
    marks = Marks(tree, started)
    writers.start()
    sampler.start()
    pgbench.thread.start()
    marks.thread.start()
    lanes = [
        threading.Thread(
            target=_lane,
            args=(faults, deck(settings.per_kind, random.Random(rng.random()), kinds), started, seconds, account, marks),
            name=f"chaos-{lane}",
            daemon=True,
        )
        for lane, kinds in LANES.items()
    ]
    try:
        for lane in lanes:
            lane.start()
        for lane in lanes:
            lane.join(timeout=seconds + 600)
    finally:
        faults.heal()
        pgbench.stop.set()
        writers.finish()
        pgbench.thread.join(timeout=90)
    try:
        last = marks.write()
        caught_up = marks.wait_everywhere(last, CATCH_UP_SECONDS)
        marks.stop.set()
        marks.thread.join(timeout=30)
        sampler.finish()
        stop.set()
        supervisor.join(timeout=10)
        account.seconds = round(time.monotonic() - started, 1)
        account.samples, account.violations = sampler.samples, list(sampler.violations)
        account.transactions = len(writers.committed)
        account.stopped_by_themselves = list(tree.stopped_by_themselves)
        if not caught_up:
            account.lost.append(f"the replicas did not apply the last mark within {CATCH_UP_SECONDS}s")
        check.final(tree, writers.committed, account)
    finally:
        stop.set()
        tree.stop_all()
        if disk:
            with contextlib.suppress(Exception):
                tree.unmount()
    return account


def _lane(faults: Faults, cards: list[str], started: float, seconds: float, account: Account, marks: Marks) -> None:
    """Inject ``cards`` one after another, spread over the run; stop at its end, whatever is left."""
    deadline = started + seconds
    for index, kind in enumerate(cards):
        now = time.monotonic()
        remaining = cards[index:]
        room = deadline - now - sum(COST[k] for k in remaining)
        if now >= deadline:
            log.warning("the run ended with %d faults of this lane not injected", len(remaining))
            return
        time.sleep(faults.rng.uniform(0, 2 * max(room, 0) / len(remaining)))
        began = time.monotonic() - started
        try:
            target = faults.inject(kind)
        except Exception as exc:  # a fault that cannot be injected is reported, and the run goes on
            log.error("fault %s could not be injected: %s", kind, exc)
            faults.heal()
            continue
        fault = Injected(kind, target, round(began, 2), round(time.monotonic() - started, 2))
        account.faults.append(fault)
        log.info("fault %s on %s, %.1fs", kind, target, fault.ended - fault.started)
        marks.write(fault)


def _close(conns: dict[str, psycopg.Connection | None]) -> None:
    for conn in conns.values():
        if conn is not None:
            conn.close()


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None
