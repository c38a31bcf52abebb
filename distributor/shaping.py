"""What each route makes of a message: its subscription's share, typed rows, both, or the message as it is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from distributor.routing import RouteFilter
from distributor.rowsroute import RowsRoute
from pgfanout.core.config import Config
from pgfanout.core.errors import Where
from pgfanout.core.positions import Mark, mark_of

Shaping = RouteFilter | RowsRoute | None  # None: the route takes the message as it is
Learned = list[tuple[str, str]]  # schemas made while routing, to register before the message goes out


class Routed(NamedTuple):
    mark: Mark
    outputs: list[bytes | None]  # per route: its own message, or None for the message as it is
    learned: Learned


def shaping(route: str, config: Config) -> Shaping:
    settings = config.routes[route]
    share = RouteFilter(route, settings.tables) if settings.tables is not None else None
    return RowsRoute(route, share) if settings.format == "rows" else share


def route_message(codec: Any, decoder: Any, subscriptions: Sequence[Shaping], value: bytes, where: Where) -> Routed:
    """Decode a message and make each shaping route's copy of it."""
    kind, message = decoder.decode(value, where)
    outputs = [
        codec.encode(s.kind, s.batch(message, where)) if s is not None and kind == "Batch" else None for s in subscriptions
    ]
    learned = [schema for s in subscriptions if isinstance(s, RowsRoute) for schema in s.take_learned()]
    return Routed(mark_of(kind, message), outputs, learned)
