"""The benchmarks' CPU account, pgbench output parsing and scheduler switch."""

import os
import subprocess
import sys
import time

import pytest

from bench.common import CpuAccount, process_cpu_seconds, scheduler_autogroups, transactions_of


def spin(cpu_seconds: float) -> None:
    start, deadline = time.process_time(), time.monotonic() + 10
    while time.process_time() - start < cpu_seconds and time.monotonic() < deadline:
        pass


def test_the_account_counts_a_process_and_the_machine_it_runs_on():
    with CpuAccount({"this process": [os.getpid()]}) as account:
        spin(0.3)
    assert 0.28 <= account.seconds["this process"] <= 2
    assert account.seconds["machine"] >= account.seconds["this process"] - 0.02
    per_1000 = account.ms_per_1000(transactions=3000)
    assert per_1000["this process"] == pytest.approx(account.seconds["this process"] * 1000 / 3, abs=0.1)


def test_a_process_that_is_gone_counts_nothing():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_cpu_seconds(child.pid) == 0.0


def test_transactions_are_read_from_pgbench_output():
    assert transactions_of("scaling factor: 10\nnumber of transactions actually processed: 140210\n") == 140210
    assert transactions_of("number of transactions actually processed: 998/1000\n") == 998
    with pytest.raises(ValueError, match="no transaction count"):
        transactions_of("pgbench: error: connection to server failed\n")


def test_scheduler_autogroups_are_switched_for_the_run_and_put_back(tmp_path):
    switch = tmp_path / "sched_autogroup_enabled"
    switch.write_text("1\n")
    with scheduler_autogroups("off", switch):
        assert switch.read_text() == "0"
    assert switch.read_text() == "1"
    with pytest.raises(RuntimeError), scheduler_autogroups("off", switch):
        raise RuntimeError("a benchmark failed")
    assert switch.read_text() == "1"
    with scheduler_autogroups("as-is", switch):
        assert switch.read_text() == "1"


def test_scheduler_autogroups_that_cannot_be_switched_stop_the_benchmark_with_a_reason(tmp_path):
    with (
        pytest.raises(SystemExit, match="cannot turn scheduler autogroups off .*--autogroups as-is"),
        scheduler_autogroups("off", tmp_path / "no-such-switch"),
    ):
        pass
