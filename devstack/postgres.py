"""Throwaway PostgreSQL clusters from Debian's packages, created with initdb on loopback ports."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from devstack import processes
from devstack.tls import PG_PASSWORD_ENV, Credentials, write_file
from pgfanout.core.errors import LocalStackError

log = logging.getLogger(__name__)
SERVICE_USER = "postgres"  # initdb and postgres refuse to run as root


def bin_dir() -> Path:
    override = os.environ.get("PGFANOUT_PG_BIN")
    if override:
        return Path(override)
    root = Path("/usr/lib/postgresql")
    versions = sorted((p for p in root.glob("*/bin/initdb")), key=lambda p: int(p.parent.parent.name)) if root.exists() else []
    if not versions or int(versions[-1].parent.parent.name) < 15:
        raise LocalStackError(
            "PostgreSQL 15 or newer server binaries not found under /usr/lib/postgresql; "
            "install them with `apt-get install postgresql` (make demo does this when run as root)"
        )
    return versions[-1].parent


def _as_service_user(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", SERVICE_USER, "--", *argv]
    return argv


def _give_to_service_user(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVICE_USER)
        shutil.chown(path, entry.pw_uid, entry.pw_gid)


def service_user_reaches(path: Path) -> bool:
    """Whether the server's user can get to ``path`` (or where it would be created): a checkout in a private
    home (mode 0700) is out of its reach, and initdb and postgres run as that user when pgfanout runs as root."""
    if os.geteuid() != 0:
        return True
    existing = path
    while not existing.exists():
        existing = existing.parent
    return subprocess.run(_as_service_user(["test", "-x", str(existing)]), check=False).returncode == 0


@dataclass
class PgCluster:
    name: str
    directory: Path
    port: int
    tls: Credentials | None = None  # TLS and scram-sha-256 only, verified against the stack's CA, when set

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "postgres.log"

    def dsn(self, dbname: str = "postgres") -> str:
        """A connection string without a password (a configuration's ``dsn``)."""
        plain = f"host=127.0.0.1 port={self.port} dbname={dbname} user=postgres"
        return plain if self.tls is None else f"{plain} sslmode=verify-full sslrootcert={self.tls.ca}"

    def admin_dsn(self, dbname: str = "postgres") -> str:
        """A connection string whose password libpq reads from the stack's passfile (when secured)."""
        return self.dsn(dbname) if self.tls is None else f"{self.dsn(dbname)} passfile={self.tls.pgpass}"

    def database(self, dbname: str) -> dict[str, str]:
        """A database of this cluster as a pgfanout configuration names it: the password from the environment."""
        return {"dsn": self.dsn(dbname)} | ({} if self.tls is None else {"password_env": PG_PASSWORD_ENV})

    def pid(self) -> int | None:
        return processes.running(self.data / "postmaster.pid", "postgres")

    def init(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        _give_to_service_user(self.directory)
        authentication = ["--auth=trust"]
        password_file = self.directory / "initdb.password"
        if self.tls is not None:
            self._private_copy(self.tls.postgres_password_file, password_file)
            authentication = ["--auth=scram-sha-256", f"--pwfile={password_file}"]
        try:
            result = subprocess.run(
                _as_service_user(
                    [
                        str(bin_dir() / "initdb"),
                        "-D",
                        str(self.data),
                        "-U",
                        "postgres",
                        *authentication,
                        "-E",
                        "UTF8",
                        "--locale=C.UTF-8",
                        "--no-sync",
                    ]
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        finally:
            password_file.unlink(missing_ok=True)
        if result.returncode != 0:
            said = "\n".join("    " + line for line in result.stderr.strip().splitlines()) or "    (nothing)"
            raise LocalStackError(
                f"initdb could not create PostgreSQL cluster {self.name} in {self.data} (exit status "
                f"{result.returncode}); it said:\n{said}\nFix what it says (or remove {self.directory}, e.g. with "
                "`pgfanout local down --purge`), then start the local stack again"
            )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.directory}'",
            "max_connections": "100",
            "shared_buffers": "128MB",
            "max_wal_size": "2GB",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        hba = "local all all trust\nhost all all 127.0.0.1/32 trust\n"
        if self.tls is not None:
            self._private_copy(self.tls.certificate, self.data / "server.crt")
            self._private_copy(self.tls.key, self.data / "server.key")
            settings |= {"ssl": "on", "ssl_min_protocol_version": "'TLSv1.2'", "password_encryption": "'scram-sha-256'"}
            hba = (
                "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\nhostnossl all all 127.0.0.1/32 reject\n"
            )
        with open(self.data / "postgresql.auto.conf", "a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        (self.data / "pg_hba.conf").write_text(hba)
        log.info("initialized PostgreSQL cluster %s in %s", self.name, self.data)

    def _private_copy(self, source: Path, target: Path) -> None:
        """A copy only the server's user can read (PostgreSQL refuses a key others can read)."""
        write_file(target, source.read_bytes())
        _give_to_service_user(target)

    def start(self) -> None:
        if self.pid():
            return
        _give_to_service_user(self.directory)
        result = subprocess.run(
            _as_service_user(
                [str(bin_dir() / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_file), "-w", "-t", "60", "start"]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if result.returncode != 0:
            tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else result.stderr
            raise LocalStackError(f"PostgreSQL cluster {self.name} did not start on port {self.port}:\n{tail}")
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.admin_dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise LocalStackError(
                        f"PostgreSQL cluster {self.name} does not answer on 127.0.0.1:{self.port}: {exc}"
                    ) from exc
                time.sleep(0.2)

    def stop(self, mode: str = "fast") -> None:
        pid = self.pid()
        if pid:
            import signal

            sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
            processes.stop(pid, sig, timeout=60)

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_database(self, name: str, drop_first: bool = False) -> None:
        from psycopg import sql

        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            if drop_first:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
