"""`pgfanout import`: apply a log shipping file to a subscriber that has no Kafka.

The file is verified whole first (pgfanout.core.shipfile); then its messages go through the
subscriber's own apply path, so the position rules are the same as from Kafka: what the
replica already holds is skipped, a file that starts after a gap is refused before
anything is applied, and each group commits with its position. The stored offset is
"unknown": a subscriber that later runs from Kafka finds its place by position.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from pgfanout.core import shipfile
from pgfanout.core.config import Config
from pgfanout.core.errors import PositionError, StreamGap
from pgfanout.core.positions import WHOLE
from subscriber.state import UNKNOWN_OFFSET
from subscriber.subscriber import Subscriber

log = logging.getLogger(__name__)


class Shipped(NamedTuple):
    offset: int
    value: bytes


class Importer(Subscriber):
    def __init__(self, config: Config, name: str, path: Path):
        super().__init__(config, name)
        self.path = path
        self.shipment = shipfile.verify(path, self.codec)
        self.decoder = self.codec  # the file carries its schemas; there is no registry topic to ask

    def _where(self, record: Shipped) -> str:
        return f"{self.path.name} ({self.topic}[0]@{record.offset})"

    def _stored_offset(self, record: Shipped) -> int:
        return UNKNOWN_OFFSET

    def run(self) -> str:
        shipment, route = self.shipment, self.settings.route
        if shipment.route != route:
            raise PositionError(f"{self.path} holds route {shipment.route}, but subscriber {self.subscriber} takes "
                                f"route {route}; nothing was applied")
        self._connect_replica()
        try:
            applied = self.applied.position
            if shipment.last_position <= applied:
                return (f"{self.path} holds positions {shipment.first_position}..{shipment.last_position}, and "
                        f"subscriber {self.subscriber} already applied up to {applied}: nothing to apply "
                        "(imported before?)")
            if shipment.first_position > applied + 1:
                raise StreamGap(f"{self.path} starts at position {shipment.first_position}, but subscriber "
                                f"{self.subscriber} has applied up to {applied}: import the file holding positions "
                                f"{applied + 1}..{shipment.first_position - 1} first; nothing was applied")
            for offset, value in shipfile.messages(self.path):
                self._apply_message(Shipped(offset, value))
                if self.group.pending.chunk == WHOLE and self._group_full():
                    self._commit()
            if self.group.pending.chunk != WHOLE:
                raise PositionError(f"{self.path} ends inside the transaction at position "
                                    f"{self.group.pending.position}; the export was cut short")
            self._commit()
            return (f"imported {self.path}: subscriber {self.subscriber} now at position {self.applied.position} "
                    f"(was {applied}; the file holds {shipment.first_position}..{shipment.last_position})")
        finally:
            self.close()
