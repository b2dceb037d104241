"""A small SVG writer for the benchmark's figures: grouped bars and stacked timelines.

Plain SVG 1.1 text with no scripts or external references, readable in any browser and on
GitHub; numbers are formatted here, so the figures need no plotting library."""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import escape

MODE_COLOURS = {"stock": "#6b7280", "teleport": "#2563eb", "zstd": "#d97706",
                "drop-cache": "#dc2626"}
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"


def colour(mode: str) -> str:
    return MODE_COLOURS.get(mode, "#111827")


def nice_max(value: float) -> float:
    """A round axis maximum at or above `value` (1, 2, 2.5 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


class Canvas:
    def __init__(self, width: int, height: int, title: str) -> None:
        self.width, self.height = width, height
        self.parts = [
            f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}' {FONT} font-size='12'>",
            f"<rect width='{width}' height='{height}' fill='white'/>",
        ]
        self.text(width / 2, 20, title, size=15, anchor="middle", weight="bold")

    def text(self, x: float, y: float, s: str, size: int = 12, anchor: str = "start",
             weight: str = "normal", fill: str = "#111827", rotate: float | None = None) -> None:
        rot = f" transform='rotate({rotate} {x:.1f} {y:.1f})'" if rotate is not None else ""
        self.parts.append(f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}' "
                          f"text-anchor='{anchor}' font-weight='{weight}' fill='{fill}'{rot}>"
                          f"{escape(s)}</text>")

    def rect(self, x: float, y: float, w: float, h: float, fill: str,
             opacity: float = 1.0) -> None:
        self.parts.append(f"<rect x='{x:.1f}' y='{y:.1f}' width='{max(w, 0):.1f}' "
                          f"height='{max(h, 0):.1f}' fill='{fill}' fill-opacity='{opacity}'/>")

    def line(self, x1: float, y1: float, x2: float, y2: float, stroke: str = "#9ca3af",
             width: float = 1.0, dash: str | None = None) -> None:
        d = f" stroke-dasharray='{dash}'" if dash else ""
        self.parts.append(f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' "
                          f"stroke='{stroke}' stroke-width='{width}'{d}/>")

    def polyline(self, points: list[tuple[float, float]], stroke: str, width: float = 1.5,
                 opacity: float = 1.0) -> None:
        if len(points) < 2:
            return
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        self.parts.append(f"<polyline points='{pts}' fill='none' stroke='{stroke}' "
                          f"stroke-width='{width}' stroke-opacity='{opacity}'/>")

    def render(self) -> str:
        return "\n".join([*self.parts, "</svg>"]) + "\n"


@dataclass
class Bar:
    label: str  # the mode
    value: float | None
    note: str = ""  # e.g. "0.31× stock"


def bar_panels(title: str, panels: list[tuple[str, list[Bar]]]) -> str:
    """One panel per metric (e.g. "total time (s)"), one bar per mode, side by side."""
    pw, ph, top, bottom = 300, 260, 50, 70
    c = Canvas(pw * len(panels) + 20, ph + top + bottom, title)
    for i, (name, bars) in enumerate(panels):
        x0, y0 = 20 + i * pw + 40, top + 20
        w, h = pw - 70, ph - 20
        vmax = nice_max(max((b.value or 0.0) for b in bars) if bars else 1.0)
        c.text(x0 + w / 2, top + 5, name, size=13, anchor="middle", weight="bold")
        for k in range(5):
            y = y0 + h - h * k / 4
            c.line(x0, y, x0 + w, y, stroke="#e5e7eb")
            c.text(x0 - 4, y + 4, fmt(vmax * k / 4), size=10, anchor="end", fill="#6b7280")
        c.line(x0, y0 + h, x0 + w, y0 + h, stroke="#374151")
        slot = w / max(1, len(bars))
        for j, b in enumerate(bars):
            bx = x0 + j * slot + slot * 0.15
            bw = slot * 0.7
            if b.value is None:
                c.text(bx + bw / 2, y0 + h - 4, "n/a", size=10, anchor="middle")
            else:
                bh = h * b.value / vmax
                c.rect(bx, y0 + h - bh, bw, bh, colour(b.label))
                c.text(bx + bw / 2, y0 + h - bh - 4, fmt(b.value), size=10, anchor="middle")
            c.text(bx + bw / 2, y0 + h + 14, b.label, size=10, anchor="middle")
            if b.note:
                c.text(bx + bw / 2, y0 + h + 28, b.note, size=9, anchor="middle",
                       fill="#6b7280")
    return c.render()


@dataclass
class Series:
    mode: str
    points: list[tuple[float, float]]  # (seconds since the migration started, value)
    resume_t: float  # when the VM resumed at the destination
    baseline: float | None = None
    note: str = ""  # shown at the panel's right, e.g. "recovered after 2.0 s"
    returned_t: float | None = None  # the service returned (verification done): dotted line


def stacked_timelines(title: str, unit: str, series: list[Series]) -> str:
    """One panel per series (mode) on a shared time axis: the line, the migration shaded from
    its start (t = 0) to the resume, the pre-migration level dashed."""
    pw, ph, left, top = 760, 120, 80, 40
    gap = 28
    c = Canvas(pw + left + 30, top + len(series) * (ph + gap) + 40, title)
    if not series:
        return c.render()
    ts = [t for s in series for t, _ in s.points] or [0.0, 1.0]
    tmin, tmax = min(ts), max(max(ts), max(s.resume_t for s in series)) + 1
    vmax = nice_max(max((v for s in series for _, v in s.points), default=1.0))

    def x(t: float) -> float:
        return left + pw * (t - tmin) / max(1e-9, tmax - tmin)

    for i, s in enumerate(series):
        y0 = top + i * (ph + gap) + 10

        def y(v: float, y0: float = y0) -> float:
            return y0 + ph - ph * v / vmax

        c.rect(x(0), y0, x(s.resume_t) - x(0), ph, "#fde68a", 0.5)
        for k in range(3):
            c.line(left, y(vmax * k / 2), left + pw, y(vmax * k / 2), stroke="#e5e7eb")
            c.text(left - 4, y(vmax * k / 2) + 4, fmt(vmax * k / 2), size=10, anchor="end",
                   fill="#6b7280")
        if s.baseline:
            c.line(left, y(s.baseline), left + pw, y(s.baseline), stroke="#9ca3af", dash="4 3")
        if s.returned_t is not None and s.returned_t > s.resume_t + 0.5:
            c.line(x(s.returned_t), y0, x(s.returned_t), y0 + ph, stroke="#374151", dash="2 3")
        c.polyline([(x(t + 0.5), y(v)) for t, v in s.points], colour(s.mode))
        c.line(left, y0 + ph, left + pw, y0 + ph, stroke="#374151")
        c.text(left + 4, y0 + 12, s.mode, size=12, weight="bold", fill=colour(s.mode))
        if s.note:
            c.text(left + pw, y0 + 12, s.note, size=10, anchor="end", fill="#374151")
    yb = top + len(series) * (ph + gap) - gap + 14
    step = nice_max((tmax - tmin) / 10)
    t = math.ceil(tmin / step) * step
    while t <= tmax:
        c.line(x(t), yb - 4, x(t), yb, stroke="#374151")
        c.text(x(t), yb + 12, f"{t:g}", size=10, anchor="middle", fill="#374151")
        t += step
    c.text(left + pw / 2, yb + 28, "seconds since the migration started · shaded: migrating "
           "until the VM resumed · dashed: level before · dotted: service done (verified)",
           size=10, anchor="middle")
    c.text(16, top + len(series) * (ph + gap) / 2, unit, size=11, anchor="middle", rotate=-90)
    return c.render()
