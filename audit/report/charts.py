"""Inline SVG charts for the report: no script, no external resource, every label escaped."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from markupsafe import Markup

from audit.report.text import escape

PALETTE = ("#1f6fb2", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0f766e")
WIDTH, HEIGHT = 640, 360
LEFT, RIGHT, TOP, BOTTOM = 64, 170, 20, 48


def _ticks_log(lo: float, hi: float) -> list[float]:
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks = [m * 10.0**e for e in range(first, last + 1) for m in (1, 2, 5)]
    inside = [t for t in ticks if lo <= t <= hi]
    return inside if len(inside) >= 2 else [lo, hi]


def _ticks_linear(lo: float, hi: float, count: int = 5) -> list[float]:
    raw = (hi - lo) / max(count, 1)
    step = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for m in (1, 2, 5, 10):
        if raw <= m * step:
            step *= m
            break
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _label(value: float) -> str:
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.0e}"
    return f"{value:g}"


def power_law_chart(
    series: Sequence[Mapping[str, Any]], *, x_label: str, y_label: str, unit: float
) -> Markup:
    """Points with 95% error bars and fitted curves ``A·(x/unit)^β + E``, on a log x axis.

    Each series has ``label``, ``points`` (``x``, ``y``, ``low``, ``high``) and optionally
    ``fit`` (``A``, ``beta``, ``E``).
    """
    series = [{**s, "points": _finite_points(s["points"])} for s in series]
    xs = [float(p["x"]) for s in series for p in s["points"] if float(p["x"]) > 0]
    if not xs:
        return Markup('<p class="empty">No points to draw.</p>')
    ys = [
        float(v)
        for s in series
        for p in s["points"]
        for v in (p["y"], p.get("low"), p.get("high"))
        if v is not None
    ]
    x_lo, x_hi = min(xs) / 1.3, max(xs) * 1.3
    y_lo, y_hi = min([*ys, 0.0]), max([*ys, 0.0])
    pad = (y_hi - y_lo) * 0.08 or 0.05
    y_lo, y_hi = y_lo - pad, y_hi + pad
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + plot_w * (math.log10(x) - math.log10(x_lo)) / (
            math.log10(x_hi) - math.log10(x_lo)
        )

    def py(y: float) -> float:
        return TOP + plot_h * (1 - (y - y_lo) / (y_hi - y_lo))

    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}">',
        f"<title>{escape(y_label)} against {escape(x_label)}</title>",
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#999"/>',
    ]
    for t in _ticks_log(x_lo, x_hi):
        parts.append(
            f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{TOP}" y2="{TOP + plot_h}" '
            'stroke="#eee"/>'
            f'<text x="{px(t):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle" '
            f'font-size="11">{escape(_label(t))}</text>'
        )
    for t in _ticks_linear(y_lo, y_hi):
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{py(t):.1f}" y2="{py(t):.1f}" '
            f'stroke="{"#bbb" if abs(t) < 1e-12 else "#eee"}"/>'
            f'<text x="{LEFT - 6}" y="{py(t) + 4:.1f}" text-anchor="end" '
            f'font-size="11">{escape(_label(round(t, 10)))}</text>'
        )
    parts.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 8}" text-anchor="middle" '
        f'font-size="12">{escape(x_label)}</text>'
        f'<text x="14" y="{TOP + plot_h / 2}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 14 {TOP + plot_h / 2})">{escape(y_label)}</text>'
    )
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        fit = s.get("fit")
        if fit:
            steps = 60
            curve = []
            for k in range(steps + 1):
                x = 10 ** (math.log10(x_lo) + (math.log10(x_hi) - math.log10(x_lo)) * k / steps)
                y = fit["A"] * (x / unit) ** fit["beta"] + fit["E"]
                if math.isfinite(y) and y_lo <= y <= y_hi:
                    curve.append(f"{px(x):.1f},{py(y):.1f}")
            if len(curve) > 1:
                parts.append(
                    f'<polyline points="{" ".join(curve)}" fill="none" stroke="{colour}" '
                    'stroke-width="1.5" stroke-dasharray="5 3"/>'
                )
        for p in s["points"]:
            x, y = float(p["x"]), float(p["y"])
            if x <= 0:
                continue
            if p.get("low") is not None and p.get("high") is not None:
                parts.append(
                    f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{py(float(p["low"])):.1f}" '
                    f'y2="{py(float(p["high"])):.1f}" stroke="{colour}"/>'
                )
            parts.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{colour}">'
                f"<title>{escape(str(p.get('name', '')))}: {y:+.3f}</title></circle>"
            )
        legend_y = TOP + 14 + 18 * i
        parts.append(
            f'<circle cx="{WIDTH - RIGHT + 16}" cy="{legend_y - 4}" r="4" fill="{colour}"/>'
            f'<text x="{WIDTH - RIGHT + 26}" y="{legend_y}" font-size="12">'
            f"{escape(str(s['label']))}</text>"
        )
    parts.append("</svg>")
    return Markup('<div class="chart-wrap">{}</div>').format(Markup("".join(parts)))


Estimate = tuple[float, float | None, float | None]
"""A value and its 95% interval (either end None when not known)."""


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _finite_estimates(estimates: Mapping[str, Estimate]) -> dict[str, Estimate]:
    """The estimates with a finite value (a NaN or infinite one is not drawn: the tables show
    it), interval ends that are not finite dropped."""
    return {
        name: (v, low if _finite(low) else None, high if _finite(high) else None)
        for name, (v, low, high) in estimates.items()
        if _finite(v)
    }


def _finite_points(points: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Points with finite x and y; interval ends that are not finite dropped."""
    return [
        {**p, "low": p.get("low") if _finite(p.get("low")) else None,
         "high": p.get("high") if _finite(p.get("high")) else None}
        for p in points
        if _finite(p.get("x")) and _finite(p.get("y"))
    ]  # fmt: skip


