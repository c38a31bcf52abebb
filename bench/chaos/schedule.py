"""What the chaos run decides without touching anything: which fault comes next, and the account of a run."""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field

KINDS = ("kill", "pause", "kafka", "postgres", "netcut", "diskfull")
DESCRIPTIONS = {
    "kill": "SIGKILL of a daemon (restarted as a supervisor would)",
    "pause": "SIGSTOP, then SIGCONT, of a daemon",
    "kafka": "a Kafka broker killed and started again",
    "postgres": "a PostgreSQL cluster stopped in immediate mode and started again",
    "netcut": "the link to the second tier's Kafka cluster dropped (nftables), then restored",
    "diskfull": "a replica's tablespace (a small tmpfs) filled, then freed",
}


def deck(per_kind: int, rng: random.Random, kinds: tuple[str, ...] = KINDS) -> list[str]:
    """``per_kind`` faults of every kind in a random order, no kind twice in a row where that can be helped
    (two broker restarts back to back test less than a broker restart and a kill)."""
    cards = [kind for kind in kinds for _ in range(per_kind)]
    rng.shuffle(cards)
    for index in range(1, len(cards)):
        if cards[index] == cards[index - 1]:
            for other in range(index + 1, len(cards)):
                if cards[other] != cards[index] and (other + 1 >= len(cards) or cards[other + 1] != cards[index - 1]):
                    cards[index], cards[other] = cards[other], cards[index]
                    break
    return cards


@dataclass
class Injected:
    kind: str
    target: str
    started: float  # seconds since the run began
    ended: float  # when the fault was undone
    recovered: float | None = None  # when a mark written after it was on every replica


@dataclass
class Account:
    """What a run did and found."""

    faults: list[Injected] = field(default_factory=list)
    samples: int = 0
    violations: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unequal: list[str] = field(default_factory=list)
    stopped_by_themselves: list[str] = field(default_factory=list)
    transactions: int = 0
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not (self.violations or self.lost or self.duplicated or self.unequal or self.stopped_by_themselves)

    def rows(self) -> list[dict[str, object]]:
        """One row per fault kind: how many, how many recovered, recovery time median and max (seconds)."""
        rows = []
        for kind in KINDS:
            faults = [f for f in self.faults if f.kind == kind]
            times = [f.recovered - f.ended for f in faults if f.recovered is not None]
            rows.append(
                {
                    "kind": kind,
                    "injected": len(faults),
                    "recovered": len(times),
                    "recovery_median_s": round(statistics.median(times), 2) if times else None,
                    "recovery_max_s": round(max(times), 2) if times else None,
                }
            )
        return rows

    def table(self) -> str:
        lines = [
            "| fault | injected | recovered | recovery median s | recovery max s |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in self.rows():
            lines.append(
                f"| {DESCRIPTIONS[row['kind']]} | {row['injected']} | {row['recovered']} | "
                f"{_or_dash(row['recovery_median_s'])} | {_or_dash(row['recovery_max_s'])} |"
            )
        lines += [
            "",
            "| checked | result |",
            "| --- | --- |",
            f"| transactions committed by the writers | {self.transactions} |",
            f"| replica samples (REPEATABLE READ) | {self.samples} |",
            f"| violations (a total or account count off, a partial transaction) | {len(self.violations)} |",
            f"| lost (committed, missing from a replica's share or from a topic) | {len(self.lost)} |",
            f"| duplicated (a position twice in a topic or applied twice) | {len(self.duplicated)} |",
            f"| replicas unequal to their share of the primary | {len(self.unequal)} |",
            f"| daemons that stopped by themselves | {len(self.stopped_by_themselves)} |",
        ]
        return "\n".join(lines)

    def problems(self) -> list[str]:
        return [*self.violations, *self.lost, *self.duplicated, *self.unequal, *self.stopped_by_themselves]


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def duplicated_or_unordered(name: str, positions: list[int]) -> list[str]:
    """Positions that appear twice, or go backwards, in a stream."""
    found, seen = [], set()
    for previous, position in zip([0, *positions], positions, strict=False):
        if position in seen:
            found.append(f"{name}: position {position} twice")
        elif position <= previous:
            found.append(f"{name}: position {position} after {previous}")
        seen.add(position)
    return found


def missing(name: str, positions: list[int], expected: set[int]) -> list[str]:
    lacking = sorted(expected - set(positions))
    return [f"{name}: lacks position {p}" for p in lacking[:20]] + (
        [f"{name}: and {len(lacking) - 20} more positions"] if len(lacking) > 20 else []
    )


def range_problems(name: str, ranges: list[tuple[int, int]]) -> tuple[list[str], list[str]]:
    """(gaps, overlaps) of a replica's applied position ranges, in order of their first position."""
    gaps, overlaps = [], []
    if ranges and ranges[0][0] != 1:
        gaps.append(f"{name}: applied from position {ranges[0][0]}, not 1")
    for (_, last), (first, _) in zip(ranges, ranges[1:], strict=False):
        if first > last + 1:
            gaps.append(f"{name}: applied positions {last} then {first}")
        elif first <= last:
            overlaps.append(f"{name}: position {first} applied twice (a range ends at {last})")
    return gaps, overlaps
