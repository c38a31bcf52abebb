"""The peer benchmark's report: medians with their spread, and ratios oriented so that above 1 beats native."""

import pytest

from bench.peers import report


def rounds():
    return [
        {"native": {"small_tx_per_s": 1000, "lag_p50_ms": 6.0}, "pgfanout": {"small_tx_per_s": 1500, "lag_p50_ms": 12.0}},
        {"native": {"small_tx_per_s": 1200, "lag_p50_ms": 8.0}, "pgfanout": {"small_tx_per_s": 1300, "lag_p50_ms": 16.0}},
    ]


def test_summary_gives_median_min_and_max_of_the_rounds():
    summary = report.summary(rounds())
    assert summary["native"]["small_tx_per_s"] == {"median": 1100, "min": 1000, "max": 1200}
    assert summary["pgfanout"]["lag_p50_ms"] == {"median": 14.0, "min": 12.0, "max": 16.0}


def test_ratios_are_above_one_when_better_than_native_whichever_way_the_figure_points():
    better = report.ratios(report.summary(rounds()))
    assert better["pgfanout"]["small_tx_per_s"] == pytest.approx(1400 / 1100, abs=1e-3)  # more is better
    assert better["pgfanout"]["lag_p50_ms"] == pytest.approx(7.0 / 14.0, abs=1e-3)  # less is better
    assert better["native"] == {"small_tx_per_s": 1.0, "lag_p50_ms": 1.0}


def test_a_figure_a_system_lacks_is_left_out_not_zero():
    data = rounds()
    del data[0]["pgfanout"]["lag_p50_ms"], data[1]["pgfanout"]["lag_p50_ms"]
    better = report.ratios(report.summary(data))
    assert "lag_p50_ms" not in better["pgfanout"]
    table = report.table(report.summary(data), better)
    assert "| visible lag at 200 tps, p50 (ms) | 7 (6-8) | - | - |" in table


def test_the_chart_is_a_png(tmp_path):
    path = report.chart(report.ratios(report.summary(rounds())), tmp_path / "peers.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_idle_keeps_each_process_worst_round():
    data = [
        {"pgfanout": {"idle_percent_of_a_core": {"agent": 0.2, "machine": 3.0}}},
        {"pgfanout": {"idle_percent_of_a_core": {"agent": 0.4, "machine": 2.0}}},
    ]
    assert report.idle(data) == {"pgfanout": {"agent": 0.4, "machine": 3.0}}
