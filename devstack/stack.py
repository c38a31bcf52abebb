"""`pgfanout local up|down|status`: the whole stack on one machine, under one state directory.

Ports are picked free once and remembered in ``stack.json``, so a second ``up`` reuses
them and is fast. ``down`` stops only processes whose PID files we wrote.

The PostgreSQL clusters live in the state directory too, unless the server's user cannot
reach it (a checkout in a private home, run as root): then they live under
``/var/lib/pgfanout``, in a directory named after the state directory, remembered in
``stack.json`` and shown by ``local status``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

from devstack import processes, tls
from devstack.broker import KafkaNode, ensure_jars
from devstack.postgres import PgCluster, service_user_reaches
from devstack.tls import Credentials
from pgfanout.core.errors import LocalStackError

log = logging.getLogger(__name__)
PG_CLUSTERS = ("primary", "replica")
KAFKA_CLUSTERS = ("main", "second")
SHARED_STATE = Path("/var/lib/pgfanout")  # for clusters the server's user could not reach in the state directory


def default_home() -> Path:
    return Path(os.environ.get("PGFANOUT_HOME", ".pgfanout")).resolve()


def ephemeral_ports() -> tuple[int, int]:
    """The range the kernel picks outgoing connections' source ports from."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A free loopback port below the ephemeral range. A port the kernel handed out (bind to port 0) is in
    that range, and while its server is stopped (the fault tests stop Kafka for a minute) any client's
    outgoing connection may get it as its source port: the server then cannot start again."""
    low = ephemeral_ports()[0]
    for _ in range(500):
        port = random.randint(20000, low - 1) if low > 20001 else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise LocalStackError("no free port found below the ephemeral port range for the local stack")


def clusters_home(home: Path) -> Path:
    """Where the PostgreSQL clusters of the stack whose state directory is ``home`` go."""
    inside = home / "pg"
    if service_user_reaches(inside):
        return inside
    digest = hashlib.sha1(str(home).encode()).hexdigest()[:12]
    return SHARED_STATE / f"{home.parent.name or 'root'}-{digest}" / "pg"


@dataclass
class Stack:
    home: Path
    ports: dict[str, int] = field(default_factory=dict)
    pg_home: Path | None = None  # decided on first use, then remembered
    secure: bool = False  # TLS and passwords on every link (local up --secure), decided when the stack is made

    @classmethod
    def load(cls, home: Path | None = None) -> Stack:
        home = home or default_home()
        state = home / "stack.json"
        saved = json.loads(state.read_text()) if state.exists() else {}
        pg_home = Path(saved["pg_home"]) if saved.get("pg_home") else None
        return cls(home, saved.get("ports", {}), pg_home, bool(saved.get("secure")))

    def _save(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        saved = {"ports": self.ports, "secure": self.secure} | ({"pg_home": str(self.pg_home)} if self.pg_home else {})
        (self.home / "stack.json").write_text(json.dumps(saved, indent=2) + "\n")

    def port(self, key: str) -> int:
        """A free loopback port for ``key``, the same one each time (remembered in stack.json)."""
        if key not in self.ports:
            taken = set(self.ports.values())
            port = free_port()
            while port in taken:
                port = free_port()
            self.ports[key] = port
            self._save()
        return self.ports[key]

    @property
    def clusters(self) -> Path:
        """Where the PostgreSQL clusters live (see the module's docstring)."""
        if self.pg_home is None:
            self.pg_home = clusters_home(self.home)
            self._save()
        return self.pg_home

    @property
    def credentials(self) -> Credentials | None:
        """The secured stack's certificates and passwords (docs/security.md); None for a plain stack."""
        return Credentials(self.home / "tls") if self.secure else None

    def postgres(self, name: str) -> PgCluster:
        return PgCluster(name, self.clusters / name, self.port(f"pg.{name}"), self.credentials)

    def kafka(self, name: str) -> KafkaNode:
        return KafkaNode(
            name, self.home / "kafka" / name, self.port(f"kafka.{name}"), self.port(f"kafka.{name}.controller"), self.credentials
        )

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    def up(self, kafka_clusters: int = 1, secure: bool = False) -> None:
        made = any(key.startswith(("pg.", "kafka.")) for key in self.ports)
        if made and secure != self.secure:
            raise LocalStackError(
                f"the local stack in {self.home} was made {'with' if self.secure else 'without'} --secure; remove it "
                "first (`local down --purge`) to make it the other way"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / ".gitignore").write_text("*\n")
        os.chmod(self.home, 0o755)
        if secure:
            self.secure = True
            self._save()
            tls.ensure(self.home / "tls")
        jars = ensure_jars()
        for name in PG_CLUSTERS:
            cluster = self.postgres(name)
            cluster.init()
            cluster.start()
        for name in KAFKA_CLUSTERS[:kafka_clusters]:
            self.kafka(name).start(jars)

    def daemons(self) -> dict[str, int]:
        found = {}
        for pid_file in sorted(self.run_dir.glob("*.pid")) if self.run_dir.exists() else []:
            pid = processes.running(pid_file, "pgfanout")
            if pid:
                found[pid_file.stem] = pid
        return found

    def stop_daemons(self) -> None:
        daemons = self.daemons()
        for name, pid in daemons.items():
            log.info("stopping %s (pid %d)", name, pid)
        processes.stop_all(daemons.values())
        for pid_file in self.run_dir.glob("*.pid") if self.run_dir.exists() else []:
            pid_file.unlink()

    def down(self, purge: bool = False) -> None:
        self.stop_daemons()
        brokers = [self.kafka(name).pid() for name in KAFKA_CLUSTERS if f"kafka.{name}" in self.ports]
        clusters = [self.postgres(name).pid() for name in PG_CLUSTERS if f"pg.{name}" in self.ports]
        # Data about to be removed needs no clean shutdown: no controlled broker shutdown, no checkpoint.
        processes.stop_all((pid for pid in brokers if pid), signal.SIGKILL if purge else signal.SIGTERM, timeout=60)
        processes.stop_all((pid for pid in clusters if pid), signal.SIGQUIT if purge else signal.SIGINT, timeout=60)
        processes.reap_exited()
        if purge:
            if self.pg_home is not None and not self.pg_home.is_relative_to(self.home):
                shutil.rmtree(self.pg_home.parent, ignore_errors=True)
            shutil.rmtree(self.home, ignore_errors=True)

    def status_lines(self) -> list[str]:
        lines = [f"state directory: {self.home}"]
        if self.credentials is not None:
            lines.append(
                f"secured: Kafka SASL_SSL (SCRAM-SHA-512), PostgreSQL TLS and scram-sha-256; CA {self.credentials.ca}; "
                f"passwords in {self.credentials.directory} (export them: `python -m devstack local env`)"
            )
        if self.pg_home is not None and not self.pg_home.is_relative_to(self.home):
            lines.append(f"PostgreSQL data: {self.pg_home} (the server's user cannot reach the state directory)")
        for name in PG_CLUSTERS:
            if f"pg.{name}" in self.ports:
                pg = self.postgres(name)
                state = f"running (pid {pg.pid()})" if pg.pid() else "stopped"
                lines.append(f"postgres {name:<8} 127.0.0.1:{pg.port:<6} {state}")
        for name in KAFKA_CLUSTERS:
            if f"kafka.{name}" in self.ports:
                node = self.kafka(name)
                state = f"running (pid {node.pid()})" if node.pid() else "stopped"
                lines.append(f"kafka    {name:<8} {node.bootstrap:<16} {state}")
        for name, pid in self.daemons().items():
            lines.append(f"daemon   {name:<24} running (pid {pid}), log {self.log_dir / (name + '.log')}")
        return lines
