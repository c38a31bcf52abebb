"""The pipeline over a secured stack (`local up --secure`): Kafka with SASL/SCRAM-SHA-512 over TLS, PostgreSQL
with TLS (verify-full against the stack's CA) and scram-sha-256; no password in any command line, log or error."""

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import yaml

from devstack.broker import ensure_jars
from devstack.sample import run_workload
from devstack.stack import Stack, free_port
from pgfanout.core.config import KafkaCluster
from tests.integration.conftest import REPO, TEST_HOME
from tests.integration.pipeline import Pipeline

PROBE = (
    "import json, sys\n"
    "from pgfanout.core.config import KafkaCluster\n"
    "from pgfanout.runtime import kafka\n"
    "kafka.ensure_topic(KafkaCluster(**json.loads(sys.argv[1])), 'secured-probe', 1024)\n"
)


def kafka_answers(cluster: KafkaCluster, password: str | None = None) -> subprocess.CompletedProcess:
    """Whether a pgfanout Kafka client with these settings gets an answer, tried in a process of its own: a
    kafka-python client refused at bootstrap leaves its sockets to a later garbage collection."""
    environment = dict(os.environ)
    if password is not None:
        environment[cluster.sasl_password_env] = password
    return subprocess.run(
        [sys.executable, "-c", PROBE, cluster.model_dump_json()], env=environment, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def secure_stack():
    home = TEST_HOME.with_name(TEST_HOME.name + "-secure")
    Stack.load(home).down(purge=True)
    stack = Stack.load(home)
    stack.up(kafka_clusters=1, secure=True)
    yield stack
    stack.down(purge=os.environ.get("PGFANOUT_KEEP_TEST_STACK") != "1")


def command_lines() -> dict[int, bytes]:
    lines = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                lines[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue  # ended meanwhile
    return lines


def logs_of(stack: Stack) -> list[Path]:
    """Every log the stack's servers and daemons write (not their configuration files)."""
    found = list(stack.log_dir.glob("*.log"))
    for name in ("primary", "replica"):
        found.append(stack.postgres(name).log_file)
    kafka = stack.kafka("main").directory
    found += [p for p in kafka.iterdir() if p.is_file() and (p.suffix == ".log" or ".log." in p.name)]
    return found


def test_the_pipeline_runs_over_tls_and_no_secret_shows_in_a_command_line_log_or_error(secure_stack, monkeypatch):
    credentials = secure_stack.credentials
    secrets = credentials.environment()
    for variable, value in secrets.items():
        monkeypatch.setenv(variable, value)
    pipeline = Pipeline(secure_stack, "secured")
    kafka = pipeline.config.kafka["local"]
    assert kafka.security_protocol == "SASL_SSL" and kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert "sslmode=verify-full" in pipeline.config.sources[pipeline.source].dsn
    try:
        pipeline.prepare()
        pipeline.seed()
        pipeline.start()
        stats = run_workload(pipeline.primary_dsn, seconds=8, writers=2, max_transactions=400, seed_value=29)
        assert stats.committed > 100
        pipeline.wait_caught_up(timeout=120)
        equal, lines = pipeline.proof()
        assert equal, "\n".join(lines)

        # every daemon's PostgreSQL session is encrypted
        with pipeline.primary() as conn:
            agent_ssl = conn.execute(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                "WHERE a.application_name LIKE 'pgfanout-agent%'"
            ).fetchall()
        assert agent_ssl and all(row[0] for row in agent_ssl), agent_ssl
        with pipeline.replica(pipeline.subscribers[0]) as conn:
            subscriber_ssl = conn.execute(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                "WHERE a.application_name LIKE 'pgfanout-subscriber%'"
            ).fetchall()
        assert subscriber_ssl and all(row[0] for row in subscriber_ssl), subscriber_ssl

        # the servers refuse what is not secured
        primary = secure_stack.postgres("primary")
        with pytest.raises(psycopg.OperationalError, match="rejects connection"):
            psycopg.connect(
                f"host=127.0.0.1 port={primary.port} dbname=postgres user=postgres sslmode=disable", connect_timeout=5
            )
        plain = kafka.model_copy(
            update={"security_protocol": "PLAINTEXT", "sasl_mechanism": None, "sasl_username": None, "sasl_password_env": None}
        )
        refused = kafka_answers(plain)
        assert refused.returncode != 0 and "KafkaUnavailable" in refused.stderr, refused.stderr[-2000:]

        # a wrong password: the error names the server, never the password given
        wrong = "wrong-password-" + secrets["PGFANOUT_PG_PASSWORD"][:6]
        monkeypatch.setenv("PGFANOUT_PG_PASSWORD", wrong)
        refused = pipeline.command("status", timeout=120)
        monkeypatch.setenv("PGFANOUT_PG_PASSWORD", secrets["PGFANOUT_PG_PASSWORD"])
        said = refused.stdout + refused.stderr
        assert "password authentication failed" in said, said
        assert wrong not in said and secrets["PGFANOUT_PG_PASSWORD"] not in said

        # no secret in any process's command line while everything runs...
        daemons = [pipeline.pid(role) for role in ("agent", "distributor", *pipeline.subscribers)]
        assert all(daemons), daemons
        environment = Path(f"/proc/{daemons[0]}/environ").read_bytes()  # where the daemons do take them from
        assert all(value.encode() in environment for value in secrets.values())
        lines = command_lines()
        assert set(daemons) <= set(lines)
        assert secure_stack.kafka("main").pid() in lines and primary.pid() in lines
        for pid, line in lines.items():
            for variable, value in secrets.items():
                assert value.encode() not in line, f"{variable} shows in the command line of process {pid}"
    finally:
        pipeline.stop_all()
    # ...nor in any log
    logs = logs_of(secure_stack)
    assert len(logs) >= 6, logs
    for log in logs:
        text = log.read_bytes()
        for variable, value in secrets.items():
            assert value.encode() not in text, f"{variable} shows in {log}"


def test_the_compose_scripts_make_certificates_and_start_a_secured_broker(tmp_path):
    """docker-compose.yml's certs service and Kafka entrypoint, run here on loopback with the jars from Maven."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    certs = tmp_path / "certs"
    subprocess.run(["sh", str(REPO / "docker/secure/make-certs.sh")], env={**os.environ, "CERTS_DIR": str(certs)}, check=True)
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(certs / "ca.crt"), str(certs / "server.crt")], capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr

    port, controller = free_port(), free_port()
    password = "compose-" + os.urandom(9).hex()
    settings = {k: str(v) for k, v in compose["services"]["kafka"]["environment"].items() if k.startswith("KAFKA_")}
    settings = {k: v.replace("/certs/", f"{certs}/") for k, v in settings.items()}
    settings |= {
        "KAFKA_LISTENERS": f"SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
        "KAFKA_ADVERTISED_LISTENERS": f"SASL_SSL://127.0.0.1:{port}",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": f"1@127.0.0.1:{controller}",
    }
    state = tmp_path / "kafka"
    environment = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **settings}
    environment |= {"KAFKA_LIBS": str(ensure_jars()), "KAFKA_STATE_DIR": str(state), "PGFANOUT_KAFKA_PASSWORD": password}
    script = compose["services"]["kafka"]["entrypoint"][-1].replace("/pgfanout/", str(REPO / "docker/secure") + "/")
    with open(tmp_path / "kafka.log", "wb") as log:
        broker = subprocess.Popen(["bash", script], env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        config = yaml.safe_load((REPO / "docker/pgfanout.yaml").read_text())["kafka"]["main"]
        cluster = KafkaCluster(**config | {"bootstrap_servers": [f"127.0.0.1:{port}"], "ssl_cafile": str(certs / "ca.crt")})
        deadline = time.monotonic() + 90
        while (probe := kafka_answers(cluster, password)).returncode != 0:
            assert broker.poll() is None, (tmp_path / "kafka.log").read_text()[-3000:]
            assert time.monotonic() < deadline, probe.stderr[-2000:] + (tmp_path / "kafka.log").read_text()[-3000:]
            time.sleep(1)
        assert password.encode() not in Path(f"/proc/{broker.pid}/cmdline").read_bytes()
        assert not (state / "format.args").exists()
        refused = kafka_answers(cluster, "not-" + password)
        assert refused.returncode != 0 and "KafkaUnavailable" in refused.stderr, refused.stderr[-2000:]
    finally:
        broker.terminate()
        try:
            broker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait(timeout=30)
    assert password.encode() not in (tmp_path / "kafka.log").read_bytes()
