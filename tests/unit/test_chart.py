"""The weekly access chart (``portal.access.chart``): stacked bars whose heights are the counts, one path
per organisation, and organisation names that cannot inject markup."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from portal.access.chart import BOTTOM, HEIGHT, PALETTE, TOP, weekly_chart

SVG = "{http://www.w3.org/2000/svg}"
BASELINE = HEIGHT - BOTTOM
PLOT_H = HEIGHT - BOTTOM - TOP


def _bars(svg: str) -> dict[str, dict[float, tuple[float, float]]]:
    """Colour -> {bar x: (bottom, height)} from each path's ``M x bottom v-height`` segments."""
    found = {}
    for path in ET.fromstring(svg).iter(f"{SVG}path"):
        segments = re.findall(r"M([\d.]+) ([\d.]+)v-([\d.]+)", path.get("d", ""))
        assert "".join(f"M{x} {y}v-{h}" for x, y, h in segments) == path.get("d")  # nothing else in it
        found[path.get("stroke", "")] = {float(x): (float(y), float(h)) for x, y, h in segments}
    return found


def test_each_week_is_a_stack_of_its_organisations_counts_scaled_to_the_busiest_week() -> None:
    weeks = ["2026-W01", "2026-W02", "2026-W03"]
    series = {"A": [2, 0, 1], "B": [3, 1, 0], "C": [0, 0, 4]}
    bars = _bars(weekly_chart(weeks, series))

    assert list(bars) == list(PALETTE[:3])  # one path per organisation, in the legend's colours
    xs = sorted({x for parts in bars.values() for x in parts})
    assert len(xs) == len(weeks)
    peak = 5  # week 1: 2 + 3
    for week, x in enumerate(xs):
        bottom = float(BASELINE)
        for colour, values in zip(PALETTE, series.values(), strict=False):
            if not values[week]:
                assert x not in bars[colour]  # no empty segment
                continue
            start, height = bars[colour][x]
            assert abs(start - bottom) <= 0.1  # on top of the previous organisation's part
            assert abs(height - values[week] / peak * PLOT_H) <= 0.05
            bottom = start - height
    assert abs(bars[PALETTE[1]][xs[0]][0] - bars[PALETTE[1]][xs[0]][1] - TOP) <= 0.1  # the busiest reaches the top


def test_organisation_names_are_text_in_the_legend_not_markup() -> None:
    svg = weekly_chart(["2026-W01"], {'<script>alert("x")</script>': [1], "A & B": [2]})
    root = ET.fromstring(svg)  # well-formed
    assert [t.text for t in root.iter(f"{SVG}text")][-2:] == ['<script>alert("x")</script>', "A & B"]
    assert not list(root.iter(f"{SVG}script"))


def test_two_years_of_weeks_for_eight_organisations_stay_small() -> None:
    weeks = [f"W{i}" for i in range(104)]
    series = {f"Org {k}": [1 + (i + k) % 9 for i in range(104)] for k in range(8)}
    svg = weekly_chart(weeks, series)
    assert len(ET.fromstring(svg).findall(f"{SVG}path")) == 8
    assert len(svg) < 24_000  # one element per bar and organisation took 56 KB


def test_no_weeks_no_chart() -> None:
    assert weekly_chart([], {}) == ""
