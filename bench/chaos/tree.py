"""The chaos run's replication tree, its databases and its daemons, and a supervisor that restarts a daemon
the way systemd's ``Restart=always`` would.

Three levels: the source publishes to Kafka cluster ``main``; the ``hq`` distributor routes everything to
route ``all`` (main), read by subscribers t1a and t1b; the ``region`` distributor routes a filtered share of
``all`` (accounts 1-10 and their transfers, no pgbench tables) to route ``region`` in Kafka cluster
``second``, read by t2a and t2b. t2b's database lives in a tablespace on a small tmpfs (the disk that fills).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from devstack import processes, transfers
from devstack.demo import daemon_argv, reset_streams, start_daemon, write_config
from devstack.postgres import bin_dir
from devstack.stack import Stack
from pgfanout.core.config import Config, load_config

log = logging.getLogger(__name__)
SHARE = 10  # accounts 1..SHARE are the second tier's share
PGBENCH_TABLES = ["public.pgbench_accounts", "public.pgbench_branches", "public.pgbench_tellers"]
MARKS = "public.chaos_marks"
TMPFS_MB = 48


@dataclass
class Tree:
    stack: Stack
    name: str = "chaos"
    down: set[str] = field(default_factory=set)  # daemons a fault stopped on purpose: not the supervisor's to restart
    stopped_by_themselves: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.tier1 = [f"{self.name}.t1a", f"{self.name}.t1b"]
        self.tier2 = [f"{self.name}.t2a", f"{self.name}.t2b"]
        self.small = self.tier2[1]  # on the tmpfs tablespace
        self.distributors = [f"{self.name}.hq", f"{self.name}.region"]
        self.roles = ["agent", *self.distributors, *self.tier1, *self.tier2]
        self.tmpfs = self.stack.home / "chaos-tmpfs"
        self.config_path = self.stack.home / f"{self.name}.yaml"
        write_config(self.config_path, self._data())
        self.config: Config = load_config(self.config_path)

    def _data(self) -> dict:
        primary, replica = self.stack.postgres("primary"), self.stack.postgres("replica")
        share = {
            "public.accounts": {"where": f"id <= {SHARE}"},
            "public.transfers": {"where": f"from_id <= {SHARE}"},
            MARKS: {},
        }
        return {
            "kafka": {"main": self.stack.kafka("main").client_settings(), "second": self.stack.kafka("second").client_settings()},
            "sources": {
                self.name: {
                    **primary.database(f"{self.name}_primary"),
                    "kafka": "main",
                    "tables": [*transfers.TABLES, MARKS, *PGBENCH_TABLES],
                }
            },
            "routes": {
                f"{self.name}.all": {"upstream": self.name, "kafka": "main"},
                f"{self.name}.region": {"upstream": f"{self.name}.all", "kafka": "second", "tables": share},
            },
            "distributors": {
                f"{self.name}.hq": {"routes": [f"{self.name}.all"]},
                f"{self.name}.region": {"routes": [f"{self.name}.region"]},
            },
            "subscribers": {
                **{s: {"route": f"{self.name}.all", **replica.database(self.database(s))} for s in self.tier1},
                **{s: {"route": f"{self.name}.region", **replica.database(self.database(s))} for s in self.tier2},
            },
        }

    @staticmethod
    def database(subscriber: str) -> str:
        return subscriber.replace(".", "_")

    @property
    def primary_dsn(self) -> str:
        return self.stack.postgres("primary").admin_dsn(f"{self.name}_primary")

    def replica_dsn(self, subscriber: str) -> str:
        return self.stack.postgres("replica").admin_dsn(self.database(subscriber))

    # -- setting up ----------------------------------------------------------------------

    def prepare(self, with_tmpfs: bool) -> None:
        """Fresh databases and topics, the workload's tables with data, capture, and every replica copied."""
        reset_streams(self.config)
        primary, replica = self.stack.postgres("primary"), self.stack.postgres("replica")
        primary.create_database(f"{self.name}_primary", drop_first=True)
        for subscriber in [*self.tier1, *self.tier2]:
            replica.create_database(self.database(subscriber), drop_first=True)
        if with_tmpfs:
            self._small_disk()
        with psycopg.connect(self.primary_dsn, autocommit=True) as conn:
            transfers.create(conn)
            transfers.seed(conn)
            conn.execute(f"CREATE TABLE {MARKS} (id integer PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
        self.pgbench("-i", "-s", "1", "-q", "--foreign-keys")
        self.command("agent", "install", "--source", self.name)
        for subscriber in [*self.tier1, *self.tier2]:
            self.command("subscriber", "init", subscriber)

    def _small_disk(self) -> None:
        """t2b's database on a tmpfs of TMPFS_MB, so that its disk can fill."""
        replica = self.stack.postgres("replica")
        self.unmount()
        self.tmpfs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m,mode=0755", "tmpfs", str(self.tmpfs)], check=True)
        location = self.tmpfs / "tablespace"
        location.mkdir()
        if os.geteuid() == 0:
            subprocess.run(["chown", "postgres:postgres", str(location)], check=True)
        small = self.database(self.small)
        with psycopg.connect(replica.admin_dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(small)))
            conn.execute("DROP TABLESPACE IF EXISTS chaos_small")
            conn.execute(sql.SQL("CREATE TABLESPACE chaos_small LOCATION {}").format(sql.Literal(str(location))))
            conn.execute(sql.SQL("CREATE DATABASE {} TABLESPACE chaos_small").format(sql.Identifier(small)))

    def unmount(self) -> None:
        """Drop what lives on the tmpfs and unmount it (after a run, or what an interrupted one left)."""
        if not self.tmpfs.is_mount():
            return
        replica = self.stack.postgres("replica")
        if replica.pid():
            with psycopg.connect(replica.admin_dsn(), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.database(self.small))))
                conn.execute("DROP TABLESPACE IF EXISTS chaos_small")
        subprocess.run(["umount", str(self.tmpfs)], check=True)

    def pgbench(self, *arguments: str, seconds: float | None = None) -> subprocess.CompletedProcess:
        primary = self.stack.postgres("primary")
        argv = [str(bin_dir() / "pgbench"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres", *arguments]
        return subprocess.run(
            [*argv, f"{self.name}_primary"], capture_output=True, text=True, timeout=seconds, check=seconds is None
        )

    def command(self, *argv: str, timeout: float = 300) -> None:
        done = subprocess.run(daemon_argv(self.config_path, *argv), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"pgfanout {' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    # -- daemons -------------------------------------------------------------------------

    def argv(self, role: str) -> list[str]:
        if role == "agent":
            return daemon_argv(self.config_path, "agent", "run", "--source", self.name)
        if role in self.distributors:
            return daemon_argv(self.config_path, "distributor", "run", role)
        return daemon_argv(self.config_path, "subscriber", "run", role)

    def pid_file(self, role: str) -> Path:
        return self.stack.run_dir / f"{self.name}-{role}.pid"

    def log_file(self, role: str) -> Path:
        return self.stack.log_dir / f"{self.name}-{role}.log"

    def pid(self, role: str) -> int | None:
        return processes.running(self.pid_file(role), "pgfanout")

    def start(self, role: str) -> None:
        with self.lock:
            self.down.discard(role)
            start_daemon(self.stack, f"{self.name}-{role}", self.argv(role))

    def kill(self, role: str) -> bool:
        """SIGKILL a daemon that runs; it stays down until ``start``."""
        with self.lock:
            pid = self.pid(role)
            if pid is None:
                return False
            self.down.add(role)
            processes.stop(pid, signal.SIGKILL)
            return True

    def start_all(self) -> None:
        for role in self.roles:
            self.start(role)

    def stop_all(self) -> None:
        for role in self.roles:
            pid = self.pid(role)
            if pid:
                os.kill(pid, signal.SIGCONT)  # a paused daemon cannot stop
                processes.stop(pid)

    def supervise(self, stop: threading.Event) -> threading.Thread:
        """Restart, every half second, a daemon that stopped without a fault stopping it (and note it)."""

        def watch() -> None:
            while not stop.wait(0.5):
                for role in self.roles:
                    with self.lock:
                        if role in self.down or self.pid(role) is not None:
                            continue
                    tail = self.log_file(role).read_text(errors="replace").splitlines()[-3:]
                    self.stopped_by_themselves.append(f"{role} stopped by itself: {' / '.join(tail)}")
                    log.warning("%s stopped by itself; restarting it", role)
                    self.start(role)

        thread = threading.Thread(target=watch, daemon=True, name="chaos-supervisor")
        thread.start()
        return thread

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        for role in self.roles:
            while "ready" not in self.log_file(role).read_text(errors="replace"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{role} is not ready after {timeout:.0f}s: {self.log_file(role)}")
                time.sleep(0.2)
