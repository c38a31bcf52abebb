"""A real Apache Kafka broker in KRaft mode, its jars resolved from Maven Central by kafka/pom.xml."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from devstack import processes
from pgfanout.core.errors import LocalStackError

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
POM = REPO / "kafka" / "pom.xml"
MAIN_CLASS = "kafka.Kafka"


def jar_cache() -> Path:
    """Jars are cached per pom content, outside the state directory, so `--purge` keeps them."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    base = Path(os.environ.get("PGFANOUT_CACHE", Path.home() / ".cache" / "pgfanout"))
    return base / f"kafka-jars-{digest}"


def ensure_jars() -> Path:
    target = jar_cache()
    if (target / ".complete").exists():
        return target
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise LocalStackError("Java 17 and Maven are needed to fetch Kafka: apt-get install openjdk-17-jre-headless maven")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    log.info("resolving Kafka jars from Maven Central into %s", target)
    result = subprocess.run(
        [
            "mvn",
            "-B",
            "-q",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if result.returncode != 0:
        raise LocalStackError(f"Maven could not resolve the Kafka jars:\n{result.stdout[-3000:]}")
    (staging / ".complete").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _cluster_id() -> str:
    raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    return "A" + raw[1:] if raw.startswith("-") else raw


@dataclass
class KafkaNode:
    name: str
    directory: Path
    port: int
    controller_port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.directory / "kafka.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "kafka.log"

    def pid(self) -> int | None:
        return processes.running(self.pid_file, MAIN_CLASS)

    def _properties(self) -> str:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.directory / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "message.max.bytes": str(64 * 1024 * 1024),
            "log.retention.hours": "168",
        }
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def format(self, jars: Path) -> None:
        if (self.directory / "data" / "meta.properties").exists():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "server.properties").write_text(self._properties())
        result = subprocess.run(
            [
                "java",
                "-cp",
                f"{jars}/*",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                _cluster_id(),
                "-c",
                str(self.directory / "server.properties"),
                "--ignore-formatted",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if result.returncode != 0:
            raise LocalStackError(f"Kafka storage format failed for {self.name}:\n{result.stdout[-3000:]}")

    def start(self, jars: Path) -> None:
        if self.pid():
            return
        self.format(jars)
        argv = [
            "java",
            "-Xms256m",
            "-Xmx768m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.directory}",
            "-cp",
            f"{jars}/*",
            MAIN_CLASS,
            str(self.directory / "server.properties"),
        ]
        self.wait_ready(processes.spawn(argv, self.log_file, self.pid_file))

    def wait_ready(self, pid: int, timeout: float = 90.0) -> None:
        from kafka.errors import KafkaError

        from kafka import KafkaAdminClient

        deadline = time.monotonic() + timeout
        while True:
            if not processes.alive(pid):
                raise LocalStackError(f"Kafka {self.name} exited while starting; the end of {self.log_file}:\n{self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000, bootstrap_timeout_ms=3000)
                try:
                    admin.describe_cluster()
                    return
                finally:
                    admin.close()
            except (OSError, KafkaError) as exc:
                if time.monotonic() > deadline:
                    raise LocalStackError(f"Kafka {self.name} does not answer on {self.bootstrap}: {exc}") from exc
                time.sleep(0.5)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(unreadable: {exc})"

    def stop(self, timeout: float = 60.0) -> None:
        pid = self.pid()
        if pid:
            processes.stop(pid, timeout=timeout)
