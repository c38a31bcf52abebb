"""Watching the pipeline: every daemon's Prometheus metrics and health, trace markers through two tiers,
the status tree (text and JSON), and the live web page in a real headless browser."""

import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest

from devstack.demo import daemon_argv
from devstack.processes import spawn, stop
from devstack.stack import free_port
from tests.integration.pipeline import Pipeline, eventually, scrape, two_tiers, value

REPO = Path(__file__).resolve().parents[2]
STATUS_SCHEMA = json.loads((REPO / "schemas" / "status.schema.json").read_text())
DASHBOARD = json.loads((REPO / "grafana" / "pgfanout.json").read_text())


def health(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_every_daemon_serves_metrics_that_advance_and_readiness_that_follows_its_database(pipeline, stack):
    ports = two_tiers(pipeline)
    first, second = pipeline.subscribers
    source = pipeline.source
    before = {role: scrape(port) for role, port in ports.items()}
    workload, _ = pipeline.workload_in_background(seconds=8, writers=2, seed_value=11)
    time.sleep(4)
    during = {role: scrape(port) for role, port in ports.items()}
    workload.join()
    pipeline.wait_caught_up()
    for metric, role, labels in (
        ("pgfanout_agent_published_position", "agent", f"source={source}"),
        ("pgfanout_agent_published_transactions_total", "agent", f"source={source}"),
        ("pgfanout_agent_published_changes_total", "agent", f"source={source}"),
        ("pgfanout_agent_published_bytes_total", "agent", f"source={source}"),
        ("pgfanout_distributor_forwarded_position", "hq", f"route={pipeline.route}"),
        ("pgfanout_distributor_forwarded_transactions_total", "hq", f"route={pipeline.route}"),
        ("pgfanout_subscriber_applied_position", first, f"subscriber={first}"),
        ("pgfanout_subscriber_applied_transactions_total", first, f"subscriber={first}"),
        ("pgfanout_subscriber_applied_position", second, f"subscriber={second}"),
        ("pgfanout_subscriber_applied_changes_total", second, f"subscriber={second}"),
    ):
        key = f"{metric}{{{labels}}}"
        assert before[role].get(key, 0) < during[role][key] < scrape(ports[role])[key], f"{key} does not advance"
    assert value(during["agent"], "pgfanout_agent_publish_duration_seconds_count") > 0
    assert value(during[first], "pgfanout_subscriber_apply_duration_seconds_count{") > 0

    def caught_up():
        sub1, sub2 = scrape(ports[first]), scrape(ports[second])
        return all(
            value(s, f"{m}{{subscriber={n}}}") == 0
            for s, n in ((sub1, first), (sub2, second))
            for m in ("pgfanout_subscriber_lag_transactions", "pgfanout_subscriber_lag_seconds")
        )

    assert eventually(caught_up, 20), "lag returns to 0 after the load"
    published = value(scrape(ports["agent"]), "pgfanout_agent_published_position")
    assert value(scrape(ports[first]), "pgfanout_subscriber_applied_position") == published
    assert all(health(port, "/healthz") == 200 and health(port, "/readyz") == 200 for port in ports.values())

    replica = stack.postgres("replica")
    replica.stop()
    try:
        assert eventually(lambda: health(ports[first], "/readyz") == 503, 30), "unready without its database"
        assert health(ports[first], "/healthz") == 200, "alive all the same: it waits and retries"
    finally:
        replica.start()
    assert eventually(lambda: health(ports[first], "/readyz") == 200, 60), "ready again once it is back"
    assert value(scrape(ports[first]), f"pgfanout_reconnects_total{{daemon=subscriber {first}}}") >= 1

    trace = pipeline.command("trace", "--wait", "30")
    assert trace.returncode == 0, trace.stdout + trace.stderr
    names = {re.sub(r"\{.*", "", key) for port in ports.values() for key in scrape(port)}
    queried = {
        name
        for panel in DASHBOARD["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bpgfanout_[a-z_]+", target["expr"])
    }
    assert queried and queried <= names, f"the dashboard queries metrics no daemon serves: {sorted(queried - names)}"


def test_a_trace_marker_is_stamped_at_every_hop_of_two_tiers_and_status_shows_them(pipeline, tmp_path):
    two_tiers(pipeline)
    first, second = pipeline.subscribers
    name = pipeline.name
    trace = pipeline.command("trace", "--wait", "30")
    assert trace.returncode == 0, trace.stdout + trace.stderr
    trace_id = int(re.search(r"trace (\d+) committed", trace.stdout).group(1))
    with pipeline.replica(second) as conn:
        committed, stamps, applied = conn.execute(
            "SELECT extract(epoch FROM committed_at)::float8, stamps, extract(epoch FROM applied_at)::float8 "
            "FROM pgfanout_replica.trace WHERE subscriber = %s AND trace_id = %s",
            (second, trace_id),
        ).fetchone()
        assert conn.execute("SELECT to_regclass('pgfanout.trace')").fetchone()[0] is None, "markers are no rows"
    events = [event for event, _ in stamps]
    assert events == [
        f"published by agent {pipeline.source}",
        f"received by distributor {name}.hq",
        f"forwarded by distributor {name}.hq",
        f"received by distributor {name}.region",
        f"forwarded by distributor {name}.region",
        f"received by subscriber {second}",
    ], "the filtered tier-2 route carries the marker too"
    times = [committed, *(at for _, at in stamps), applied]
    assert times == sorted(times), "every stamp in order (one machine: one clock)"
    hops = re.findall(r"^\s+([-\d.]+) ms  (.*?)(?:  \(two clocks|$)", trace.stdout.split(f"subscriber {second}:")[1], re.M)
    end_to_end = float(re.search(rf"subscriber {re.escape(second)}: ([\d.]+) ms end to end", trace.stdout).group(1))
    assert len(hops) == 7 and abs(sum(float(ms) for ms, _ in hops) - end_to_end) < 0.5, trace.stdout
    assert abs(end_to_end - (applied - committed) * 1000) < 0.5

    status = pipeline.command("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"last trace {trace_id}" in status.stdout and "received by distributor" in status.stdout
    for line in (
        f"source {pipeline.source}",
        f"distributor {name}.hq",
        f"route {pipeline.route}",
        f"distributor {name}.region",
        f"route {name}.branch",
        f"subscriber {first}",
        f"subscriber {second}",
    ):
        assert line in status.stdout, status.stdout
    assert re.search(rf"└─ subscriber {re.escape(second)} .*: running", status.stdout), status.stdout
    as_json = pipeline.command("status", "--json")
    assert as_json.returncode == 0
    tree = json.loads(as_json.stdout)
    jsonschema.validate(tree, STATUS_SCHEMA)
    assert tree["reachable"] and tree["sources"][0]["children"][0]["name"] == f"{name}.hq"

    web_page_shows_every_node(pipeline, tmp_path)


def chromium() -> str | None:
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def browse(url: str, *flags: str) -> subprocess.CompletedProcess:
    browser = chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (scripts/install-browser.sh installs Debian's chromium)")
    with tempfile.TemporaryDirectory(prefix="pgfanout-chromium-") as profile:
        return subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",
                *flags,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )


def web_page_shows_every_node(pipeline: Pipeline, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "web.log"
    pid = spawn(daemon_argv(pipeline.config_path, "web", "--port", str(port), "--interval", "1"), log_path, tmp_path / "web.pid")
    try:
        assert eventually(lambda: health_ok(port), 30), log_path.read_text()
        page = browse(f"http://127.0.0.1:{port}/", "--dump-dom")
        assert page.returncode == 0, page.stderr[-2000:]
        for node in (
            "source:" + pipeline.source,
            f"distributor:{pipeline.name}.hq",
            "route:" + pipeline.route,
            f"distributor:{pipeline.name}.region",
            f"route:{pipeline.name}.branch",
            *(f"subscriber:{s}" for s in pipeline.subscribers),
        ):
            assert f'data-node="{node}"' in page.stdout, f"{node} not on the page:\n{page.stdout[-3000:]}"
        assert page.stdout.count("<polyline") == 2, "a lag plot per subscriber"
        shot = tmp_path / "page.png"
        taken = browse(f"http://127.0.0.1:{port}/", f"--screenshot={shot}", "--window-size=1100,800")
        assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    finally:
        stop(pid)


def health_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as answer:
            return json.loads(answer.read())["status"]["sources"] != []
    except OSError:
        return False


def test_status_names_an_unreachable_replica_and_exits_1(pipeline, tmp_path):
    pipeline.prepare()
    data = pipeline.data
    data["subscribers"][pipeline.subscribers[1]]["dsn"] = f"host=127.0.0.1 port={free_port()} dbname=gone user=postgres"
    pipeline.reconfigure(data)
    result = pipeline.command("status")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(
        rf"subscriber {re.escape(pipeline.subscribers[1])} .*: unreachable: cannot reach PostgreSQL", result.stdout
    ), result.stdout
    tree = json.loads(pipeline.command("status", "--json").stdout)
    jsonschema.validate(tree, STATUS_SCHEMA)
    assert tree["reachable"] is False
