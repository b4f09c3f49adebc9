"""Accesses per week by organisation as an SVG bar chart drawn on the server (no JavaScript).

The SVG is decorative for screen readers (the page shows the same numbers as a table); its
text uses only escaped strings, so an organisation name cannot inject markup.
"""

from __future__ import annotations

from html import escape

PALETTE = ("#0b5cad", "#a4161a", "#146c2e", "#8a4b00", "#5b2a86", "#006d77", "#6b705c", "#b5179e")
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 240, 40, 40, 16


def weekly_chart(weeks: list[str], series: dict[str, list[int]]) -> str:
    if not weeks:
        return ""
    totals = [sum(values[i] for values in series.values()) for i in range(len(weeks))]
    peak = max(*totals, 1)
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    step = plot_w / len(weeks)
    bar_w = max(step * 0.8, 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT + 20 * len(series)}" '
        f'class="chart" aria-hidden="true" focusable="false">'
    ]
    parts.append(f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 8}" y2="{TOP + plot_h}" stroke="#4a5563"/>')
    parts.append(f'<text x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end" font-size="11">{peak}</text>')
    parts.append(f'<text x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end" font-size="11">0</text>')
    centres = [LEFT + i * step + bar_w / 2 for i in range(len(weeks))]
    bottoms = [float(TOP + plot_h)] * len(weeks)  # where the next organisation's part of each week's bar starts
    for colour, values in zip(PALETTE * 4, series.values(), strict=False):
        parts.append(_stacked_bars(colour, values, bottoms, scale=plot_h / peak, centres=centres, bar_w=bar_w))
    for i, week in enumerate(weeks):
        if len(weeks) <= 16 or i % max(len(weeks) // 8, 1) == 0:
            parts.append(
                f'<text x="{LEFT + i * step:.1f}" y="{TOP + plot_h + 14}" font-size="10">{escape(week)}</text>'
            )
    for row, (name, colour) in enumerate(zip(series, PALETTE * 4, strict=False)):
        y = HEIGHT + row * 20
        parts.append(f'<rect x="{LEFT}" y="{y - 10}" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{LEFT + 18}" y="{y}" font-size="12">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _stacked_bars(
    colour: str, values: list[int], bottoms: list[float], *, scale: float, centres: list[float], bar_w: float
) -> str:
    """One organisation's part of every week's bar, on top of ``bottoms`` (which it raises), as one path.

    Each part is a vertical stroke as wide as a bar: one element per organisation instead of one per bar
    and organisation keeps two years of weekly bars for eight organisations at a fifth of the bytes.
    """
    segments = []
    for i, count in enumerate(values):
        if count:
            height = count * scale
            segments.append(f"M{centres[i]:.1f} {bottoms[i]:.1f}v-{height:.1f}")
            bottoms[i] -= height
    return f'<path d="{"".join(segments)}" stroke="{colour}" stroke-width="{bar_w:.1f}" fill="none"/>'
