"""Kafka helpers over kafka-python: clients from the config, topics, reading a topic's tail."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import TypeVar

import kafka.errors
from kafka.admin import NewTopic
from kafka.net.compat import KafkaNetClient

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from pgfanout.core.config import KafkaCluster, secret
from pgfanout.core.errors import KafkaUnavailable, StreamPlace
from pgfanout.core.generations import generation_of
from pgfanout.core.messages import Message

log = logging.getLogger(__name__)
Client = TypeVar("Client", KafkaAdminClient, KafkaConsumer, KafkaProducer)

Place = int | tuple[int, int]  # what grows along a topic: a position, or (generation, position)
FETCH_MAX_BYTES = 64 * 1024 * 1024
# A request a producer wrote stays in the kernel's socket buffer while the network is cut, and the kernel
# goes on sending it after its process was killed or its client closed: it can reach the broker after a new
# session read the topic's tail, and be appended behind what that session publishes again. TCP_USER_TIMEOUT
# bounds how long unacknowledged data is tried (for orphaned sockets too); a session that reconciles with a
# tail waits that long first (outlive_orphaned_writes). A live producer whose connection is aborted by it
# reconnects and retries, and the broker drops the idempotent retry's duplicate.
UNACKED_WRITE_MS = 2000
PRODUCER_SOCKET_OPTIONS = [
    (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
    (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, UNACKED_WRITE_MS),
]


def client_options(cluster: KafkaCluster) -> dict[str, object]:
    options: dict[str, object] = {
        "bootstrap_servers": cluster.bootstrap_servers,
        "security_protocol": cluster.security_protocol,
        "request_timeout_ms": 30_000,
        "bootstrap_timeout_ms": 5_000,
        "reconnect_backoff_max_ms": 2_000,
    }
    if cluster.sasl_mechanism:
        options["sasl_mechanism"] = cluster.sasl_mechanism
        options["sasl_plain_username"] = cluster.sasl_username
        options["sasl_plain_password"] = secret(cluster.sasl_password_env)
    if cluster.ssl_cafile:
        options["ssl_cafile"] = cluster.ssl_cafile
    if cluster.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_check_hostname"] = True  # the broker's certificate names the address connected to
    return options


def build(make: Callable[..., Client], **options: object) -> Client:
    """``make(**options)``, closing what a failed construction opened.

    kafka-python 3.0 starts a client's I/O thread and opens its sockets before it bootstraps, and a
    constructor that raises returns nothing to close: a daemon retrying an unreachable broker would gather
    a thread and sockets per attempt. The network client is made through ``kafka_client`` (a documented
    option), so it can be closed here."""
    made: list[KafkaNetClient] = []

    def network_client(**config: object) -> KafkaNetClient:
        made.append(KafkaNetClient(**config))
        return made[-1]

    try:
        return make(**options, kafka_client=network_client)
    except BaseException:
        for client in made:
            client.close()
        raise


def connected(cluster: KafkaCluster, make: Callable[..., Client], **options: object) -> Client:
    """A client of ``cluster`` (its config's options, then ``options``); KafkaUnavailable if it cannot be made."""
    try:
        return build(make, **client_options(cluster), **options)
    except kafka.errors.KafkaError as exc:
        raise _unavailable(cluster, exc) from exc


def admin(cluster: KafkaCluster) -> KafkaAdminClient:
    return connected(cluster, KafkaAdminClient)


# An earlier process's producer ended before this process started; this process's own, when it was closed.
_last_producer_end = time.monotonic()


def close_producer(client: KafkaProducer) -> None:
    global _last_producer_end
    try:
        client.close(timeout=5)
    finally:
        _last_producer_end = time.monotonic()


def outlive_orphaned_writes() -> None:
    """Wait until whatever an earlier producer of this stream left in a socket (a killed process, a client
    closed during a network cut) has reached the broker or been given up (UNACKED_WRITE_MS): only then does a
    topic's tail say all that was published. Counted from the last producer's end, so a process that took
    a while to start waits less."""
    remaining = _last_producer_end + UNACKED_WRITE_MS / 1000 + 0.2 - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


def where(cluster: KafkaCluster) -> str:
    return ",".join(cluster.bootstrap_servers)


def _unavailable(cluster: KafkaCluster, exc: Exception) -> KafkaUnavailable:
    return KafkaUnavailable(where(cluster), str(exc) or type(exc).__name__)


def producer(cluster: KafkaCluster, max_request_size: int, linger_ms: int = 0) -> KafkaProducer:
    """An idempotent producer: acks=all, ordered, no duplicates from its own retries."""
    return connected(
        cluster,
        KafkaProducer,
        acks="all",
        enable_idempotence=True,
        max_in_flight_requests_per_connection=5,
        linger_ms=linger_ms,
        batch_size=1024 * 1024,
        max_request_size=max_request_size,
        delivery_timeout_ms=120_000,
        socket_options=PRODUCER_SOCKET_OPTIONS,
    )


def consumer(cluster: KafkaCluster, group_id: str | None = None) -> KafkaConsumer:
    return connected(
        cluster,
        KafkaConsumer,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_partition_fetch_bytes=FETCH_MAX_BYTES,
        fetch_max_bytes=FETCH_MAX_BYTES,
        # the broker answers a fetch as soon as a record arrives: a long wait costs no latency, and an
        # idle consumer asks twice a second instead of fifty times (docs/benchmarks.md, idle cost)
        fetch_max_wait_ms=500,
        consumer_timeout_ms=float("inf"),
    )


def ensure_topic(cluster: KafkaCluster, topic: str, max_message_bytes: int, compact: bool = False) -> None:
    """Create the single-partition topic a stream lives in (or a compacted one), unless it exists."""
    client = admin(cluster)
    try:
        if topic in client.list_topics():
            return
        configs = {"max.message.bytes": str(max_message_bytes), "min.insync.replicas": "1"}
        if compact:
            configs["cleanup.policy"] = "compact"
        client.create_topics([NewTopic(topic, 1, 1, topic_configs=configs)])
        log.info("created topic %s on %s", topic, where(cluster))
    except kafka.errors.TopicAlreadyExistsError:
        pass
    except kafka.errors.KafkaError as exc:
        raise _unavailable(cluster, exc) from exc
    finally:
        client.close()


def delete_topics(cluster: KafkaCluster, topics: list[str]) -> None:
    client = admin(cluster)
    try:
        existing = set(client.list_topics())
        doomed = [t for t in topics if t in existing]
        if doomed:
            client.delete_topics(doomed)
        deadline = time.monotonic() + 30
        while doomed and set(doomed) & set(client.list_topics()):
            if time.monotonic() > deadline:
                raise KafkaUnavailable(where(cluster), f"topics {doomed} were not deleted within 30s")
            time.sleep(0.1)
    finally:
        client.close()


def delete_groups(cluster: KafkaCluster, group_ids: list[str]) -> None:
    client = admin(cluster)
    try:
        existing = {group["group_id"] for group in client.list_groups()}
        doomed = [g for g in group_ids if g in existing]
        if doomed:
            client.delete_groups(doomed)
    finally:
        client.close()


def partition(topic: str) -> TopicPartition:
    return TopicPartition(topic, 0)


def end_offset(client: KafkaConsumer, topic: str) -> int:
    tp = partition(topic)
    return int(client.end_offsets([tp])[tp])


def last_value(client: KafkaConsumer, topic: str) -> tuple[int, bytes] | None:
    """The offset and value of the last record of a single-partition topic, or None if empty.

    Idempotent, non-transactional producers write no control records, so the record
    just before the end offset is the last data record.
    """
    tp = partition(topic)
    client.assign([tp])
    end = end_offset(client, topic)
    begin = int(client.beginning_offsets([tp])[tp])
    if end <= begin:
        return None
    client.seek(tp, end - 1)
    for _ in range(50):
        batch = client.poll(timeout_ms=200, max_records=1)
        for record in batch.get(tp, []):
            return record.offset, record.value
    raise KafkaUnavailable(",".join(map(str, client.config["bootstrap_servers"])), f"could not read the last record of {topic}")


def last_message(
    cluster: KafkaCluster, topic: str, decode: Callable[[bytes, str], tuple[str, Message]]
) -> tuple[str, Message] | None:
    """The last message of a single-partition topic, decoded: (kind, record), or None if the topic is empty or
    does not exist yet."""
    client = consumer(cluster)
    try:
        if topic not in client.topics():  # asking for offsets of a topic not created yet would wait for a minute
            return None
        last = last_value(client, topic)
    finally:
        client.close()
    if last is None:
        return None
    offset, value = last
    return decode(value, StreamPlace(topic, 0, offset))


def published_after(
    cluster: KafkaCluster, topic: str, decode: Callable[[bytes, StreamPlace], tuple[str, Message]], position: int, generation: int
) -> list[tuple[int, int]]:
    """(position, xid) of every transaction of ``generation`` in a source topic past ``position``."""
    client = consumer(cluster)
    found: dict[int, int] = {}
    try:
        tp = partition(topic)
        client.assign([tp])
        end = client.end_offsets([tp])[tp]

        # Positions start again lower when a failover's new generation begins (at the new primary's
        # position), so only (generation, position) grows along a source topic.
        def place_of(value: bytes, offset: int) -> tuple[int, int] | None:
            kind, message = decode(value, StreamPlace(topic, 0, offset))
            if kind != "Batch" or not message["transactions"]:
                return None
            return generation_of(message), message["transactions"][-1]["position"]

        client.seek(tp, offset_after_position(client, tp, (generation, position), place_of))
        deadline = time.monotonic() + 120
        while client.position(tp) < end:
            if time.monotonic() >= deadline:
                raise KafkaUnavailable(where(cluster), f"could not read {topic} to its end offset {end} within 120 s")
            for record in client.poll(timeout_ms=1000).get(tp, []):
                kind, message = decode(record.value, StreamPlace(topic, 0, record.offset))
                if kind == "Batch" and generation_of(message) == generation:
                    for part in message["transactions"]:
                        if part["position"] > position:
                            found[part["position"]] = part["xid"]
    finally:
        client.close()
    return sorted(found.items())


def offset_after_position(
    client: KafkaConsumer, tp: TopicPartition, position: Place, position_of: Callable[[bytes, int], Place | None]
) -> int:
    """The offset right after the last record holding a position at or below ``position``: where reading
    resumes after it (the topic's first offset if no record does).

    ``position_of(value, offset)`` gives the last position a record holds, or None when it holds none
    (such records are passed over: there is nothing in them to apply). A position is whatever grows
    along the topic: a route's position, or a source topic's (generation, position).
    """
    client.assign([tp])
    low, high = int(client.beginning_offsets([tp])[tp]), int(client.end_offsets([tp])[tp])
    return first_beyond(low, high, position, lambda start, stop: _first_known(client, tp, start, stop, position_of))


def first_beyond(low: int, high: int, position: Place, first_known: Callable[[int, int], tuple[int, Place] | None]) -> int:
    """Binary search of [low, high) for the offset right after the last record holding a position at or
    below ``position`` (``low`` if none does).

    ``first_known(start, stop)`` is the (offset, position) of the first record in [start, stop) that holds
    one, or None; positions must grow with offsets."""
    while low < high:
        middle = (low + high) // 2
        found = first_known(middle, high)
        if found is None or found[1] > position:
            high = middle
        else:
            low = found[0] + 1
    return low


def _first_known(
    client: KafkaConsumer, tp: TopicPartition, start: int, stop: int, position_of: Callable[[bytes, int], Place | None]
) -> tuple[int, Place] | None:
    """(offset, position) of the first record in [start, stop) that holds a position."""
    client.seek(tp, start)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for record in client.poll(timeout_ms=200, max_records=100).get(tp, []):
            if record.offset >= stop:
                return None
            known = position_of(record.value, record.offset)
            if known is not None:
                return record.offset, known
        if client.position(tp) >= stop:
            return None
    raise KafkaUnavailable(
        ",".join(map(str, client.config["bootstrap_servers"])), f"could not read {tp.topic} from offset {start} within 30 s"
    )