def _linear_range(
    values: Sequence[float], bounds: tuple[float, float] | None
) -> tuple[float, float]:
    if bounds is not None:
        return bounds
    lo, hi = min([*values, 0.0]), max([*values, 0.0])
    pad = (hi - lo) * 0.05 or 0.05
    return lo - pad, hi + pad


def dot_chart(
    rows: Sequence[tuple[str, Mapping[str, Estimate]]],
    series: Sequence[str],
    *,
    x_label: str,
    bounds: tuple[float, float] | None = None,
    connect: tuple[str, str] | None = None,
    higher_is_better: bool = True,
) -> Markup:
    """A horizontal dot plot: one row per label, one dot per series with its 95% interval.

    ``connect = (before, after)`` draws an arrow from the ``before`` dot to the ``after`` dot
    of each row, green when the change is an improvement (given ``higher_is_better``), red
    when it is a worsening. ``bounds`` fixes the x axis (``(0, 1)`` for rates).
    """
    rows = [(label, _finite_estimates(estimates)) for label, estimates in rows]
    values = [
        float(v)
        for _, estimates in rows
        for est in estimates.values()
        for v in est
        if v is not None
    ]
    if not rows or not values:
        return Markup('<p class="empty">Nothing to draw.</p>')
    lo, hi = _linear_range(values, bounds)
    label_w = min(max(len(label) for label, _ in rows) * 7 + 16, 260)
    row_h, top, bottom, right = 22, 34, 40, 24
    width = max(760, label_w + 460)
    plot_w = width - label_w - right
    height = top + row_h * len(rows) + bottom

    def px(x: float) -> float:
        return label_w + plot_w * (x - lo) / (hi - lo)

    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
        f"<title>{escape(x_label)}</title>",
    ]
    for t in _ticks_linear(lo, hi):
        parts.append(
            f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top - 6}" '
            f'y2="{top + row_h * len(rows)}" stroke="#eee"/>'
            f'<text x="{px(t):.1f}" y="{top + row_h * len(rows) + 14}" text-anchor="middle" '
            f'font-size="11">{escape(_label(round(t, 10)))}</text>'
        )
    parts.append(
        f'<text x="{label_w + plot_w / 2:.1f}" y="{height - 8}" text-anchor="middle" '
        f'font-size="12">{escape(x_label)}</text>'
    )
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(series)}
    legend_x = label_w
    for name in series:
        parts.append(
            f'<circle cx="{legend_x + 5}" cy="14" r="4" fill="{colours[name]}"/>'
            f'<text x="{legend_x + 13}" y="18" font-size="12">{escape(name)}</text>'
        )
        legend_x += 30 + 7 * len(name)
    for i, (label, estimates) in enumerate(rows):
        y = top + row_h * i + row_h / 2
        if i % 2:
            parts.append(
                f'<rect x="0" y="{y - row_h / 2:.1f}" width="{width}" height="{row_h}" '
                'fill="#f6f8fa"/>'
            )
        shown = label if len(label) <= 36 else label[:35] + "…"
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 4:.1f}" text-anchor="end" font-size="12">'
            f"<title>{escape(label)}</title>{escape(shown)}</text>"
        )
        if connect and connect[0] in estimates and connect[1] in estimates:
            before, after = estimates[connect[0]][0], estimates[connect[1]][0]
            if before != after:
                good = (after > before) == higher_is_better
                colour = "#1a7f37" if good else "#cf222e"
                parts.append(
                    f'<line x1="{px(before):.1f}" x2="{px(after):.1f}" y1="{y:.1f}" '
                    f'y2="{y:.1f}" stroke="{colour}" stroke-width="2.5" opacity="0.6"/>'
                )
        for k, name in enumerate(series):
            if name not in estimates:
                continue
            value, low, high = estimates[name]
            colour = colours[name]
            dy = (k - (len(series) - 1) / 2) * (5 if connect else 4)
            if low is not None and high is not None:
                parts.append(
                    f'<line x1="{px(low):.1f}" x2="{px(high):.1f}" y1="{y + dy:.1f}" '
                    f'y2="{y + dy:.1f}" stroke="{colour}" stroke-width="1.2"/>'
                )
            interval = "" if low is None or high is None else f" [{low:.3f}, {high:.3f}]"
            parts.append(
                f'<circle cx="{px(value):.1f}" cy="{y + dy:.1f}" r="4" fill="{colour}">'
                f"<title>{escape(label)} · {escape(name)}: {value:.3f}{interval}</title>"
                "</circle>"
            )
    parts.append("</svg>")
    return Markup('<div class="chart-wrap">{}</div>').format(Markup("".join(parts)))


