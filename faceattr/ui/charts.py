"""Line charts as inline SVG, drawn on the server: the pages work offline, with no chart library.

Every point carries a <title> (the browser's tooltip) with its exact value, so a reader can
check a curve against the tables.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Sequence

# Colour-blind-safe (Okabe-Ito), in the order series are drawn.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]  # (x, y); x ascending
    color: str = ""
    dashed: bool = False
    markers: bool = True
    highlight: set[float] = field(default_factory=set)  # x values drawn as a larger ring (the best epoch)
    dash: str = ""  # an SVG stroke-dasharray: tells overlaid runs apart where their curves coincide
    marker: str = "circle"  # one of MARKERS
    point_labels: dict[float, str] = field(default_factory=dict)  # x -> what a point's tooltip names it
    width: float = 2.0  # line width; markers grow with it (an overlay draws earlier series wider, under later ones)


LEGEND_CHARS = 44
MARKERS = ("circle", "square", "triangle", "diamond")
DASHES = ("", "7 4", "2 3", "9 3 2 3")  # solid, dashed, dotted, dash-dot


def marker(shape: str, x: float, y: float, radius: float, style: str, title: str) -> str:
    """One point's marker (a circle, square, triangle or diamond) with its tooltip."""
    if shape == "square":
        body = f'<rect x="{x - radius:.1f}" y="{y - radius:.1f}" width="{2 * radius:.1f}" height="{2 * radius:.1f}"'
    elif shape in ("triangle", "diamond"):
        corners = ([(x, y - radius * 1.2), (x + radius * 1.1, y + radius * 0.8), (x - radius * 1.1, y + radius * 0.8)]
                   if shape == "triangle" else
                   [(x, y - radius * 1.3), (x + radius * 1.3, y), (x, y + radius * 1.3), (x - radius * 1.3, y)])
        body = '<polygon points="' + " ".join(f"{a:.1f},{b:.1f}" for a, b in corners) + '"'
    else:
        body = f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius}"'
    return f"{body}{style}><title>{title}</title></{body.split()[0][1:]}>"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [low, high]."""
    if high <= low:
        high = low + (abs(low) or 1.0) * 0.1
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < high - step * 1e-9:  # the last tick is at or above `high`
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str, width: int = 470,
               height: int = 280, y_range: tuple[float, float] | None = None, integer_x: bool = True,
               chart_id: str = "", x_tick_labels: dict[float, str] | None = None, x_name: str = "epoch") -> str:
    """An SVG line chart of `series` (empty series are skipped; no data gives a placeholder)."""
    drawn = [s for s in series if s.points]
    # The legend sits below the plot, never over a curve, in as many rows as its entries need.
    place, row, x_at = [], 0, 56
    for item in drawn:
        needed = 40 + 6.2 * len(item.label[:LEGEND_CHARS])
        if x_at + needed > width - 8 and x_at > 56:
            row, x_at = row + 1, 56
        place.append((x_at, row))
        x_at += needed
    height += 15 * row
    left, right, top, bottom = 56, 14, 28, 62 + 15 * row
    plot_w, plot_h = width - left - right, height - top - bottom
    attrs = f'id="{html.escape(chart_id)}" ' if chart_id else ""
    head = (f'<svg {attrs}class="chart" role="img" aria-label="{html.escape(title)}" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
            f'<text x="{left}" y="16" class="chart-title">{html.escape(title)}</text>')
    if not drawn:
        return head + (f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="chart-empty">'
                       "no data yet</text></svg>")
    xs = [x for s in drawn for x, _ in s.points]
    ys = [y for s in drawn for _, y in s.points if math.isfinite(y)]
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    y_low, y_high = y_range if y_range else (min(ys), max(ys))
    y_ticks = nice_ticks(y_low, y_high)
    y_low, y_high = min(y_ticks[0], y_low), max(y_ticks[-1], y_high)
    x_ticks = (list(range(math.ceil(x_low), math.floor(x_high) + 1)) if integer_x else nice_ticks(x_low, x_high))
    if len(x_ticks) > 12:
        x_ticks = x_ticks[:: math.ceil(len(x_ticks) / 12)]

    def px(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * plot_w

    def py(y: float) -> float:
        return top + (1 - (y - y_low) / ((y_high - y_low) or 1)) * plot_h

    parts = [head]
    for tick in y_ticks:
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{py(tick) + 4:.1f}" text-anchor="end" class="tick">{_label(tick)}</text>')
    for tick in x_ticks:
        text = (x_tick_labels or {}).get(tick, "" if x_tick_labels else _label(tick))
        # Long labels at the ends of the axis stay inside the chart.
        anchor = "middle" if not x_tick_labels else "start" if tick == x_low else "end" if tick == x_high else "middle"
        parts.append(f'<text x="{px(tick):.1f}" y="{top + plot_h + 16}" text-anchor="{anchor}" class="tick">'
                     f'{html.escape(text)}</text>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" class="axis"/>'
                 f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" class="axis"/>'
                 f'<text x="{left + plot_w / 2}" y="{top + plot_h + 32}" text-anchor="middle" class="axis-label">'
                 f'{html.escape(x_label)}</text>'
                 f'<text transform="translate(14 {top + plot_h / 2}) rotate(-90)" text-anchor="middle" '
                 f'class="axis-label">{html.escape(y_label)}</text>')
    for index, item in enumerate(drawn):
        color = item.color or PALETTE[index % len(PALETTE)]
        points = [(x, y) for x, y in item.points if math.isfinite(y)]
        path = " ".join(f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for i, (x, y) in enumerate(points))
        pattern = item.dash or ("5 4" if item.dashed else "")
        dash = f' stroke-dasharray="{pattern}"' if pattern else ""
        label = html.escape(item.label)
        parts.append(f'<g class="series" data-label="{label}"><path d="{path}" fill="none" stroke="{color}" '
                     f'stroke-width="{item.width:g}"{dash}/>')
        for x, y in points if item.markers else []:
            radius = 5.5 if x in item.highlight else 3.2 + (item.width - 2.0)
            ring = ' fill="white" stroke-width="2.5"' if x in item.highlight else f' fill="{color}"'
            where = html.escape(item.point_labels[x]) if x in item.point_labels else f"{x_name} {_label(x)}"
            parts.append(marker(item.marker, px(x), py(y), radius, f' stroke="{color}"{ring}',
                                f"{label}, {where}: {y:.4f}"))
        parts.append("</g>")
        legend_x, legend_y = place[index][0], top + plot_h + 48 + 15 * place[index][1]
        parts.append(f'<line x1="{legend_x}" x2="{legend_x + 22}" y1="{legend_y - 4}" y2="{legend_y - 4}" '
                     f'stroke="{color}" stroke-width="2"{dash}/>')
        if item.markers:
            parts.append(marker(item.marker, legend_x + 11, legend_y - 4, 3.2, f' stroke="{color}" fill="{color}"',
                                label))
        parts.append(f'<text x="{legend_x + 27}" y="{legend_y}" class="legend">'
                     f'{html.escape(item.label[:LEGEND_CHARS])}</text>')
    parts.append("</svg>")
    return "".join(parts)
