"""The distributor loop: consume one upstream stream, forward each message to its routes.

A route with a subscription gets its share of each batch (distributor.routing); others
get the upstream's bytes unchanged. Routing runs inline or on a pool of worker processes
(distributor.executors); the loop is the same: messages are forwarded in stream order.

Exactly-once per hop: each route remembers the mark (tick, position) of the last
message it holds, read from the route topic's tail on start; anything at or below
it is a duplicate from a crash between producing and committing the upstream
offset, and is dropped. The upstream offset is committed only after the route
producers have flushed.

After a failover, the upstream may hold messages of the deposed primary's generation with positions the
new generation published again (pgfanout.core.generations): they are dropped here, each one logged.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

from kafka.structs import OffsetAndMetadata

from distributor.executors import Inline, RoutingPool, worker_count
from distributor.shaping import Learned, Routed, Shaping, route_message, shaping
from kafka import KafkaConsumer, KafkaProducer
from pgfanout.core.codec import default_codec
from pgfanout.core.config import Config, KafkaCluster
from pgfanout.core.errors import KafkaUnavailable, PositionError, StreamPlace, Where
from pgfanout.core.generations import (
    Lineage,
    current,
    generation_from_headers,
    generation_header,
    kept_by_later,
    lineage_of,
    primary_of,
)
from pgfanout.core.positions import WHOLE, Mark, last_position, mark_from_headers, mark_header, mark_of
from pgfanout.core.trace import STAMPS_HEADER, Stamp, carries_trace, stamped
from pgfanout.runtime import kafka as kafkautil
from pgfanout.runtime import registry
from pgfanout.runtime.daemon import SessionDaemon
from pgfanout.runtime.metrics import CONSUMER_LAG, ROUTE_SECONDS, RouteMetrics
from pgfanout.runtime.registry import RegistryDecoder

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
COMMIT_SECONDS = 0.2
COMMIT_POLL_MS = int(COMMIT_SECONDS * 1000)
IDLE_POLL_MS = 1000  # a poll returns as soon as a record arrives: waiting long when idle costs no latency
NOTHING = Mark(-1, -1, -1)


class Inflight(NamedTuple):
    record: Any  # as the consumer polled it
    pending: Any  # its routing (distributor.executors)
    polled: float  # perf_counter() when it was polled
    received_at: float  # and the clock then, for a trace marker's stamp


@dataclass
class RouteOut:
    name: str
    cluster_name: str
    cluster: KafkaCluster
    topic: str
    subscription: Shaping = None  # None: the route takes everything, bytes as they are
    last: Mark = NOTHING
    metrics: RouteMetrics | None = None

    @staticmethod
    def completed(mark: Mark) -> int:
        """The last position a route holds whole once it holds ``mark`` (0 for none)."""
        return max(0, mark.position if mark.chunk == WHOLE else mark.position - 1)


class Distributor(SessionDaemon["DistributorSession"]):
    idle_seconds = 0.0  # poll() itself waits for data

    def __init__(self, config: Config, name: str):
        self.name = f"distributor {name}"
        self.group_id = f"pgfanout-distributor-{name}"
        route_names = config.distributors[name].routes
        up_cluster, self.up_topic = config.stream(config.routes[route_names[0]].upstream)
        self.up_cluster = config.kafka[up_cluster]
        self.routes = [
            RouteOut(r, config.routes[r].kafka, config.kafka[config.routes[r].kafka], config.route_topic(r), shaping(r, config))
            for r in route_names
        ]
        self.workers = config.distributors[name].workers or worker_count()
        self.codec = default_codec()
        self.decoder = RegistryDecoder(self.codec, self.up_cluster)
        self.session: DistributorSession | None = None

    def connect(self) -> DistributorSession:
        self.session = DistributorSession.open(self)
        return self.session


class DistributorSession:
    """A connected distributor: the upstream consumer, a producer per route cluster, the routing executor."""

    def __init__(
        self,
        distributor: Distributor,
        consumer: KafkaConsumer,
        producers: dict[str, KafkaProducer],
        executor: Inline | RoutingPool,
    ):
        self.d, self.consumer, self.producers, self.executor = distributor, consumer, producers, executor
        self.codec, self.routes, self.up_topic = distributor.codec, distributor.routes, distributor.up_topic
        self.partition = kafkautil.partition(self.up_topic)
        self.inflight: deque[Inflight] = deque()  # in stream order
        self.received_by, self.forwarded_by = f"received by {distributor.name}", f"forwarded by {distributor.name}"
        self.uncommitted: int | None = None  # the upstream offset to commit once the routes have acked
        self.committed_at = 0.0
        self.registered = 0  # how many schemas the route clusters' registries were given
        self.route_seconds = ROUTE_SECONDS.labels(distributor.name)
        self.unread = CONSUMER_LAG.labels(distributor.name, self.up_topic)
        self.lineage: Lineage = ()  # the upstream's generations, as far as this distributor has seen
        for route in self.routes:
            route.metrics = RouteMetrics(route.name)

    @classmethod
    def open(cls, d: Distributor) -> DistributorSession:
        registry.load(d.up_cluster, d.codec)
        registered = d.codec.schema_count
        for cluster in {route.cluster_name: route.cluster for route in d.routes}.values():
            registry.register(cluster, d.codec)  # what it forwards must stay readable downstream
        for route in d.routes:
            kafkautil.ensure_topic(route.cluster, route.topic, MAX_MESSAGE_BYTES)
        kafkautil.outlive_orphaned_writes()  # an earlier session's last sends land before the tails are read
        for route in d.routes:
            last = kafkautil.last_message(route.cluster, route.topic, d.codec.decode)
            route.last = NOTHING if last is None else mark_of(*last)
        subscriptions = [route.subscription for route in d.routes]
        filtering = any(s is not None for s in subscriptions)
        # forked now, if at all: the schemas are loaded and no Kafka client (with its threads) exists yet
        executor: Inline | RoutingPool = (
            RoutingPool(d.codec, d.decoder, subscriptions, d.workers) if filtering and d.workers > 1 else Inline()
        )
        producers: dict[str, KafkaProducer] = {}
        consumer = None
        try:
            for route in d.routes:
                if route.cluster_name not in producers:
                    producers[route.cluster_name] = kafkautil.producer(route.cluster, MAX_MESSAGE_BYTES)
            consumer = kafkautil.consumer(d.up_cluster, group_id=d.group_id)
            tp = kafkautil.partition(d.up_topic)
            consumer.assign([tp])
            committed = consumer.committed(tp)
            if committed is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
        except BaseException:
            _close_all(executor, producers, consumer)
            raise
        log.info(
            "%s ready: %s from offset %s -> %s",
            d.name,
            d.up_topic,
            committed if committed is not None else "start",
            ", ".join(f"{r.topic} (last {tuple(r.last)})" for r in d.routes),
        )
        session = cls(d, consumer, producers, executor)
        session.registered = registered
        try:
            tail = kafkautil.last_message(d.up_cluster, d.up_topic, d.decoder.decode)
        except BaseException:
            session.close()
            raise
        session.lineage = lineage_of(tail[1]) if tail else ()  # so that a failover's loss window is known at once
        session.learn()
        if isinstance(executor, Inline):
            executor.route = session.route if filtering else session.pass_through
        return session

    def close(self) -> None:
        self.inflight.clear()
        _close_all(self.executor, self.producers, self.consumer)

    def work(self) -> bool:
        room = self.executor.capacity - len(self.inflight)
        # idle with offsets to commit: the poll ends in time to commit them (below) if nothing comes
        wait = 0 if self.inflight else COMMIT_POLL_MS if self.uncommitted is not None else IDLE_POLL_MS
        records = self.consumer.poll(timeout_ms=wait, max_records=max(room, 1)).get(self.partition, [])
        for record in records:
            where = StreamPlace(self.up_topic, 0, record.offset)
            if not self.inflight and self.held_by_every_route(record):
                self.uncommitted = record.offset + 1  # forwarded before a restart: not routed again
                continue
            if self.superseded(record, where):
                if not self.inflight:
                    self.uncommitted = record.offset + 1
                continue
            if not self.codec.knows(record.value):
                self.mark(record, where)  # learns the schema here, and registers it downstream
            self.inflight.append(Inflight(record, self.executor.submit(record, where), time.perf_counter(), time.time()))
        # forward from the front only, so the routes get the stream's order; wait for the oldest when
        # nothing new came or the queue is full
        while self.inflight and (self.inflight[0].pending.ready() or not records or len(self.inflight) >= self.executor.capacity):
            item = self.inflight.popleft()
            routed = item.pending.result()
            self.learn(routed.learned)
            self.forward(routed, item)
            self.route_seconds.observe(time.perf_counter() - item.polled)
            self.uncommitted = item.record.offset + 1
        if records:
            highwater = self.consumer.highwater(self.partition)
            if highwater is not None:
                self.unread.set(max(0, highwater - records[-1].offset - 1))
        if not records and not self.inflight:
            if time.monotonic() - self.committed_at >= COMMIT_SECONDS:
                self.flush_and_commit()  # not after every record of a slow stream: each commit is a request
            return False
        if time.monotonic() - self.committed_at >= COMMIT_SECONDS:
            self.flush_and_commit()
        return True

    def held_by_every_route(self, record: Any) -> bool:
        """Whether every route holds this message already (by its mark's header). Such a message is not routed
        again: with a configuration changed since (a renamed column), it might no longer route."""
        mark = mark_from_headers(record.headers)
        return mark is not None and all(not mark > route.last for route in self.routes)

    def superseded(self, record: Any, where: StreamPlace) -> bool:
        """Whether a message belongs to an older generation and holds only positions a later one published
        again: a failover's loss window, or what a deposed primary still published. Dropped, and logged."""
        generation = generation_from_headers(record.headers)
        if generation > current(self.lineage).generation:  # a switchover or failover: learn where it starts
            self.lineage = lineage_of(self.d.decoder.decode(record.value, where)[1])
            return False
        kept = kept_by_later(self.lineage, generation)
        if kept is None:  # the latest generation: every message but after a failover or a deposed primary's
            return False
        mark = mark_from_headers(record.headers)
        if mark is not None and mark.position <= kept:
            return False
        kind, message = self.d.decoder.decode(record.value, where)
        last = last_position(kind, message)
        if last is None or last <= kept:
            return False
        first = message["position"] if kind == "Heartbeat" else message["transactions"][0]["position"]  # type: ignore[typeddict-item]
        later = min((g for g in self.lineage if g.generation > generation), key=lambda g: g.generation)
        if first <= kept:
            raise PositionError(
                f"{self.d.name}: the message at {where} (generation {generation}) holds positions {first}..{last}, "
                f"and generation {later.generation} published those from {kept + 1} on again; a message cannot be "
                "cut there. Stop and inspect the topic",
                at=where,
                position=kept + 1,
            )
        log.error(
            "%s: dropped the message at %s: positions %s..%s of generation %d, which generation %d (primary %s) "
            "published again from position %d on; a deposed primary published them, and they are lost",
            self.d.name,
            where,
            first,
            last,
            generation,
            later.generation,
            primary_of(self.lineage, later.generation) or "the source's database",
            kept + 1,
        )
        return True

    def route(self, record: Any, where: Where) -> Routed:
        return route_message(self.codec, self.d.decoder, [r.subscription for r in self.routes], record.value, where)

    def pass_through(self, record: Any, where: Where) -> Routed:
        """No route has a subscription: every route gets the message as it is, known by its mark."""
        return Routed(self.mark(record, where), [None] * len(self.routes), [])

    def forward(self, routed: Routed, item: Inflight) -> None:
        """Send a message to every route that does not hold it yet: its own share, or (None) the message as is.
        One that carries a trace marker gets this hop's stamps added to the upstream's."""
        headers = mark_header(routed.mark) + generation_header(generation_from_headers(item.record.headers))
        if carries_trace(item.record.headers):
            upstream = [(key, value) for key, value in item.record.headers if key == STAMPS_HEADER]
            headers = stamped(
                [*headers, *upstream], Stamp(self.received_by, item.received_at), Stamp(self.forwarded_by, time.time())
            )
        for route, output in zip(self.routes, routed.outputs, strict=True):
            if routed.mark > route.last:
                sent = item.record.value if output is None else output
                self.producers[route.cluster_name].send(route.topic, value=sent, headers=headers)
                assert route.metrics is not None
                route.metrics.forwarded(
                    routed.mark.position, max(0, route.completed(routed.mark) - route.completed(route.last)), len(sent)
                )
                route.last = routed.mark

    def mark(self, record: Any, where: Where) -> Mark:
        """A message's mark: from its header when our agent or distributor wrote one, else from its body.

        Forwarding by header costs no decoding, which is most of a pass-through distributor's work. A
        message naming a schema this process does not know is decoded anyway: that loads the schema from
        the upstream registry, and it is registered downstream before the message goes there.
        """
        mark = mark_from_headers(record.headers)
        if mark is not None and self.codec.knows(record.value):
            return mark
        kind, message = self.d.decoder.decode(record.value, where)
        self.learn()
        return mark if mark is not None else mark_of(kind, message)

    def learn(self, learned: Learned = ()) -> None:
        """Register downstream whatever schema this process learned (from the upstream registry, or made for
        a rows route while routing) before a message that uses it goes there."""
        for _, text in learned:
            self.codec.learn(text)
        if self.codec.schema_count != self.registered:
            for cluster in {route.cluster_name: route.cluster for route in self.routes}.values():
                registry.register(cluster, self.codec)
            self.registered = self.codec.schema_count

    def flush_and_commit(self) -> None:
        """Wait for the routes' acks, then commit the upstream offset: never the other way round.

        Done every COMMIT_SECONDS, busy or idle, not after every poll: sends are not delayed by it (the
        producers send at once), and the next poll's work overlaps the acks of this one's.
        """
        if self.uncommitted is None:
            return
        for cluster_name, producer in self.producers.items():
            try:
                producer.flush(timeout=60)
            except Exception as exc:
                raise KafkaUnavailable(cluster_name, f"forwarding to routes did not complete: {exc}") from exc
        self.consumer.commit({self.partition: OffsetAndMetadata(self.uncommitted, "", -1)})
        self.uncommitted, self.committed_at = None, time.monotonic()


def _close_all(executor: Inline | RoutingPool, producers: dict[str, KafkaProducer], consumer: Any) -> None:
    executor.close()
    for producer in producers.values():
        kafkautil.close_producer(producer)
    if consumer is not None:
        consumer.close()
