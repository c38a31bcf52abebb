"""`pgfanout import`: apply a log shipping file to a subscriber that has no Kafka.

The file is verified whole first (pgfanout.core.shipfile); then its messages go to the
subscriber's own applier (subscriber.applier), so the position rules are the same as from
Kafka: what the replica already holds is skipped, a file that starts after a gap is refused
before anything is applied, and each group commits with its position. The stored offset is
"unknown": a subscriber that later runs from Kafka finds its place by position.
"""

from __future__ import annotations

from pathlib import Path

from pgfanout.core import shipfile
from pgfanout.core.codec import default_codec
from pgfanout.core.config import Config
from pgfanout.core.errors import PositionError, StreamGap, StreamPlace
from subscriber.applier import ReplicaSession
from subscriber.state import UNKNOWN_OFFSET


def import_file(config: Config, subscriber: str, path: Path) -> str:
    """Apply the file; a line saying what was applied."""
    codec = default_codec()
    shipment = shipfile.verify(path, codec)  # the file carries its schemas: no registry topic to ask
    route = config.subscribers[subscriber].route
    topic = config.stream(route)[1]
    if shipment.route != route:
        raise PositionError(
            f"{path} holds route {shipment.route}, but subscriber {subscriber} takes route {route}; nothing was applied"
        )
    replica = ReplicaSession.open(config, subscriber)
    replica.serves_snapshots = False  # a compare asks the running subscriber, not an import
    try:
        applied = replica.applied.position
        if shipment.last_position <= applied:
            return (
                f"{path} holds positions {shipment.first_position}..{shipment.last_position}, and "
                f"subscriber {subscriber} already applied up to {applied}: nothing to apply (imported before?)"
            )
        if shipment.first_position > applied + 1:
            raise StreamGap(
                f"{path} starts at position {shipment.first_position}, but subscriber {subscriber} has "
                f"applied up to {applied}: import the file holding positions "
                f"{applied + 1}..{shipment.first_position - 1} first; nothing was applied"
            )
        for offset, value in shipfile.messages(path):
            where = StreamPlace(topic, 0, offset, path.name)
            replica.take(*codec.decode(value, where), where, UNKNOWN_OFFSET)
            if replica.group.whole and replica.group_full():
                replica.commit()
        if not replica.group.whole:
            raise PositionError(
                f"{path} ends inside the transaction at position {replica.group.pending.position}; the export was cut short"
            )
        replica.commit()
        return (
            f"imported {path}: subscriber {subscriber} now at position {replica.applied.position} "
            f"(was {applied}; the file holds {shipment.first_position}..{shipment.last_position})"
        )
    finally:
        replica.close()
