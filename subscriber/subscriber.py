"""The subscriber loop: consume a route, apply each source transaction atomically and in order.

The position (and the route offset it came from) is written in the same replica
transaction as the changes, PgQ-style: on restart the subscriber reads it back,
seeks the route just past it, and ``next_step`` skips repeats and stops at gaps.
Consecutive small transactions are grouped into one replica transaction (as
Sybase's DSI does); a group always holds whole source transactions.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

import psycopg

from pgfanout import kafka as kafkautil
from pgfanout.codec import default_codec
from pgfanout.config import Config
from pgfanout.errors import PoisonMessage
from pgfanout.pg import connect
from pgfanout.positions import Step, next_step
from subscriber.apply import apply_changes

log = logging.getLogger(__name__)

STATE_DDL = [
    "CREATE SCHEMA IF NOT EXISTS pgfanout_replica",
    """CREATE TABLE IF NOT EXISTS pgfanout_replica.position (
        subscriber text PRIMARY KEY,
        source text NOT NULL,
        position bigint NOT NULL,
        tick_id bigint NOT NULL,
        topic text NOT NULL,
        kafka_offset bigint NOT NULL,
        source_time timestamptz,
        applied_at timestamptz NOT NULL DEFAULT clock_timestamp())""",
]

SAVE_POSITION = """
INSERT INTO pgfanout_replica.position AS p
    (subscriber, source, position, tick_id, topic, kafka_offset, source_time, applied_at)
VALUES (%(subscriber)s, %(source)s, %(position)s, %(tick_id)s, %(topic)s, %(offset)s, %(source_time)s, clock_timestamp())
ON CONFLICT (subscriber) DO UPDATE SET position = EXCLUDED.position, tick_id = EXCLUDED.tick_id,
    topic = EXCLUDED.topic, kafka_offset = EXCLUDED.kafka_offset, source_time = EXCLUDED.source_time,
    applied_at = EXCLUDED.applied_at
"""


def ensure_state(conn: psycopg.Connection) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgfanout_replica.state'))")
        for statement in STATE_DDL:
            conn.execute(statement)


class Subscriber:
    def __init__(self, config: Config, name: str):
        self.name = f"subscriber {name}"
        self.subscriber = name
        self.settings = config.subscribers[name]
        cluster_name, self.topic = config.stream(self.settings.route)
        self.cluster = config.kafka[cluster_name]
        self.source = config.origin_source(self.settings.route)
        self.idle_seconds = 0.0  # poll() waits for data
        self.codec = default_codec()
        self.conn: psycopg.Connection | None = None
        self.consumer: Any = None
        self.position = 0
        self.tick_id = 0
        self.source_time: datetime | None = None

    def connect(self) -> None:
        self.conn = connect(self.settings, f"pgfanout-subscriber-{self.subscriber}")
        ensure_state(self.conn)
        with self.conn.transaction():
            # The applier's own changes must not fire user triggers or re-check foreign keys.
            self.conn.execute("SET session_replication_role = replica")
            row = self.conn.execute(
                "SELECT position, tick_id, kafka_offset, topic FROM pgfanout_replica.position WHERE subscriber = %s",
                (self.subscriber,)).fetchone()
        self.consumer = kafkautil.consumer(self.cluster)
        tp = kafkautil.partition(self.topic)
        self.consumer.assign([tp])
        if row is None:
            self.position, self.tick_id = 0, 0
            self.consumer.seek_to_beginning(tp)
        else:
            self.position, self.tick_id, offset, topic = row
            if topic != self.topic:
                log.warning("%s: stored position came from topic %s, now reading %s", self.name, topic, self.topic)
            self.consumer.seek(tp, offset + 1)
        log.info("%s ready: position %d, reading %s", self.name, self.position, self.topic)

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def work(self) -> bool:
        tp = kafkautil.partition(self.topic)
        records = self.consumer.poll(timeout_ms=100, max_records=self.settings.group_max_transactions).get(tp, [])
        if not records:
            return False
        self._apply_group(records)
        return True

    def _apply_group(self, records: list[Any]) -> None:
        """Apply whole transactions in one replica transaction; commit nothing if any fails.

        A group is closed after group_max_ms even if records remain; the consumer is
        then rewound to the first record left out.
        """
        assert self.conn is not None
        position, tick_id, source_time = self.position, self.tick_id, self.source_time
        applied, last_offset = 0, records[-1].offset
        deadline = time.monotonic() + self.settings.group_max_ms / 1000
        with self.conn.transaction(), self.conn.cursor() as cur:
            for index, record in enumerate(records):
                where = f"{self.topic}[0]@{record.offset}"
                kind, message = self.codec.decode(record.value, where)
                if kind == "Transaction" and next_step(position, message["position"], where) is Step.APPLY:
                    self._apply_one(cur, message, where)
                    position = message["position"]
                    applied += 1
                tick_id, source_time = message["tick_id"], message["tick_time"]
                if time.monotonic() > deadline and index < len(records) - 1:
                    last_offset = record.offset
                    break
            cur.execute(SAVE_POSITION, {"subscriber": self.subscriber, "source": self.source, "position": position,
                                        "tick_id": tick_id, "topic": self.topic, "offset": last_offset,
                                        "source_time": source_time})
        if last_offset != records[-1].offset:
            self.consumer.seek(kafkautil.partition(self.topic), last_offset + 1)
        self.position, self.tick_id, self.source_time = position, tick_id, source_time
        if applied:
            log.debug("%s: applied %d transactions up to position %d", self.name, applied, position)

    def _apply_one(self, cur: psycopg.Cursor, message: dict[str, Any], where: str) -> None:
        where = f"{where} position {message['position']} (source {message['source']} xid {message['xid']})"
        try:
            apply_changes(cur, message["changes"], where)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            raise PoisonMessage(
                f"transaction at {where} failed to apply, nothing of it was committed: "
                f"{type(exc).__name__}: {str(exc).strip()}") from exc
