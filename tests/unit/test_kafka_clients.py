"""A Kafka client whose construction fails leaves no I/O thread or socket behind (kafkautil.build).

The server here accepts connections and never answers, as a broker still starting or a hung one does."""

import os
import socket
import threading
from collections.abc import Iterator

import kafka.errors
import pytest

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from pgfanout.runtime.kafka import build


@pytest.fixture
def silent_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """The address of a server that accepts and never answers, and the connections it accepted."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}", accepted
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    server.close()


def io_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name.startswith("kafka-io"))


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def failure(client, silent_address: str) -> type[BaseException] | None:
    """What building ``client`` raised; the exception itself is dropped, so its frames hold nothing alive."""
    try:
        build(client, bootstrap_servers=silent_address, bootstrap_timeout_ms=300, request_timeout_ms=1000)
    except Exception as exc:  # noqa: BLE001 - the type is what the test checks
        return type(exc)
    return None


@pytest.mark.parametrize("client", [KafkaAdminClient, KafkaConsumer, KafkaProducer])
def test_a_client_that_cannot_bootstrap_closes_its_thread_and_sockets(silent_server, client):
    address, accepted = silent_server
    threads, files = io_threads(), open_files()
    assert failure(client, address) is kafka.errors.KafkaTimeoutError
    assert accepted, "the client never connected"
    assert io_threads() == threads
    # counted, not left to the collector: the captured log records of the failure keep the client alive
    assert open_files() - len(accepted) == files
