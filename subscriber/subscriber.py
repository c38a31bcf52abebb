"""The subscriber daemon: a route's records, read from Kafka, taken by the replica applier.

Its parts: subscriber.source reads the route after the stored position, subscriber.applier
applies each source transaction atomically and in order with its position, and
subscriber.grouping decides what each part is and when the replica transaction commits. On a
gap in the stream (retention deleted what it needs) the subscriber stops, or with ``on_gap:
resync`` copies every table again by itself and goes on.
"""

from __future__ import annotations

import logging

from pgfanout.core.codec import default_codec
from pgfanout.core.config import Config
from pgfanout.core.errors import StreamGap, StreamPlace
from pgfanout.core.positions import last_position
from pgfanout.runtime import registry
from pgfanout.runtime.daemon import SessionDaemon
from pgfanout.runtime.pg import connect
from pgfanout.runtime.registry import RegistryDecoder
from subscriber.applier import ReplicaSession
from subscriber.grouping import commit_due
from subscriber.materialize import Materializer
from subscriber.scheduled import ScheduledCompare
from subscriber.source import RouteReader

log = logging.getLogger(__name__)


class SubscriberSession:
    """A connected subscriber: its replica applier and its route reader, both open."""

    def __init__(self, replica: ReplicaSession, route: RouteReader, decoder: RegistryDecoder):
        self.replica, self.route, self.decoder = replica, route, decoder

    def work(self) -> bool:
        replica = self.replica
        records = self.route.poll()
        if records:
            replica.metrics.bytes.inc(sum(len(record.value) for record in records))
            replica.metrics.unread(self.route.unread_after(records[-1].offset))
        for record in records:
            where = StreamPlace(self.route.topic, 0, record.offset)
            replica.take(*self.decoder.decode(record.value, where), where, record.offset, record.headers)
            if replica.group.whole and replica.group_full():
                replica.commit()
        if commit_due(replica.group, replica.committed_offset):
            replica.commit()
        return bool(records)

    def close(self) -> None:
        try:
            self.route.close()
        finally:
            self.replica.close()


class Subscriber(SessionDaemon[SubscriberSession]):
    idle_seconds = 0.0  # polling waits for data

    def __init__(self, config: Config, name: str):
        self.name = f"subscriber {name}"
        self.config, self.subscriber = config, name
        cluster_name, self.topic = config.stream(config.subscribers[name].route)
        self.cluster = config.kafka[cluster_name]
        self.codec = default_codec()
        self.decoder = RegistryDecoder(self.codec, self.cluster)
        self.session: SubscriberSession | None = None
        self.scheduled = ScheduledCompare(config, name) if config.subscribers[name].compare else None

    def connect(self) -> SubscriberSession:
        replica = ReplicaSession.open(self.config, self.subscriber)
        try:
            registry.load(self.cluster, self.codec)
            route = RouteReader.open(self.cluster, self.topic, replica.stored, replica.applied.position, self._last_position)
        except BaseException:
            replica.close()
            raise
        replica.start_at(route.offset)
        self.session = SubscriberSession(replica, route, self.decoder)
        log.info("%s ready: position %d, reading %s", self.name, replica.applied.position, self.topic)
        if self.scheduled is not None and not self.scheduled.is_alive():
            self.scheduled.start()  # once the applier runs: the compare needs it to reach the compare's ticks
        return self.session

    def work(self) -> bool:
        try:
            return super().work()
        except StreamGap as gap:
            if self.config.subscribers[self.subscriber].on_gap != "resync":
                raise
            log.error("%s: %s", self.name, gap)
            log.warning("%s: on_gap is resync: copying every table again", self.name)
            self.close()  # gives up the applier lock and rolls back the open replica transaction
            Materializer(self.config, self.subscriber).resync()
            self.connect()
            return True

    def stopped(self, error: BaseException) -> None:
        """Leave word in the replica of why the subscriber stops (`pgfanout status` shows it)."""
        at = getattr(error, "at", None)
        with connect(self.config.subscribers[self.subscriber], f"pgfanout-subscriber-{self.subscriber}") as conn:
            conn.execute(
                "INSERT INTO pgfanout_replica.stopped (subscriber, error, position, topic, kafka_offset) "
                "VALUES (%(s)s, %(e)s, %(p)s, %(t)s, %(o)s) ON CONFLICT (subscriber) DO UPDATE SET error = %(e)s, "
                "position = %(p)s, topic = %(t)s, kafka_offset = %(o)s, stopped_at = clock_timestamp()",
                {
                    "s": self.subscriber,
                    "e": str(error),
                    "p": getattr(error, "position", None),
                    "t": at.topic if at else None,
                    "o": at.offset if at else None,
                },
            )

    def _last_position(self, value: bytes, offset: int) -> int | None:
        return last_position(*self.decoder.decode(value, StreamPlace(self.topic, 0, offset)))
