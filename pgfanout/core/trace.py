"""Trace markers: per-hop latency, measured by a transaction that travels the stream like any other.

``pgfanout trace`` (or the agent every ``trace_interval_seconds``) inserts a row into the primary's
``pgfanout.trace``, whose capture publishes it in order with everything else. Every hop adds its
stamps to a Kafka record header of the message that carries it: the agent when it publishes, each
distributor when it receives and when it forwards, the subscriber when it receives; the subscriber
records the marker, with every stamp and its own commit time, in the replica transaction that applies
it (``pgfanout_replica.trace``). Routes always carry markers, whatever their subscription; replicas
never hold them as rows.

Clocks. A stamp is its host's clock. A hop inside one daemon (received to forwarded, received to
applied) is measured on one clock and is exact; a hop between two hosts (commit on the primary to
published, forwarded to received) also holds the difference between their clocks, and a negative one
shows that the receiving host's clock is behind. The hops add up to the end-to-end figure by
construction: each is the difference of two consecutive stamps.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

TRACE_SCHEMA, TRACE_TABLE = "pgfanout", "trace"
STAMPS_HEADER = "pgfanout-stamps"
COMMITTED = "committed on the primary"
Headers = list[tuple[str, bytes]]


def is_trace(schema_name: str, table_name: str) -> bool:
    return schema_name == TRACE_SCHEMA and table_name == TRACE_TABLE


class Stamp(NamedTuple):
    event: str  # "published by agent shop", "received by distributor hq"...
    at: float  # epoch seconds, on the clock of the host that made it


def stamps_of(headers: Sequence[tuple[str, bytes]] | None) -> list[Stamp]:
    for key, value in headers or ():
        if key == STAMPS_HEADER:
            return [Stamp(event, float(at)) for event, at in json.loads(value)]
    return []


def stamped(headers: Sequence[tuple[str, bytes]] | None, *stamps: Stamp) -> Headers:
    """``headers`` with ``stamps`` added to the stamps header (made where there is none)."""
    kept = [(key, value) for key, value in headers or () if key != STAMPS_HEADER]
    value = json.dumps([[s.event, round(s.at, 6)] for s in [*stamps_of(headers), *stamps]]).encode()
    return [*kept, (STAMPS_HEADER, value)]


def carries_trace(headers: Sequence[tuple[str, bytes]] | None) -> bool:
    return any(key == STAMPS_HEADER for key, _ in headers or ())


class Hop(NamedTuple):
    name: str  # "published by agent shop -> received by distributor hq"
    seconds: float
    two_clocks: bool  # stamped by two daemons (or the primary): includes the difference of their hosts' clocks


def hops(stamps: Sequence[Stamp]) -> list[Hop]:
    """The hops between consecutive stamps; a hop stays on one host when both stamps name the same daemon."""
    return [
        Hop(f"{a.event} -> {b.event}", b.at - a.at, _daemon(a.event) != _daemon(b.event))
        for a, b in zip(stamps, stamps[1:], strict=False)
    ]


def _daemon(event: str) -> str:
    return event.split(" by ", 1)[-1] if " by " in event else event


def end_to_end(stamps: Sequence[Stamp]) -> float:
    return stamps[-1].at - stamps[0].at if len(stamps) > 1 else 0.0
