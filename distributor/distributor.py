"""The distributor loop: consume one upstream stream, forward each message to its routes.

A route with a subscription gets its share of each batch (distributor.routing); others
get the upstream's bytes unchanged.

Exactly-once per hop: each route remembers the mark (tick, position) of the last
message it holds, read from the route topic's tail on start; anything at or below
it is a duplicate from a crash between producing and committing the upstream
offset, and is dropped. The upstream offset is committed only after the route
producers have flushed.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from kafka.structs import OffsetAndMetadata

from distributor.parallel import Learned, RoutingPool, Shaping, route_message, worker_count
from distributor.routing import RouteFilter
from distributor.rowsroute import RowsRoute
from pgfanout.core.codec import default_codec
from pgfanout.core.config import Config, KafkaCluster
from pgfanout.core.errors import KafkaUnavailable, StreamPlace
from pgfanout.core.positions import Mark, mark_from_headers, mark_header, mark_of
from pgfanout.runtime import kafka as kafkautil
from pgfanout.runtime import registry
from pgfanout.runtime.registry import RegistryDecoder

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
POLL_RECORDS = 500
MAX_INFLIGHT = 16  # messages handed to the routing workers and not yet forwarded
COMMIT_SECONDS = 0.2
NOTHING = Mark(-1, -1, -1)


@dataclass
class RouteOut:
    name: str
    cluster_name: str
    cluster: KafkaCluster
    topic: str
    subscription: Shaping = None  # None: the route takes everything, bytes as they are
    last: Mark = NOTHING


def shaping(route: str, config: Config) -> Shaping:
    """What a route makes of each batch: its subscription's share, typed rows, both, or (None) nothing."""
    settings = config.routes[route]
    share = RouteFilter(route, settings.tables) if settings.tables is not None else None
    return RowsRoute(route, share) if settings.format == "rows" else share


