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
from devstack import tls as tls_env
from devstack.tls import KAFKA_USER, Credentials
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


def _quoted(argument: str) -> str:
    """An argument of a java @file: quoted, so that spaces and brackets stay in one argument."""
    return '"' + argument.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _cluster_id() -> str:
    raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    return "A" + raw[1:] if raw.startswith("-") else raw


@dataclass
class KafkaNode:
    name: str
    directory: Path
    port: int
    controller_port: int
    tls: Credentials | None = None  # SASL/SCRAM-SHA-512 over TLS on the client port when set

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

    def client_settings(self) -> dict[str, object]:
        """This broker as a ``kafka:`` entry of a pgfanout configuration."""
        settings: dict[str, object] = {"bootstrap_servers": [self.bootstrap]}
        if self.tls is not None:
            settings |= {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": KAFKA_USER,
                "sasl_password_env": tls_env.KAFKA_PASSWORD_ENV,
                "ssl_cafile": str(self.tls.ca),
            }
        return settings

    def _listener_settings(self) -> dict[str, str]:
        if self.tls is None:
            return {
                "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
                "inter.broker.listener.name": "PLAINTEXT",
                "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            }
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{KAFKA_USER}" password="{self.tls.kafka_password()}";'
        )
        return {
            # the controller's port takes no client; encrypted too (KRaft controllers take no SCRAM)
            "listeners": f"SASL_SSL://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SSL",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.directory / "keystore.pem"),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.tls.ca),
            "ssl.endpoint.identification.algorithm": "https",
        }

    def _properties(self) -> str:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            **self._listener_settings(),
            "controller.listener.names": "CONTROLLER",
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
        tls_env.write_file(self.directory / "server.properties", self._properties().encode())
        arguments = [
            "kafka.tools.StorageTool",
            "format",
            "-t",
            _cluster_id(),
            "-c",
            str(self.directory / "server.properties"),
            "--ignore-formatted",
        ]
        if self.tls is not None:
            tls_env.write_file(
                self.directory / "keystore.pem", (self.tls.key.read_text() + self.tls.certificate.read_text()).encode()
            )
            # the user's SCRAM credential is stored at format time; its password goes through a java @file,
            # never through the command line every process can read
            arguments += ["--add-scram", f"SCRAM-SHA-512=[name={KAFKA_USER},password={self.tls.kafka_password()}]"]
        argfile = self.directory / "format.args"
        tls_env.write_file(argfile, ("\n".join(_quoted(argument) for argument in arguments) + "\n").encode())
        try:
            result = subprocess.run(
                ["java", "-cp", f"{jars}/*", f"@{argfile}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        finally:
            argfile.unlink()
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
        from pgfanout.runtime.kafka import build

        deadline = time.monotonic() + timeout
        while True:
            if not processes.alive(pid):
                raise LocalStackError(f"Kafka {self.name} exited while starting; the end of {self.log_file}:\n{self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                admin = build(KafkaAdminClient, **self._admin_options(), request_timeout_ms=5000, bootstrap_timeout_ms=3000)
                try:
                    admin.describe_cluster()
                    return
                finally:
                    admin.close()
            except (OSError, KafkaError) as exc:
                if time.monotonic() > deadline:
                    raise LocalStackError(f"Kafka {self.name} does not answer on {self.bootstrap}: {exc}") from exc
                time.sleep(0.5)

    def _admin_options(self) -> dict[str, object]:
        if self.tls is None:
            return {"bootstrap_servers": self.bootstrap}
        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": KAFKA_USER,
            "sasl_plain_password": self.tls.kafka_password(),
            "ssl_cafile": str(self.tls.ca),
        }

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(unreadable: {exc})"

    def stop(self, timeout: float = 60.0) -> None:
        pid = self.pid()
        if pid:
            processes.stop(pid, timeout=timeout)