Interval = tuple[float, float | None, float | None]
"""A value with its 95% interval (``None`` ends: no interval)."""


def scatter_chart(
    points: Sequence[tuple[str, Interval, Interval, bool]],
    *,
    x_label: str,
    y_label: str,
) -> Markup:
    """A scatter of labelled points with 95% interval bars on both axes; points flagged
    ``True`` (the Pareto front) are filled and joined, the others hollow. Zero lines drawn."""
    points = [
        (label, x, y, front) for label, x, y, front in points if _finite(x[0]) and _finite(y[0])
    ]
    if not points:
        return Markup('<p class="empty">Nothing to draw.</p>')
    xs = [float(v) for _, x, _, _ in points for v in x if v is not None and _finite(v)] + [0.0]
    ys = [float(v) for _, _, y, _ in points for v in y if v is not None and _finite(v)] + [0.0]
    x_lo, x_hi = _linear_range(xs, None)
    y_lo, y_hi = _linear_range(ys, None)
    width, height, left, right, top, bottom = 760, 420, 70, 170, 20, 50
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + plot_w * (x - x_lo) / (x_hi - x_lo)

    def py(y: float) -> float:
        return top + plot_h * (1 - (y - y_lo) / (y_hi - y_lo))

    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
        f"<title>{escape(y_label)} against {escape(x_label)}</title>",
    ]
    for t in _ticks_linear(x_lo, x_hi):
        parts.append(
            f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top}" y2="{top + plot_h}" '
            f'stroke="{"#999" if t == 0 else "#eee"}"/>'
            f'<text x="{px(t):.1f}" y="{top + plot_h + 14}" text-anchor="middle" '
            f'font-size="11">{escape(_label(round(t, 10)))}</text>'
        )
    for t in _ticks_linear(y_lo, y_hi):
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{py(t):.1f}" y2="{py(t):.1f}" '
            f'stroke="{"#999" if t == 0 else "#eee"}"/>'
            f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end" '
            f'font-size="11">{escape(_label(round(t, 10)))}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 10}" text-anchor="middle" '
        f'font-size="12">{escape(x_label)}</text>'
        f'<text x="14" y="{top + plot_h / 2:.1f}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">{escape(y_label)}</text>'
    )
    front = sorted((x[0], y[0]) for _, x, y, on in points if on)
    if len(front) > 1:
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in front)
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{PALETTE[0]}" '
            'stroke-dasharray="4 3" stroke-width="1.5"/>'
        )
    for i, (label, x, y, on) in enumerate(points):
        colour = PALETTE[i % len(PALETTE)]
        cx, cy = px(x[0]), py(y[0])
        if x[1] is not None and x[2] is not None and _finite(x[1]) and _finite(x[2]):
            parts.append(
                f'<line x1="{px(x[1]):.1f}" x2="{px(x[2]):.1f}" y1="{cy:.1f}" y2="{cy:.1f}" '
                f'stroke="{colour}" stroke-width="1.2"/>'
            )
        if y[1] is not None and y[2] is not None and _finite(y[1]) and _finite(y[2]):
            parts.append(
                f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{py(y[1]):.1f}" y2="{py(y[2]):.1f}" '
                f'stroke="{colour}" stroke-width="1.2"/>'
            )
        fill = colour if on else "white"
        tip = f"{label}: {x[0]:.3f}, {y[0]:.3f}" + (" (Pareto front)" if on else "")
        shown = label if len(label) <= 24 else label[:23] + "…"
        parts.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{fill}" stroke="{colour}" '
            f'stroke-width="2"><title>{escape(tip)}</title></circle>'
            f'<text x="{cx + 7:.1f}" y="{cy - 6:.1f}" font-size="11">{escape(shown)}</text>'
        )
    parts.append("</svg>")
    return Markup('<div class="chart-wrap">{}</div>').format(Markup("".join(parts)))
