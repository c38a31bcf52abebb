import threading

from pgfanout.core.errors import KafkaUnavailable, PositionError
from pgfanout.runtime.daemon import backoff, run


def test_backoff_grows_and_is_capped():
    assert 0.25 <= backoff(1) <= 0.5
    assert 2.0 <= backoff(4) <= 4.0
    assert all(backoff(n) <= 30.0 for n in range(1, 40))


class FlakyWorker:
    name = "flaky"
    idle_seconds = 0.0

    def __init__(self, failures, then=None):
        self.failures, self.then, self.connects, self.closes = failures, then, 0, 0
        self.stop = threading.Event()

    def connect(self):
        self.connects += 1
        if self.connects <= self.failures:
            raise KafkaUnavailable("127.0.0.1:1", "connection refused")

    def work(self):
        if self.then:
            raise self.then
        self.stop.set()
        return False

    def close(self):
        self.closes += 1


def test_transient_errors_are_retried_then_work_proceeds(monkeypatch):
    monkeypatch.setattr("pgfanout.runtime.daemon.backoff", lambda n: 0.0)
    worker = FlakyWorker(failures=3)
    assert run(worker, worker.stop) == 0
    assert worker.connects == 4 and worker.closes == 4


def test_fatal_errors_stop_with_their_exit_code(monkeypatch):
    worker = FlakyWorker(failures=0, then=PositionError("gap"))
    assert run(worker, worker.stop) == PositionError.exit_code