class Distributor:
    def __init__(self, config: Config, name: str):
        self.name = f"distributor {name}"
        self.group_id = f"pgfanout-distributor-{name}"
        route_names = config.distributors[name].routes
        upstream = config.routes[route_names[0]].upstream
        up_cluster, self.up_topic = config.stream(upstream)
        self.up_cluster = config.kafka[up_cluster]
        self.routes = [RouteOut(r, config.routes[r].kafka, config.kafka[config.routes[r].kafka], config.route_topic(r),
                                shaping(r, config)) for r in route_names]
        self.idle_seconds = 0.0  # poll() itself waits for data
        self.codec = default_codec()
        self.decoder = RegistryDecoder(self.codec, self.up_cluster)
        self.consumer: Any = None
        self.producers: dict[str, Any] = {}
        self.uncommitted: int | None = None  # the upstream offset to commit once the routes have acked
        self.registered = 0  # how many schemas the route clusters' registries were given
        self.committed_at = 0.0
        self.subscriptions = [route.subscription for route in self.routes]
        self.workers = config.distributors[name].workers or worker_count()
        self.pool: RoutingPool | None = None
        self.inflight: deque[tuple[int, bytes, Any]] = deque()  # (offset, value, pending result), in stream order

    def connect(self) -> None:
        registry.load(self.up_cluster, self.codec)
        self._register_downstream()
        for route in self.routes:
            kafkautil.ensure_topic(route.cluster, route.topic, MAX_MESSAGE_BYTES)
            route.last = self._tail_mark(route)
        if any(route.subscription is not None for route in self.routes) and self.workers > 1:
            # forked now: the schemas are loaded and no Kafka client (with its threads) exists yet
            self.pool = RoutingPool(self.codec, self.decoder, self.subscriptions, self.workers)
        for route in self.routes:
            if route.cluster_name not in self.producers:
                self.producers[route.cluster_name] = kafkautil.producer(route.cluster, MAX_MESSAGE_BYTES)
        self.uncommitted = None
        self.inflight.clear()
        self.consumer = kafkautil.consumer(self.up_cluster, group_id=self.group_id)
        tp = kafkautil.partition(self.up_topic)
        self.consumer.assign([tp])
        committed = self.consumer.committed(tp)
        if committed is None:
            self.consumer.seek_to_beginning(tp)
        else:
            self.consumer.seek(tp, committed)
        log.info("%s ready: %s from offset %s -> %s", self.name, self.up_topic, committed if committed is not None else "start",
                 ", ".join(f"{r.topic} (last {tuple(r.last)})" for r in self.routes))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        self.inflight.clear()
        for producer in self.producers.values():
            producer.close(timeout=5)
        self.producers = {}
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None

    def work(self) -> bool:
        if self.pool is not None:
            return self._work_in_parallel()
        tp = kafkautil.partition(self.up_topic)
        records = self.consumer.poll(timeout_ms=100, max_records=POLL_RECORDS).get(tp, [])
        if not records:
            self._flush_and_commit(tp)
            return False
        filtering = any(route.subscription is not None for route in self.routes)
        for record in records:
            if filtering:
                mark, outputs, learned = route_message(self.codec, self.decoder, self.subscriptions, record.value,
                                                       StreamPlace(self.up_topic, 0, record.offset))
                self._learn(learned)
            else:
                mark, outputs = self._mark(record), [None] * len(self.routes)
            self._forward(mark, record.value, outputs)
        self.uncommitted = records[-1].offset + 1
        if time.monotonic() - self.committed_at >= COMMIT_SECONDS:
            self._flush_and_commit(tp)
        return True

    def _forward(self, mark: Mark, value: bytes, outputs: list[bytes | None]) -> None:
        """Send a message to every route that does not hold it yet: its own share, or (None) the message as is."""
        for route, output in zip(self.routes, outputs, strict=True):
            if mark > route.last:
                self.producers[route.cluster_name].send(route.topic, value=value if output is None else output,
                                                        headers=mark_header(mark))
                route.last = mark

    def _mark(self, record: Any) -> Mark:
        """A message's mark: from its header when our agent or distributor wrote one, else from its body.

        Forwarding by header costs no decoding, which is most of a pass-through distributor's work. A
        message naming a schema this process does not know is decoded anyway: that loads the schema from
        the upstream registry, and it is registered downstream before the message goes there.
        """
        mark = mark_from_headers(record.headers)
        if mark is not None and self.codec.knows(record.value):
            return mark
        kind, message = self.decoder.decode(record.value, StreamPlace(self.up_topic, 0, record.offset))
        if mark is None:
            mark = mark_of(kind, message)
        self._learn()
        return mark

    def _learn(self, learned: Learned = ()) -> None:
        """Register downstream whatever schema this process learned (from the upstream registry, or made for
        a rows route while routing) before a message that uses it goes there."""
        for _, text in learned:
            self.codec.learn(text)
        if self.codec.schema_count != self.registered:
            self._register_downstream()

    def _register_downstream(self) -> None:
        for cluster in {route.cluster_name: route.cluster for route in self.routes}.values():
            registry.register(cluster, self.codec)  # what it forwards must stay readable downstream
        self.registered = self.codec.schema_count

    def _work_in_parallel(self) -> bool:
        assert self.pool is not None
        tp = kafkautil.partition(self.up_topic)
        room = MAX_INFLIGHT - len(self.inflight)
        records = self.consumer.poll(timeout_ms=0 if self.inflight else 100, max_records=max(room, 1)).get(tp, [])
        for record in records:
            where = StreamPlace(self.up_topic, 0, record.offset)
            if not self.codec.knows(record.value):
                self._mark(record)  # learns the schema here too, and registers it downstream
            self.inflight.append((record.offset, record.value, self.pool.submit(record.value, where)))
        # forward from the front only, so the routes get the stream's order; wait for the oldest when
        # nothing new came or the queue is full
        while self.inflight and (self.inflight[0][2].ready() or not records or len(self.inflight) >= MAX_INFLIGHT):
            offset, value, pending = self.inflight.popleft()
            mark, outputs, learned = self.pool.result(pending)
            self._learn(learned)
            self._forward(mark, value, outputs)
            self.uncommitted = offset + 1
        if not records and not self.inflight:
            self._flush_and_commit(tp)
            return False
        if time.monotonic() - self.committed_at >= COMMIT_SECONDS:
            self._flush_and_commit(tp)
        return True

    def _flush_and_commit(self, tp: Any) -> None:
        """Wait for the routes' acks, then commit the upstream offset: never the other way round.

        Done every COMMIT_SECONDS or when idle, not after every poll: sends are not delayed by it (the
        producers send at once), and the next poll's work overlaps the acks of this one's.
        """
        if self.uncommitted is None:
            return
        for cluster_name, producer in self.producers.items():
            try:
                producer.flush(timeout=60)
            except Exception as exc:
                raise KafkaUnavailable(cluster_name, f"forwarding to routes did not complete: {exc}") from exc
        self.consumer.commit({tp: OffsetAndMetadata(self.uncommitted, "", -1)})
        self.uncommitted, self.committed_at = None, time.monotonic()

    def _tail_mark(self, route: RouteOut) -> Mark:
        last = kafkautil.last_message(route.cluster, route.topic, self.codec.decode)
        return NOTHING if last is None else mark_of(*last)
