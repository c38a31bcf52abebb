"""Capture overhead by when the agent started: a diagnostic beside bench.capture_overhead.

The pgbench run capture_overhead used until the sixteenth session (scale 10, -c 4 -j 2; now its
``--jobs 2``), whose spread this diagnostic was written to explain, alternating these modes:

- ``none``: no capture;
- ``early``: capture installed and the agent ready before the load, as capture_overhead runs it and as
  an agent in service is;
- ``late``: capture installed, the agent spawned as pgbench begins;
- ``late3``: the agent spawned 3 s after pgbench begins;
- ``restart``: the agent ready before the load, stopped and spawned again as pgbench begins;
- ``topic_first``: as ``late``, with the agent's Kafka topic created before the load;
- ``stopped_before``: the agent ready and publishing heartbeats for 5 s, stopped before ``quiesce()``,
  and spawned again as pgbench begins.

TPS and machine CPU per 1,000 transactions are reported per run and as medians, and the share of the run
the CPUs spent idle. docs/benchmarks.md ("Fifteenth session") says what the figures showed.

    .venv/bin/python -m bench.start_order [--duration 20] [--repetitions 3] [--modes none,early,late,...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

from agent import capture
from bench.capture_overhead import DB, pgbench_arguments, quiesce, start_capture, with_trigger
from bench.common import CLOCK_TICKS, CpuAccount, bench_stack, tps_of, transactions_of, warm_broker, write_result
from bench.publish_throughput import prepare_pgbench_db
from devstack import processes
from devstack.demo import daemon_argv, reset_streams, start_daemon, write_config
from devstack.postgres import bin_dir
from pgfanout.core.config import parse_config
from pgfanout.runtime import kafka as kafkautil
from pgfanout.runtime.pg import connect

MODES = ("none", "early", "late", "late3", "restart", "topic_first", "stopped_before")
JOBS = 2  # capture_overhead --jobs 2: the run whose spread this diagnoses
SPAWNED_DURING_LOAD = {"late": 0.0, "late3": 3.0, "restart": 0.0, "topic_first": 0.0, "stopped_before": 0.0}


def idle_seconds() -> float:
    """Idle time of every CPU together since boot (/proc/stat), in seconds."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[4]) / CLOCK_TICKS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    modes = args.modes.split(",")
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        parser.error(f"unknown modes {unknown}; choose from {', '.join(MODES)}")

    stack = bench_stack()
    primary = stack.postgres("primary")
    data = prepare_pgbench_db(stack, DB)
    config = parse_config(data)
    source = config.sources[DB]
    figures: dict[str, object] = {"broker_warmup_requests": warm_broker(config.kafka[source.kafka])}
    pgbench_argv = [str(bin_dir() / "pgbench"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"]
    measured_run = pgbench_arguments(args.duration, JOBS)
    subprocess.run([*pgbench_argv, *pgbench_arguments(5, JOBS), DB], capture_output=True, check=True)  # warm up
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for _ in range(args.repetitions):
        for mode in modes:
            (stack.log_dir / f"{DB}-agent.log").unlink(missing_ok=True)
            agent = 0
            if mode in ("early", "restart", "stopped_before"):
                agent = start_capture(stack, data, config, "c")
                if mode == "stopped_before":
                    time.sleep(5)
                    processes.stop(agent)
            else:
                with connect(source, "bench") as conn:
                    capture.uninstall(conn)
                    if mode != "none":
                        capture.install(conn, with_trigger(source, "c"))
                reset_streams(config)
                if mode == "topic_first":
                    kafkautil.ensure_topic(config.kafka[source.kafka], config.source_topic(DB),
                                           source.max_message_bytes)
            with connect(source, "bench") as conn:
                quiesce(conn)
            idle_before, started = idle_seconds(), time.monotonic()
            with CpuAccount({}) as account:
                load = subprocess.Popen([*pgbench_argv, *measured_run, DB],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                if mode in SPAWNED_DURING_LOAD:
                    time.sleep(SPAWNED_DURING_LOAD[mode])
                    if mode == "restart":
                        processes.stop(agent)
                    config_path = write_config(stack.home / f"{DB}.yaml", data)
                    agent = start_daemon(stack, f"{DB}-agent", daemon_argv(config_path, "agent", "run", "--source", DB))
                output = load.communicate()[0]
            idle_share = (idle_seconds() - idle_before) / (time.monotonic() - started) / (os.cpu_count() or 1)
            runs[mode].append({"tps": round(tps_of(output)), "idle_share": round(idle_share, 3),
                               **account.ms_per_1000(transactions_of(output))})
            if agent:
                processes.stop(agent)
    base = statistics.median(run["tps"] for run in runs[modes[0]])
    figures["runs"] = runs
    figures["tps_median"] = {mode: round(statistics.median(run["tps"] for run in values)) for mode, values in runs.items()}
    figures["tps_ratio_to_" + modes[0]] = {mode: round(tps / base, 3) for mode, tps in figures["tps_median"].items()}
    write_result("start_order", figures, notes=(
        f"pgbench {' '.join(measured_run)}, scale 10, modes alternating (see bench/start_order.py), each after "
        "VACUUM and CHECKPOINT; the C trigger. machine: CPU ms per 1,000 transactions (/proc/stat, not idle nor "
        "iowait); idle_share: the CPUs' idle time over the run. A diagnostic of capture_overhead's spread, not "
        "a figure against the issue's bar."))


if __name__ == "__main__":
    main()
