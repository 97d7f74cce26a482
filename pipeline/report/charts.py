"""Charts: inline SVG, drawn here so the page loads nothing. Round-numbered axes and bins, a
stacked column chart (the latency and token histograms, the throughput over time) and horizontal
bars (the errors by class); `charts` makes the four of a page from its `Totals`. Also `esc`, the
one escaping rule for HTML text and quoted attribute values, which the page uses as well.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from pipeline.outcomes import Status
from pipeline.percentiles import percentile
from pipeline.report.sampling import PROBLEMS
from pipeline.report.totals import Totals

COLORS: dict[str, str] = {Status.OK: "#1a7f37", Status.INVALID: "#b86e00", Status.FAILED: "#cf222e"}
NEUTRAL = "#0969da"


def esc(value: Any) -> str:
    """Text for HTML content or a quoted attribute value."""
    return html.escape("" if value is None else str(value), quote=True)


CHART_W, CHART_H = 560, 250
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 60, 16, 28, 46


def nice_step(span: float, count: int, whole: bool = False) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) splitting `span` in <= `count`;
    `whole` for counts, which never step by 2.5 or less than 1."""
    raw = span / max(1, count)
    if raw <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    multiples = (1, 2, 5, 10) if whole else (1, 2, 2.5, 5, 10)
    step = next(m * power for m in multiples if m * power >= raw)
    return max(1.0, step) if whole else step


