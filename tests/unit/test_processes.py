"""Our processes are found by PID file and command line, also in the first moments after they start."""

import sys
import time

from devstack import processes


def test_a_process_whose_command_line_is_not_readable_yet_is_still_running(tmp_path, monkeypatch):
    """Right after exec, /proc/PID/cmdline reads empty until the new image's arguments are mapped (3-4% of
    immediate reads after spawning `sleep` here; longer under load). Taken for "not ours", it made a Kafka
    broker that had just started look as if it had exited while starting."""
    pid = processes.spawn(
        [sys.executable, "-c", "import time; time.sleep(5)", "marker-for-this-test"], tmp_path / "out.log", tmp_path / "it.pid"
    )
    real_cmdline = processes.cmdline
    reads = []

    def just_after_exec(of: int) -> str:
        reads.append(of)
        return "" if len(reads) <= 3 else real_cmdline(of)

    monkeypatch.setattr(processes, "cmdline", just_after_exec)
    try:
        assert processes.running(tmp_path / "it.pid", "marker-for-this-test") == pid
        assert len(reads) == 4
    finally:
        processes.stop(pid, timeout=5)


def test_processes_are_found_at_once_and_only_while_they_are_ours(tmp_path):
    for n in range(20):
        pid = processes.spawn(
            [sys.executable, "-c", "import time; time.sleep(5)", "marker-for-this-test"],
            tmp_path / "out.log",
            tmp_path / f"{n}.pid",
        )
        try:
            assert processes.running(tmp_path / f"{n}.pid", "marker-for-this-test") == pid
            assert processes.running(tmp_path / f"{n}.pid", "kafka.Kafka") is None
        finally:
            processes.stop(pid, timeout=5)
    pid = processes.spawn([sys.executable, "-c", "pass"], tmp_path / "out.log", tmp_path / "gone.pid")
    assert processes.wait_exit(pid, timeout=10) == 0
    assert processes.running(tmp_path / "gone.pid", sys.executable) is None


def test_processes_are_stopped_together_and_one_that_ignores_the_signal_is_killed(tmp_path):
    """Each takes a second to notice the signal, as a daemon's loop does; one never does."""
    slow = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1), sys.exit(0))); time.sleep(30)"
    deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(30)"
    pids = [
        processes.spawn([sys.executable, "-c", code], tmp_path / f"{n}.log", tmp_path / f"{n}.pid")
        for n, code in enumerate((slow, slow, slow, deaf))
    ]
    time.sleep(1)  # the handlers are installed
    started = time.monotonic()
    processes.stop_all(pids, timeout=2)
    took = time.monotonic() - started
    assert not any(processes.alive(pid) for pid in pids)
    assert 2 <= took < 3.5, f"together: the timeout once, not three seconds plus the timeout ({took:.1f}s)"


def test_a_process_that_exited_by_itself_is_reaped_and_one_still_running_is_kept(tmp_path):
    done = processes.spawn([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "done.log", tmp_path / "done.pid")
    running = processes.spawn([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "run.log", tmp_path / "run.pid")
    try:
        deadline = time.monotonic() + 10
        while processes.alive(done) and time.monotonic() < deadline:
            time.sleep(0.02)
        reaped = processes.reap_exited()  # earlier tests' exited processes may be reaped here too
        assert done in reaped and running not in reaped
        assert done not in processes.reap_exited()
        assert processes.wait_exit(running, timeout=0.1) is None, "the running one stays known until it is stopped"
    finally:
        processes.stop(running, timeout=5)
