"""Unreachable servers and bad configuration: clear messages and exit codes, retries for daemons."""

import os
import signal
import subprocess
import sys
import time

import yaml

from devstack.stack import free_port


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "pgfanout", *args], capture_output=True, text=True, timeout=timeout)


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_one_shot_command_against_unreachable_postgres(pipeline, tmp_path):
    port = free_port()
    data = dict(pipeline.data)
    data["sources"] = {
        pipeline.source: dict(
            pipeline.data["sources"][pipeline.source], dsn=f"host=127.0.0.1 port={port} dbname=shop user=postgres"
        )
    }
    result = run_cli("agent", "install", "--config", str(write(tmp_path / "c.yaml", data)))
    assert result.returncode == 75
    assert f"cannot reach PostgreSQL at 127.0.0.1:{port}/shop" in result.stderr
    assert "Traceback" not in result.stderr


def test_one_shot_command_with_bad_config_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("kafka: {}\nsources: {x: {dsn: 'dbname=x', kafka: nowhere, tables: [t]}}\n")
    result = run_cli("agent", "install", "--config", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "sources.x.kafka: no Kafka cluster named 'nowhere'" in result.stderr
    assert "sources.x.tables" in result.stderr


def daemon(argv, log_path):
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "pgfanout", *argv], stdout=log, stderr=subprocess.STDOUT)


def wait_for(path, words, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text()
        if all(w in text for w in words):
            return text
        time.sleep(0.2)
    raise AssertionError(f"never saw {words} in:\n{path.read_text()}")


def test_agent_waits_and_retries_while_kafka_is_unreachable(pipeline, tmp_path):
    pipeline.prepare()
    port = free_port()
    data = dict(pipeline.data)
    data["kafka"] = {"local": {"bootstrap_servers": [f"127.0.0.1:{port}"]}}
    log_path = tmp_path / "agent.log"
    proc = daemon(["agent", "run", "--config", str(write(tmp_path / "c.yaml", data))], log_path)
    try:
        text = wait_for(log_path, [f"cannot reach Kafka at 127.0.0.1:{port}", "retrying in"], timeout=40)
        assert proc.poll() is None, "the daemon must keep retrying, not exit"
        assert "Traceback" not in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_subscriber_waits_and_retries_while_its_database_is_unreachable(pipeline, tmp_path):
    port = free_port()
    data = dict(pipeline.data)
    sub = pipeline.subscribers[0]
    data["subscribers"] = {sub: dict(pipeline.data["subscribers"][sub], dsn=f"host=127.0.0.1 port={port} dbname=r")}
    log_path = tmp_path / "sub.log"
    proc = daemon(["subscriber", "run", sub, "--config", str(write(tmp_path / "c.yaml", data))], log_path)
    try:
        text = wait_for(log_path, [f"cannot reach PostgreSQL at 127.0.0.1:{port}/r", "retrying in"])
        assert proc.poll() is None
        assert "Traceback" not in text
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
