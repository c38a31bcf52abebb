"""`pgfanout compare` at pgbench scale 50 (5,000,000 accounts), the whole pipeline running.

1. Speed: the compare of every table (`pgfanout compare SUB --json`, a process of its own, start-up
   included) against a bare full scan of the same tables on both sides, `SELECT sum(hashtext(t::text))`,
   run at once on the two servers (as the compare reads them) and one after the other; rounds
   alternate which goes first. Target: the compare within 2x of the scan. The compare's peak RSS.
2. Writers: pgbench (-c 4 -j 1 -T duration) alone, and with compares back to back for its whole run,
   at full speed and at each --paces fraction (`pgfanout compare --pace`), runs alternating; the TPS
   ratios (target within 10%). pg_locks are sampled every 50 ms on both servers during the compares:
   every lock wait, and those whose blockers include a compare's backend. The subscriber's pauses at
   each compare's position, from its log.
3. Differences: 1% of the accounts changed on the replica behind the subscriber's back; the compare
   that finds them (time, RSS), the repair, and the compare after it.

    .venv/bin/python -m bench.compare [--scale 50] [--rounds 3] [--duration 30] [--repetitions 4] [--paces 0.1,0.05]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time

import psycopg

from bench.common import Timer, bench_stack, pgbench, tps_of, write_result
from bench.lag import TABLES, BenchPipeline
from devstack.demo import wait_caught_up

NAME = "bench_compare"
# the compare as the command line runs it, reporting its own peak RSS when it ends
WRAPPED = (
    "import resource, sys\n"
    "from pgfanout.cli.main import main\n"
    "code = main(sys.argv[1:])\n"
    "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)
PAUSE = re.compile(r"exported the replica at position \d+ \(tick \d+\) for a compare( and a repair)?, ([0-9.]+)s")
LOCK_WAITS = """
SELECT a.application_name, coalesce(b.application_name, '')
FROM pg_stat_activity a LEFT JOIN LATERAL unnest(pg_blocking_pids(a.pid)) blocker ON true
LEFT JOIN pg_stat_activity b ON b.pid = blocker
WHERE a.wait_event_type = 'Lock'
"""


def scan_side(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        for table in TABLES:
            conn.execute(f"SELECT count(*), sum(hashtext(t::text)) FROM {table} t").fetchone()


def scan_both(primary: str, replica: str, together: bool) -> float:
    with Timer() as timer:
        if together:
            other = threading.Thread(target=scan_side, args=(replica,))
            other.start()
            scan_side(primary)
            other.join()
        else:
            scan_side(primary)
            scan_side(replica)
    return timer.seconds


def run(pipeline: BenchPipeline, command: str, *more: str) -> tuple[float, float, int, str]:
    """(seconds, peak RSS MB, exit status, stdout) of `pgfanout <command> SUB ...`."""
    argv = [sys.executable, "-c", WRAPPED, command, "--config", str(pipeline.config_path), pipeline.subscriber, *more]
    with Timer() as timer:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"pgfanout {command} failed ({done.returncode}): {done.stderr}")
    rss = next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("peak_rss_kb"))
    return timer.seconds, round(rss / 1024, 1), done.returncode, done.stdout


def sample_locks(dsns: list[str], stop: threading.Event, waits: dict[str, int]) -> None:
    conns = [psycopg.connect(dsn, autocommit=True) for dsn in dsns]
    try:
        while not stop.is_set():
            for conn in conns:
                for _waiter, blocker in conn.execute(LOCK_WAITS):
                    waits["all"] += 1
                    if blocker.startswith("pgfanout-compare"):
                        waits["compare"] += 1
            waits["samples"] += 1
            time.sleep(0.05)
    finally:
        for conn in conns:
            conn.close()


def compares_until(pipeline: BenchPipeline, stop: threading.Event, seconds: list[float], pace: float) -> None:
    while not stop.is_set():
        elapsed, _, code, _ = run(pipeline, "compare", "--json", "--pace", str(pace))
        assert code == 0, "the replica differs from the primary under load"
        seconds.append(elapsed)


def pauses(pipeline: BenchPipeline, repair: bool) -> list[float]:
    """How long the subscriber stopped applying for each compare (or each repair's held position)."""
    log = pipeline.stack.log_dir / f"{pipeline.subscriber}.log"
    return [float(m.group(2)) for m in PAUSE.finditer(log.read_text()) if bool(m.group(1)) == repair]


def pause_summary(seen: list[float]) -> dict:
    return {
        "count": len(seen),
        "median": round(statistics.median(seen) * 1000, 1) if seen else None,
        "max": round(max(seen) * 1000, 1) if seen else None,
    }


def paired_ratios(tps: dict[str, list[float]], which: str) -> list[float]:
    """Each repetition's run beside a compare over the run alone of the same repetition: the TPS of this
    machine drifts over a benchmark's minutes, so neighbours are compared, not medians of all."""
    return [round(beside / alone, 3) for beside, alone in zip(tps[which], tps["alone"], strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--repetitions", type=int, default=4)
    parser.add_argument("--paces", default="0.1,0.05", help="the --pace fractions measured beside full speed")
    args = parser.parse_args()
    stack = bench_stack()
    pipeline = BenchPipeline(stack, NAME, scale=args.scale)
    primary_dsn = pipeline.config.sources[NAME].dsn
    replica_dsn = pipeline.config.subscribers[pipeline.subscriber].dsn
    port = stack.postgres("primary").port
    pipeline.start("agent", "distributor", "subscriber")
    try:
        wait_caught_up(pipeline.config, 300)
        figures: dict = {"scale": args.scale}
        with psycopg.connect(primary_dsn) as conn:
            figures["rows"] = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
        scan_both(primary_dsn, replica_dsn, together=True)  # caches warm for both

        # 1. speed
        speed: dict[str, list] = {"compare_seconds": [], "scan_together_seconds": [], "scan_one_after_other_seconds": []}
        rss = []
        for round_ in range(args.rounds):
            order = ["compare", "scans"] if round_ % 2 == 0 else ["scans", "compare"]
            for which in order:
                if which == "compare":
                    seconds, peak, code, _ = run(pipeline, "compare", "--json")
                    assert code == 0
                    speed["compare_seconds"].append(round(seconds, 2))
                    rss.append(peak)
                else:
                    speed["scan_together_seconds"].append(round(scan_both(primary_dsn, replica_dsn, True), 2))
                    speed["scan_one_after_other_seconds"].append(round(scan_both(primary_dsn, replica_dsn, False), 2))
            print(f"round {round_ + 1}: {json.dumps({k: v[-1] for k, v in speed.items()})}", flush=True)
        compare = statistics.median(speed["compare_seconds"])
        figures["speed"] = {
            **speed,
            "compare_over_scan_together": round(compare / statistics.median(speed["scan_together_seconds"]), 2),
            "compare_over_scan_one_after_other": round(compare / statistics.median(speed["scan_one_after_other_seconds"]), 2),
            "compare_peak_rss_mb": rss,
        }

        # 2. writers beside compares
        paces = [1.0, *(float(p) for p in args.paces.split(",") if p)]
        tps: dict[str, list[float]] = {"alone": [], **{f"pace_{p:g}": [] for p in paces}}
        waits = {p: {"all": 0, "compare": 0, "samples": 0} for p in paces}
        during: dict[float, list[float]] = {p: [] for p in paces}
        for repetition in range(args.repetitions):
            runs: list[float | None] = [None, *paces]
            for pace in runs if repetition % 2 == 0 else runs[::-1]:
                wait_caught_up(pipeline.config, 300)
                stop = threading.Event()
                helpers = []
                if pace is not None:
                    helpers = [
                        threading.Thread(target=compares_until, args=(pipeline, stop, during[pace], pace)),
                        threading.Thread(target=sample_locks, args=([primary_dsn, replica_dsn], stop, waits[pace])),
                    ]
                for helper in helpers:
                    helper.start()
                out = pgbench("-c", "4", "-j", "1", "-T", str(args.duration), "-n", dsn_port=port, db=NAME)
                stop.set()
                for helper in helpers:
                    helper.join()
                which = "alone" if pace is None else f"pace_{pace:g}"
                tps[which].append(round(tps_of(out), 1))
                print(f"repetition {repetition + 1}: {which} {tps[which][-1]} tps", flush=True)
        alone = statistics.median(tps["alone"])
        figures["writers"] = {
            "pgbench_arguments": f"-c 4 -j 1 -T {args.duration} -n",
            "tps": tps,
            "tps_ratio_medians": {f"pace_{p:g}": round(statistics.median(tps[f"pace_{p:g}"]) / alone, 3) for p in paces},
            "tps_ratios_paired": {f"pace_{p:g}": paired_ratios(tps, f"pace_{p:g}") for p in paces},
            "compares_during_pgbench": {f"pace_{p:g}": len(during[p]) for p in paces},
            "compare_seconds_under_load_median": {
                f"pace_{p:g}": round(statistics.median(during[p]), 2) if during[p] else None for p in paces
            },
            "lock_waits_sampled": {f"pace_{p:g}": waits[p]["all"] for p in paces},
            "lock_waits_behind_a_compare": {f"pace_{p:g}": waits[p]["compare"] for p in paces},
            "lock_samples": {f"pace_{p:g}": waits[p]["samples"] for p in paces},
            "subscriber_pause_ms": pause_summary(pauses(pipeline, repair=False)),
        }

        # 3. a replica that differs
        wait_caught_up(pipeline.config, 300)
        with psycopg.connect(replica_dsn, autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")  # past the read-only guard, as a hand edit
            changed = conn.execute("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = 0").rowcount
        seconds, peak, code, out = run(pipeline, "compare", "--json")
        report = {t["table"]: t for t in json.loads(out)["tables"]}["public.pgbench_accounts"]
        assert code == 1 and report["counts"]["different"] == changed, report
        repair_seconds, repair_peak, repair_code, _ = run(pipeline, "repair")
        assert repair_code == 0
        after_seconds, _, after_code, _ = run(pipeline, "compare", "--json")
        assert after_code == 0
        figures["differences"] = {
            "rows_changed_on_the_replica": changed,
            "compare_seconds": round(seconds, 2),
            "compare_peak_rss_mb": peak,
            "differing_ranges": report["differing_ranges"],
            "ranges": report["ranges"],
            "repair_seconds_compare_repair_compare": round(repair_seconds, 2),
            "repair_peak_rss_mb": repair_peak,
            "compare_after_repair_seconds": round(after_seconds, 2),
            "subscriber_hold_for_repair_ms": pause_summary(pauses(pipeline, repair=True)),
        }
    finally:
        pipeline.stop()
    write_result(
        "compare",
        figures,
        notes="PostgreSQL primary and replica, Kafka, agent, distributor and subscriber share this 2-core machine, so "
        "each compare's two scans take CPU from pgbench on both servers at once. Compare: `pgfanout compare SUB "
        "--json` as a process, start-up and the wait for the agent's tick included. Scans: SELECT count(*), "
        "sum(hashtext(t::text)) over the same five tables, in one REPEATABLE READ transaction per server. "
        "Repair: `pgfanout repair SUB` (a compare, the repair at a held position, a compare after it).",
    )


if __name__ == "__main__":
    main()