def compact(value: float) -> str:
    """A short axis label: 950, 1.2k, 3.4M."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}" if value != int(value) else f"{int(value)}"


class Bins(NamedTuple):
    edges: list[float]  # len(edges) - 1 regular bins
    overflow: bool  # one more bin for the values above edges[-1]


def bins(values: list[int], count: int = 20) -> Bins:
    """Round-numbered bins over the values. A long tail (a timeout among quick answers) goes
    into one overflow bin past the 99th percentile, so the body stays readable."""
    lo, hi = min(values), max(values)
    top = percentile(values, 0.99) or hi
    overflow = hi > 2 * top and top > lo
    cap = top if overflow else hi
    step = max(1.0, nice_step(cap - lo, count))
    start = math.floor(lo / step) * step
    n = max(1, math.ceil((cap - start) / step))
    if start + n * step <= cap:  # the top value belongs in [edge, edge + step)
        n += 1
    return Bins([start + i * step for i in range(n + 1)], overflow)


def bin_counts(values: list[int], b: Bins) -> list[int]:
    step = b.edges[1] - b.edges[0]
    regular = len(b.edges) - 1
    counts = [0] * (regular + (1 if b.overflow else 0))
    for v in values:
        i = regular if v >= b.edges[-1] and b.overflow else min(int((v - b.edges[0]) // step),
                                                                 regular - 1)
        counts[i] += 1
    return counts


def no_data(title: str, subtitle: str = "") -> str:
    return _figure(title, subtitle, '<div class="nodata">no data</div>')


def _figure(title: str, subtitle: str, body: str) -> str:
    sub = f'<p class="chart-sub">{esc(subtitle)}</p>' if subtitle else ""
    return f'<figure class="chart"><figcaption>{esc(title)}</figcaption>{sub}{body}</figure>'


def _svg(label: str, height: int, inner: list[str]) -> str:
    # No xmlns: inline SVG in HTML needs none, and the page holds no URL at all.
    return (f'<svg viewBox="0 0 {CHART_W} {height}" role="img" aria-label="{esc(label)}" '
            f'font-size="11" fill="#59636e">'
            + "".join(inner) + "</svg>")


def _y_axis(top_value: float, plot_h: int, label: str) -> tuple[list[str], float]:
    """Gridlines and labels of a count axis; the value at the top of the plot."""
    step = nice_step(top_value, 4, whole=True)
    top = max(step, math.ceil(top_value / step) * step)
    parts = []
    ticks = int(round(top / step))
    for i in range(ticks + 1):
        y = MARGIN_T + plot_h - plot_h * i / ticks
        parts.append(f'<line x1="{MARGIN_L}" x2="{CHART_W - MARGIN_R}" y1="{y:.1f}" '
                     f'y2="{y:.1f}" stroke="#d8dee4" stroke-width="1"/>')
        parts.append(f'<text x="{MARGIN_L - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{esc(compact(i * step))}</text>')
    mid = MARGIN_T + plot_h / 2
    parts.append(f'<text x="14" y="{mid:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {mid:.1f})" fill="#1f2328">{esc(label)}</text>')
    return parts, top


def _x_label(text: str, height: int) -> str:
    x = MARGIN_L + (CHART_W - MARGIN_L - MARGIN_R) / 2
    return f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle" fill="#1f2328">' \
           f'{esc(text)}</text>'


def _legend(series: Iterable[tuple[str, str]]) -> str:
    parts, x = [], CHART_W - MARGIN_R
    for name, color in reversed(list(series)):
        x -= 8 + 7 * len(name) + 22
        parts.append(f'<rect x="{x}" y="8" width="10" height="10" fill="{color}"/>'
                     f'<text x="{x + 14}" y="17">{esc(name)}</text>')
    return "".join(parts)


def _column_chart(label: str, columns: list[tuple[str, list[tuple[str, int]]]],
                  tick_labels: Sequence[tuple[float, str]], x_label: str, y_label: str,
                  colors: Mapping[str, str]) -> str:
    """Stacked columns: one per (tooltip, [(series, count)]), labels at column boundaries."""
    plot_w = CHART_W - MARGIN_L - MARGIN_R
    plot_h = CHART_H - MARGIN_T - MARGIN_B
    peak = max((sum(c for _, c in stack) for _, stack in columns), default=0)
    parts, top = _y_axis(peak, plot_h, y_label)
    width = plot_w / max(1, len(columns))
    base_y = MARGIN_T + plot_h
    for i, (tip, stack) in enumerate(columns):
        y: float = base_y
        total = sum(c for _, c in stack)
        detail = ", ".join(f"{c:,} {s}" for s, c in stack if c) or "0"
        for series, count in stack:
            if not count or series not in colors:
                continue
            h = plot_h * count / top
            y -= h
            parts.append(
                f'<rect x="{MARGIN_L + i * width + 1:.1f}" y="{y:.1f}" '
                f'width="{max(1.0, width - 2):.1f}" height="{h:.1f}" fill="{colors[series]}">'
                f"<title>{esc(tip)}: {esc(detail if len(stack) > 1 else f'{total:,}')}"
                f"</title></rect>")
    parts.append(f'<line x1="{MARGIN_L}" x2="{CHART_W - MARGIN_R}" y1="{base_y}" y2="{base_y}" '
                 f'stroke="#59636e"/>')
    for boundary, text in tick_labels:
        x = MARGIN_L + boundary * width
        # A label at the right edge would be cut off by the viewBox: it ends there instead.
        anchor = "end" if x > CHART_W - MARGIN_R - 3 * len(text) else "middle"
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{base_y}" y2="{base_y + 4}" '
                     f'stroke="#59636e"/><text x="{x:.1f}" y="{base_y + 16}" '
                     f'text-anchor="{anchor}">{esc(text)}</text>')
    parts.append(_x_label(x_label, CHART_H))
    if len(colors) > 1:
        parts.append(_legend(colors.items()))
    return _svg(label, CHART_H, parts)


def histogram_chart(title: str, series: Mapping[str, list[int]], unit: str, x_label: str,
                    colors: Mapping[str, str], subtitle: str = "") -> str:
    """A (stacked) histogram of integer values, or "no data"."""
    values = [v for vs in series.values() for v in vs]
    if not values:
        return no_data(title, subtitle)
    b = bins(values)
    per_series = {name: bin_counts(vs, b) for name, vs in series.items()}
    regular = len(b.edges) - 1
    columns = []
    for i in range(regular + (1 if b.overflow else 0)):
        if i < regular:
            tip = f"{compact(b.edges[i])}–{compact(b.edges[i + 1])} {unit}"
        else:
            tip = f"≥ {compact(b.edges[-1])} {unit}"
        columns.append((tip, [(name, per_series[name][i]) for name in series]))
    every = max(1, math.ceil(regular / 6))
    # At column boundaries; the overflow column's label sits in its middle.
    ticks: list[tuple[float, str]] = [(i, compact(b.edges[i]))
                                      for i in range(0, regular + 1, every)]
    if b.overflow:
        ticks.append((regular + 0.5, f">{compact(b.edges[-1])}"))
    shown = {name: colors[name] for name, vs in series.items() if vs}
    chart = _column_chart(title, columns, ticks, x_label, "rows", shown)
    return _figure(title, subtitle, chart)


BUCKETS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
             43200, 86400, 7 * 86400, 30 * 86400)


def time_buckets(processed: Mapping[datetime, int],
                 most: int = 40) -> tuple[datetime, int, list[int]]:
    """Rows per time bucket: the start, the bucket width in seconds and the counts, with the
    narrowest width that needs at most `most` buckets."""
    first, last = min(processed), max(processed)
    span = (last - first).total_seconds()
    width = next((w for w in BUCKETS_S if span / w < most), BUCKETS_S[-1])
    # A few empty buckets around a short run, so one batch is a column, not the whole plot.
    pad = max(0, 5 - int(span // width) - 1) // 2
    start = datetime.fromtimestamp((first.timestamp() // width - pad) * width, timezone.utc)
    counts = [0] * (int((last - start).total_seconds() // width) + 1 + pad)
    for when, n in processed.items():
        counts[int((when - start).total_seconds() // width)] += n
    return start, width, counts


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:g} s"
    if seconds < 3600:
        return f"{seconds / 60:g} min"
    if seconds < 86400:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 86400:g} d"


def throughput_chart(processed: Mapping[datetime, int]) -> str:
    title = "Throughput over time"
    subtitle = ("Rows written per time bucket, by processed_at. Every row of a batch gets the "
                "batch's time, so each batch shows as one step.")
    if not processed:
        return no_data(title, subtitle)
    start, width, counts = time_buckets(processed)
    fmt = "%H:%M:%S" if width < 60 else ("%H:%M" if width < 86400 else "%Y-%m-%d")
    if width < 86400 and (start + timedelta(seconds=width * len(counts))).date() != start.date():
        fmt = "%m-%d " + fmt
    columns = []
    for i, n in enumerate(counts):
        at = start + timedelta(seconds=i * width)
        columns.append((f"{at:%Y-%m-%d %H:%M:%S} UTC, {_duration(width)}", [("rows", n)]))
    every = max(1, math.ceil(len(counts) / 5))
    ticks = [(i, f"{start + timedelta(seconds=i * width):{fmt}}")
             for i in range(0, len(counts) + 1, every)]
    chart = _column_chart(title, columns, ticks, f"processed_at (UTC), {_duration(width)} buckets",
                          f"rows per {_duration(width)}", {"rows": NEUTRAL})
    return _figure(title, subtitle, chart)


def errors_chart(errors: Mapping[tuple[str, str], int]) -> str:
    """Horizontal bars, one per error class, coloured by status."""
    title = "Errors by class"
    subtitle = "Rows per error class: invalid rows were never sent, failed rows were."
    if not errors:
        return no_data(title, subtitle)
    items = sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))
    left, bar_h, gap = 150, 18, 8
    height = MARGIN_T + len(items) * (bar_h + gap) + MARGIN_B - gap
    plot_w = CHART_W - left - MARGIN_R - 40
    peak = max(n for _, n in items)
    step = nice_step(peak, 4, whole=True)
    top = max(step, math.ceil(peak / step) * step)
    parts = []
    axis_y = height - MARGIN_B + 6
    for i in range(int(round(top / step)) + 1):
        x = left + plot_w * i * step / top
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{MARGIN_T - 4}" y2="{axis_y}" '
                     f'stroke="#d8dee4"/><text x="{x:.1f}" y="{axis_y + 14}" '
                     f'text-anchor="middle">{esc(compact(i * step))}</text>')
    for i, ((status, error_class), n) in enumerate(items):
        y = MARGIN_T + i * (bar_h + gap)
        w = max(1.0, plot_w * n / top)
        color = COLORS.get(status, NEUTRAL)
        parts.append(
            f'<text x="{left - 8}" y="{y + bar_h - 5}" text-anchor="end" fill="#1f2328">'
            f"{esc(error_class)}</text>"
            f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}">'
            f"<title>{esc(error_class)} ({esc(status)}): {n:,} rows</title></rect>"
            f'<text x="{left + w + 6:.1f}" y="{y + bar_h - 5}">{n:,}</text>')
    x_mid = left + plot_w / 2
    parts.append(f'<text x="{x_mid:.1f}" y="{height - 6}" text-anchor="middle" '
                 f'fill="#1f2328">rows</text>')
    statuses = {s for s, _ in errors}
    parts.append(_legend((s, COLORS[s]) for s in PROBLEMS[::-1] if s in statuses))
    return _figure(title, subtitle, _svg(title, height, parts))


def charts(totals: Totals) -> list[str]:
    latency = histogram_chart(
        "Latency distribution",
        {s: totals.latencies[s] for s in (Status.OK, Status.FAILED)},
        "ms", "latency of the successful (or last) attempt, ms",
        COLORS, "Rows that made requests (attempts > 0), by outcome.")
    if totals.tokens:
        tokens = histogram_chart("Tokens per image", {Status.OK: totals.tokens}, "tokens",
                                 "total tokens per request (prompt + completion)",
                                 {Status.OK: NEUTRAL}, "Ok rows that made requests.")
    else:
        tokens = histogram_chart("Tokens per image", {"estimated": totals.image_tokens},
                                 "tokens", "estimated image tokens (the family's formula)",
                                 {"estimated": NEUTRAL}, "No usage recorded: estimates.")
    return [latency, throughput_chart(totals.processed), errors_chart(totals.errors), tokens]
