"""Sync charts a person can read: linear axes from zero, labelled values in human units,
the phase chart accounts for the whole measured time, legends outside the bars."""

from __future__ import annotations

from pathlib import Path

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from dtnbus.report import (  # noqa: E402 - after choosing the backend
    OTHER,
    human_network,
    human_seconds,
    phase_shares,
    phases_figure,
    times_figure,
    write_results,
)

ROWS = [
    {"nodes": 4, "tx": 100, "bandwidth_mbps": 0.0, "latency_ms": 0.0, "seconds_f1": 0.0163,
     "seconds_2f1": 0.0165, "latency_expected_s": 0.0015, "phase_request_to_preprepare_ms": 6.9,
     "phase_preprepare_to_prepared_ms": 0.8, "phase_prepared_to_committed_ms": 1.0,
     "phase_committed_to_executed_ms": 2.6},
    {"nodes": 4, "tx": 1000, "bandwidth_mbps": 10.0, "latency_ms": 50.0, "seconds_f1": 23.9,
     "seconds_2f1": 24.1, "latency_expected_s": 23.0, "phase_request_to_preprepare_ms": 50.0,
     "phase_preprepare_to_prepared_ms": 52.0, "phase_prepared_to_committed_ms": 51.0,
     "phase_committed_to_executed_ms": 2.0},
]


@pytest.mark.parametrize("seconds,text", [(0.0004, "0.40 ms"), (0.0163, "16.3 ms"),
                                          (0.345, "345 ms"), (1.234, "1.23 s"),
                                          (23.9, "23.9 s"), (150, "2.5 min")])
def test_human_seconds(seconds: float, text: str) -> None:
    assert human_seconds(seconds) == text


def test_human_network() -> None:
    assert human_network(10, 50) == "10 Mbps, 50 ms"
    assert human_network(0, 20) == "unlimited, 20 ms"
    assert human_network(0, 0) == "unshaped"


def test_phases_account_for_the_whole_measured_time() -> None:
    for row in ROWS:
        shares = phase_shares(row)
        assert shares is not None and shares[-1][0] == OTHER
        assert sum(v for _, v in shares) == pytest.approx(row["seconds_f1"])
        assert all(v >= 0 for _, v in shares)
    over = dict(ROWS[0], seconds_f1=0.005)  # phases longer than the client's clock
    shares = phase_shares(over)
    assert shares is not None and dict(shares)[OTHER] == 0
    assert sum(v for _, v in shares) == pytest.approx(0.005)


def test_times_chart_is_linear_from_zero_with_labelled_values() -> None:
    fig = times_figure(ROWS, "t")
    seconds_ax, ratio_ax = fig.axes
    for ax in (seconds_ax, ratio_ax):
        assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0
    labels = {t.get_text() for t in seconds_ax.texts}
    assert {"16.3 ms", "23.9 s", "24.1 s", "23 s"} <= labels, labels
    ticks = [t.get_text() for t in seconds_ax.get_xticklabels()]
    assert ticks == ["n=4, 100 tx\nunshaped", "n=4, 1000 tx\n10 Mbps, 50 ms"]
    assert {t.get_text() for t in ratio_ax.texts} == {"11.00x", "1.05x"}
    fig.canvas.draw()
    legend = seconds_ax.get_legend().get_window_extent()
    assert legend.x0 >= seconds_ax.get_window_extent().x1  # beside the bars, not on them


def test_phase_chart_bars_are_the_whole_time_and_the_legend_is_outside() -> None:
    fig = phases_figure(ROWS, "t")
    (ax,) = fig.axes
    widths: dict[float, float] = {}
    for patch in ax.patches:
        y = round(patch.get_y(), 3)
        widths[y] = widths.get(y, 0.0) + patch.get_width()
    assert sorted(widths.values()) == pytest.approx([100.0, 100.0])
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()][-1] == OTHER
    fig.canvas.draw()
    assert legend.get_window_extent().y1 <= ax.get_window_extent().y0
    totals = {t.get_text() for t in ax.texts if t.get_text().startswith("= ")}
    assert totals == {"= 16.3 ms", "= 23.9 s"}


def test_write_results_writes_both_charts_and_the_other_column(tmp_path: Path) -> None:
    rows = [dict(r, phase_other_ms=dict(phase_shares(r) or [])[OTHER] * 1000) for r in ROWS]
    paths = write_results(rows, tmp_path, "s")
    assert {p.name for p in paths} == {"s.csv", "s.md", "s.png", "s-phases.png"}
    assert "phase_other_ms" in (tmp_path / "s.csv").read_text().splitlines()[0]


RANGED_ROWS = [dict(ROWS[1], runs=3, seconds_2f1_min=23.5, seconds_2f1_max=26.0,
                    latency_floor_s=21.0, ours_over_floor=24.1 / 21.0,
                    ours_over_floor_min=23.5 / 21.0, ours_over_floor_max=26.0 / 21.0)]


def test_markdown_folds_each_range_beside_its_median(tmp_path: Path) -> None:
    write_results(RANGED_ROWS, tmp_path, "m")
    text = (tmp_path / "m.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| nodes"))
    assert "seconds_2f1_min" not in header and "ours_over_floor" in header
    assert "| 24.100 (23.500-26.000) |" in text
    assert "| 1.148 (1.119-1.238) |" in text
    assert "median over a cell's runs (min-max)" in text
    csv_header = (tmp_path / "m.csv").read_text().splitlines()[0].split(",")
    assert {"seconds_2f1_min", "seconds_2f1_max", "latency_floor_s"} <= set(csv_header)


def test_times_chart_shows_the_range_and_both_ratios() -> None:
    fig = times_figure(RANGED_ROWS, "t")
    seconds_ax, ratio_ax = fig.axes
    labels = {t.get_text() for t in seconds_ax.texts}
    assert {"24.1 s", "21 s"} <= labels  # the median bar, the floor
    legend = [t.get_text() for t in seconds_ax.get_legend().get_texts()]
    assert "strict floor (no run can beat it)" in legend
    assert "expectation under the latency model" in legend
    assert {t.get_text() for t in ratio_ax.texts} == {"1.05x", "1.15x"}
    # whiskers: one error bar line collection per ranged series, spanning min..max
    spans = [seg for coll in seconds_ax.collections for seg in coll.get_segments()]
    assert any(abs(s[0][1] - 23.5) < 1e-9 and abs(s[1][1] - 26.0) < 1e-9 for s in spans)
