"""What a peer run reports: each figure per system and round, its ratio to native, and the chart.

Pure functions over the measurements, except ``chart``, which draws the PNG with matplotlib.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    higher_is_better: bool


FIGURES = [
    Figure("tps_ratio_running", "pgbench TPS ratio, replication running", "ratio", True),
    Figure("tps_ratio_apply_stopped", "pgbench TPS ratio, apply stopped", "ratio", True),
    Figure("small_tx_per_s", "100,000 small transactions, start to caught up", "tx/s", True),
    Figure("bulk_update_rows_per_s", "one 1,000,000-row UPDATE, start to caught up", "rows/s", True),
    Figure("lag_p50_ms", "visible lag at 200 tps, p50", "ms", False),
    Figure("lag_p99_ms", "visible lag at 200 tps, p99", "ms", False),
    Figure("host_cpu_cores_200tps", "host CPU at 200 tps", "cores", False),
    Figure("catchup_tx_per_s", "catch-up of a 100,000-transaction backlog", "tx/s", True),
    Figure("initial_copy_s", "initial copy and sync of pgbench scale 10", "s", False),
]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per system and figure: the median of the rounds, their min and max.

    ``rounds`` holds, per round, per system, its figures.
    """
    systems = sorted({system for one in rounds for system in one})
    result: dict[str, dict[str, dict[str, float]]] = {}
    for system in systems:
        result[system] = {}
        for figure in FIGURES:
            values = [one[system][figure.key] for one in rounds if figure.key in one.get(system, {})]
            if values:
                result[system][figure.key] = {
                    "median": round(statistics.median(values), 3),
                    "min": round(min(values), 3),
                    "max": round(max(values), 3),
                }
    return result


def idle(rounds: list[dict[str, dict]]) -> dict[str, dict[str, float]]:
    """Per system and process: the most CPU it used while idle in any round, percent of a core."""
    worst: dict[str, dict[str, float]] = {}
    for one in rounds:
        for system, figures in one.items():
            for process, percent in figures.get("idle_percent_of_a_core", {}).items():
                mine = worst.setdefault(system, {})
                mine[process] = max(mine.get(process, 0.0), percent)
    return worst


def ratios(summarized: dict[str, dict[str, dict[str, float]]], reference: str = "native") -> dict[str, dict[str, float]]:
    """Each system's median as a ratio to the reference's, oriented so that above 1 is better than it.

    For a figure where lower is better (lag, CPU, seconds), the ratio is reference / system.
    """
    base = summarized.get(reference, {})
    result: dict[str, dict[str, float]] = {}
    for system, figures in summarized.items():
        result[system] = {}
        for figure in FIGURES:
            if figure.key not in figures or figure.key not in base:
                continue
            mine, theirs = figures[figure.key]["median"], base[figure.key]["median"]
            if figure.higher_is_better:
                value = mine / theirs if theirs else float("inf")
            else:
                value = theirs / mine if mine else float("inf")
            result[system][figure.key] = round(value, 3)
    return result


def table(summarized: dict[str, dict[str, dict[str, float]]], better: dict[str, dict[str, float]]) -> str:
    """A Markdown table: a row per figure, per system its median (min-max) and its ratio to native."""
    systems = [s for s in ("native", "pgfanout", "slony") if s in summarized]
    head = "| figure | " + " | ".join(systems) + " | " + " | ".join(f"{s} vs native" for s in systems if s != "native") + " |"
    lines = [head, "|" + " --- |" * (1 + len(systems) + len(systems) - ("native" in systems))]
    for figure in FIGURES:
        cells = []
        for system in systems:
            got = summarized[system].get(figure.key)
            cells.append("-" if got is None else f"{_fmt(got['median'])} ({_fmt(got['min'])}-{_fmt(got['max'])})")
        for system in systems:
            if system != "native":
                ratio = better.get(system, {}).get(figure.key)
                cells.append("-" if ratio is None else f"{ratio:.2f}x")
        lines.append(f"| {figure.label} ({figure.unit}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def chart(better: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    """Horizontal bars: per figure, each system's ratio to native (1.0 = native, right of it = better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [s for s in ("pgfanout", "slony") if s in better]
    figures = [f for f in FIGURES if any(f.key in better[s] for s in systems)]
    height = 0.8 / max(1, len(systems))
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(figures) + 1.5))
    for index, system in enumerate(systems):
        values = [better[system].get(f.key, 0.0) for f in figures]
        positions = [row + index * height for row in range(len(figures))]
        bars = ax.barh(positions, values, height=height, label=system)
        ax.bar_label(bars, labels=[f"{v:.2f}x" for v in values], padding=2, fontsize=7)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks([row + height * (len(systems) - 1) / 2 for row in range(len(figures))])
    ax.set_yticklabels([f.label for f in figures], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio to PostgreSQL native logical replication, same run (> 1: better than native)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
