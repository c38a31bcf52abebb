"""Read-your-writes: a write's token on the primary, and pgfanout_replica.wait_for(token) on a replica,
never a stale read, while pgbench keeps the pipeline busy."""

import statistics
import subprocess
import time

from devstack.postgres import bin_dir

ROUNDS = 1000
PGBENCH_TABLES = ["public.pgbench_accounts", "public.pgbench_branches", "public.pgbench_tellers", "public.pgbench_history"]


def test_a_replica_waits_for_a_token_and_never_reads_stale(pipeline):
    first, second = pipeline.subscribers
    data = pipeline.data
    data["sources"][pipeline.source]["tables"] = ["public.rw", *PGBENCH_TABLES]
    # the second replica's route filters out every row of public.rw: it has the token all the same
    data["routes"][f"{pipeline.name}.none"] = {
        "upstream": pipeline.source,
        "kafka": "local",
        "tables": {"public.rw": {"where": "id > 1000"}},
    }
    data["distributors"][pipeline.distributor]["routes"].append(f"{pipeline.name}.none")
    data["subscribers"][second]["route"] = f"{pipeline.name}.none"
    pipeline.reconfigure(data)
    pipeline.prepare(install=False, bare=(first, second))
    primary_port = pipeline.stack.postgres("primary").port
    subprocess.run(
        [
            str(bin_dir() / "pgbench"),
            "-i",
            "-s",
            "1",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            str(primary_port),
            "-U",
            "postgres",
            f"{pipeline.name}_primary",
        ],
        check=True,
        capture_output=True,
    )
    with pipeline.primary() as conn:
        conn.execute("ALTER TABLE public.pgbench_history ADD COLUMN id bigserial PRIMARY KEY")  # a key to publish by
        conn.execute("CREATE TABLE public.rw (id integer PRIMARY KEY, v integer NOT NULL)")
        conn.execute("INSERT INTO public.rw SELECT i, 0 FROM generate_series(1, 10) i")
    assert pipeline.command("agent", "install").returncode == 0
    for subscriber in pipeline.subscribers:
        init = pipeline.command("subscriber", "init", subscriber)
        assert init.returncode == 0, init.stderr
    pipeline.start()
    pipeline.wait_for_log(first, "ready")
    load = subprocess.Popen(
        [
            str(bin_dir() / "pgbench"),
            "-n",
            "-c",
            "2",
            "-j",
            "1",
            "-T",
            "120",
            "-R",
            "200",
            "-h",
            "127.0.0.1",
            "-p",
            str(primary_port),
            "-U",
            "postgres",
            f"{pipeline.name}_primary",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    waits, stale = [], []
    try:
        with pipeline.primary() as primary, pipeline.replica(first) as replica:
            for n in range(ROUNDS):
                row = 1 + n % 10
                with primary.transaction():
                    written = primary.execute("UPDATE public.rw SET v = v + 1 WHERE id = %s RETURNING v", (row,)).fetchone()[0]
                    token = primary.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
                started = time.perf_counter()
                assert replica.execute("SELECT pgfanout_replica.wait_for(%s, 10)", (token,)).fetchone()[0], n
                waits.append(time.perf_counter() - started)
                read = replica.execute("SELECT v FROM public.rw WHERE id = %s", (row,)).fetchone()[0]
                if read != written:
                    stale.append((n, token, written, read))
            assert load.poll() is None, "pgbench ran through every round"
            with pipeline.replica(second) as filtered:
                assert filtered.execute("SELECT pgfanout_replica.wait_for(%s, 10)", (token,)).fetchone()[0], (
                    "a replica has a token once it applied its position, though its route filtered the rows out"
                )
                assert filtered.execute("SELECT count(*) FROM public.rw").fetchone()[0] == 0
            assert not replica.execute("SELECT pgfanout_replica.has(%s)", (str(int(token) + 10**9),)).fetchone()[0], (
                "a transaction that has not happened yet is not there"
            )
    finally:
        load.terminate()
        load.wait(timeout=30)
    assert stale == [], "no read after wait_for may be stale"
    waits.sort()
    median, p99 = statistics.median(waits) * 1000, waits[int(len(waits) * 0.99)] * 1000
    print(f"\nread-your-writes: {ROUNDS} rounds under pgbench -R 200: wait_for median {median:.1f} ms, p99 {p99:.1f} ms")
    assert p99 < 1000, f"wait_for took {p99:.0f} ms at p99"
