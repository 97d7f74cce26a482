"""The page: one self-contained HTML document from plain data. The CSS, the status filter's
script and the Content-Security-Policy that allows only those two (by hash) and data: images; the
header figures, the runs table, the gallery cards with their thumbnails or placeholders, and the
sampling note; `page` puts them together within PAGE_BUDGET_BYTES, and `render_report` makes the
page from rows, runs rows and thumbnails, with no Spark.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pipeline.images.limits import Catalog, load_catalog
from pipeline.outcomes import Status
from pipeline.percentiles import percentile
from pipeline.report.charts import charts, esc
from pipeline.report.sampling import (
    MAX_THUMBNAILS,
    PROBLEM_SHARE,
    PROBLEMS,
    gallery_order,
    row_key,
    tally,
)
from pipeline.report.thumbnails import NOT_READ, Preview, _as_preview, image_size
from pipeline.report.totals import CHECKED, Checked, FamilyCost, Totals, costs, utc

# The bound is 20 MB; thumbnails stop being embedded before the page passes this.
PAGE_BUDGET_BYTES = 19_000_000
MAX_CAPTION_CHARS = 2000  # one pathological answer must not dominate the page
MAX_MESSAGE_CHARS = 500
RUNS_LISTED = 10

CSS = """
:root { --ok: #1a7f37; --invalid: #b86e00; --failed: #cf222e; --ink: #1f2328;
  --muted: #59636e; --line: #d1d9e0; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif; }
header.top { background: #fff; border-bottom: 1px solid var(--line); }
header.top > div, main { max-width: 1240px; margin: 0 auto; padding: 16px 24px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 10px; }
.sub, .note, .chart-sub, .figure .detail { color: var(--muted); }
.sub { margin: 0; word-break: break-all; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr));
  gap: 12px; }
.figure, .chart, .card, table.runs { background: #fff; border: 1px solid var(--line);
  border-radius: 8px; }
.figure { padding: 12px 14px; }
.figure .label { font-size: 11px; text-transform: uppercase; letter-spacing: .05em;
  color: var(--muted); }
.figure .value { font-size: 22px; font-weight: 600; }
.figure .detail { font-size: 12px; margin-top: 2px; }
.figure.wide { grid-column: span 2; }
.figure ul { list-style: none; margin: 4px 0 0; padding: 0; font-size: 13px; }
.v-ok { color: var(--ok); } .v-invalid { color: var(--invalid); }
.v-failed { color: var(--failed); }
table.runs { border-collapse: separate; border-spacing: 0; width: 100%; font-size: 12.5px;
  overflow: hidden; }
.wrap { overflow-x: auto; }
table.runs th, table.runs td { padding: 6px 8px; text-align: right; white-space: nowrap;
  border-bottom: 1px solid var(--line); }
table.runs th { background: #f0f3f6; font-weight: 600; }
table.runs .l { text-align: left; }
table.runs .ep { white-space: normal; overflow-wrap: anywhere; }
table.runs tr:last-child td { border-bottom: 0; }
table.runs tr.selected td { background: #fff8c5; }
td.bad { color: var(--failed); font-weight: 600; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr));
  gap: 16px; }
.chart { margin: 0; padding: 12px 14px; }
.chart figcaption { font-weight: 600; }
.chart-sub { font-size: 12px; margin: 2px 0 6px; }
.chart svg { width: 100%; height: auto; display: block; }
.nodata { height: 180px; display: flex; align-items: center; justify-content: center;
  color: var(--muted); background: #f6f8fa; border-radius: 6px; }
.filters { display: flex; gap: 8px; flex-wrap: wrap; align-items: center; margin: 10px 0 14px; }
.filters button { font: inherit; border: 1px solid var(--line); background: #fff;
  border-radius: 999px; padding: 4px 14px; cursor: pointer; }
.filters button[aria-pressed="true"] { background: var(--ink); border-color: var(--ink);
  color: #fff; }
.filters .count { opacity: .7; margin-left: 4px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr));
  gap: 12px; }
.card { display: flex; flex-direction: column; overflow: hidden; }
.card[hidden] { display: none; }
.thumb { margin: 0; height: 168px; background: #eef1f4; display: flex; align-items: center;
  justify-content: center; }
.thumb img { max-width: 100%; max-height: 160px; display: block; }
.placeholder { color: var(--muted); font-size: 12px; text-align: center; padding: 12px;
  border: 1px dashed #b7c0c9; border-radius: 6px; margin: 16px; }
.body { padding: 8px 10px 10px; display: flex; flex-direction: column; gap: 4px; min-width: 0; }
.head { display: flex; gap: 6px; align-items: center; min-width: 0; }
.name { font-weight: 600; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.badge { flex: none; color: #fff; border-radius: 999px; padding: 0 8px; font-size: 11px;
  font-weight: 600; line-height: 18px; }
.badge.ok { background: var(--ok); } .badge.invalid { background: var(--invalid); }
.badge.failed { background: var(--failed); }
.caption, .reason { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; font-size: 13px; }
.reason { color: #82071e; }
.reason .class { font-weight: 600; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
.facts { color: var(--muted); font-size: 12px; overflow-wrap: anywhere; }
.truncated { color: var(--muted); font-style: italic; }
"""

SCRIPT = """
(function () {
  var buttons = document.querySelectorAll("[data-filter]");
  var cards = document.querySelectorAll(".card");
  var visible = document.getElementById("visible");
  function show(status) {
    var n = 0;
    cards.forEach(function (card) {
      var on = status === "all" || card.getAttribute("data-status") === status;
      card.hidden = !on;
      if (on) { n += 1; }
    });
    buttons.forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.getAttribute("data-filter") === status));
    });
    visible.textContent = String(n);
  }
  buttons.forEach(function (b) {
    b.addEventListener("click", function () { show(b.getAttribute("data-filter")); });
  });
})();
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Nothing from the network, ever; only our own style and script run (by hash).
CSP = (f"default-src 'none'; img-src data:; style-src {_csp_hash(CSS)}; "
       f"script-src {_csp_hash(SCRIPT)}; base-uri 'none'; form-action 'none'")


@dataclass(frozen=True)
class Scope:
    """What the page is about."""

    table: str
    run_id: str | None = None  # None: every row of the table
    generated_at: datetime | None = None


@dataclass(frozen=True)
class Page:
    html: str
    rows: int  # rows counted in the figures and charts
    shown: int  # gallery cards
    thumbnails: int  # cards with an embedded thumbnail

    @property
    def sampled(self) -> bool:
        return self.shown < self.rows


def _figure_box(label: str, value: str, detail: str = "", css: str = "") -> str:
    detail_html = f'<div class="detail">{detail}</div>' if detail else ""
    return (f'<div class="figure {css}"><div class="label">{esc(label)}</div>'
            f'<div class="value">{value}</div>{detail_html}</div>')


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


def _money(value: float, currency: str) -> str:
    """Cents, or three significant digits for the fractions of a cent a small run costs."""
    digits = 2 if value >= 1 or value <= 0 else min(8, 2 - math.floor(math.log10(value)))
    text = f"{value:,.{digits}f}"
    if "." in text and digits > 2:
        text = text.rstrip("0")
        text += "0" * max(0, 2 - len(text.split(".")[1]))
    return f"{text} {currency}"


def latest_run(runs: Sequence[Mapping[str, Any]], run_id: str | None) -> Mapping[str, Any] | None:
    if run_id is not None:
        return next((r for r in runs if r.get("run_id") == run_id), None)
    epoch = datetime.min.replace(tzinfo=timezone.utc)
    return max(runs, key=lambda r: utc(r["started_at"]) if r.get("started_at") else epoch,
               default=None)


def figures(totals: Totals, run: Mapping[str, Any] | None, family_costs: list[FamilyCost],
            scope: Scope) -> str:
    n = totals.rows
    boxes = [_figure_box("files", f"{n:,}", esc(
        f"{len(totals.targets)} endpoint/prompt pair(s)" if n else "no rows"))]
    for status in Status:
        count = totals.statuses.get(status, 0)
        boxes.append(_figure_box(status, f'<span class="v-{status}">{count:,}</span>',
                                 esc(f"{_pct(count, n)} of the rows")))
    paid = totals.paid_total()
    boxes.append(_figure_box(
        "tokens paid", f"{paid.total_tokens:,}",
        esc(f"prompt {paid.prompt_tokens:,} · completion {paid.completion_tokens:,}; "
            f"{paid.rows:,} rows with requests ({round(paid.requests):,} requests), "
            f"{totals.reused:,} reused answers not paid")))
    latencies = totals.latencies[Status.OK] + totals.latencies[Status.FAILED]
    p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
    boxes.append(_figure_box(
        "latency p50 / p95", esc(f"{p50:,} / {p95:,} ms") if p50 is not None else "–",
        esc(f"over {len(latencies):,} rows with requests")))
    if run is not None:
        speed = run.get("images_per_s")
        started, ended = run.get("started_at"), run.get("ended_at")
        took = f", {(utc(ended) - utc(started)).total_seconds():.1f} s" if started and ended \
            else ""
        which = "this run" if scope.run_id else "latest run"
        boxes.append(_figure_box(
            "images/s", esc(f"{speed:,.2f}") if speed is not None else "–",
            esc(f"{which} {str(run.get('run_id'))[:12]}, {run.get('status')}{took}")))
    else:
        boxes.append(_figure_box("images/s", "–", "no run recorded in the runs table"))
    boxes.append(_cost_box(family_costs))
    return '<section class="figures">' + "".join(boxes) + "</section>"


def _cost_box(family_costs: list[FamilyCost]) -> str:
    if not family_costs:
        return _figure_box("estimated cost", "–", "no rows made requests", "wide")
    items: list[str] = []
    sums: defaultdict[str, float] = defaultdict(float)  # by currency
    for fc in family_costs:
        tokens = f"{fc.usage.total_tokens:,} tokens"
        if fc.price is None:
            items.append(f"<li><b>{esc(fc.family)}</b>: {esc(tokens)}, no price configured</li>")
        else:
            sums[fc.price.currency] += fc.cost or 0.0
            items.append(
                f'<li title="{esc(fc.price.source)}"><b>{esc(fc.family)}</b>: '
                f"{esc(_money(fc.cost or 0.0, fc.price.currency))} for {esc(tokens)} "
                f"(source: {esc(fc.price.source)})</li>")
    value = " + ".join(esc(_money(v, c)) for c, v in sorted(sums.items())) or "–"
    detail = ("per model family, over rows with attempts > 0; prices from conf/models.yml"
              f"<ul>{''.join(items)}</ul>")
    return _figure_box("estimated cost", value, detail, "wide")


CHECKED_HEADS = "".join(f"<th>{esc(c.value.replace('_', ' '))}</th>" for c in CHECKED)


def checked_cells(checked: Checked) -> str:
    """One cell per class of answer that is no caption: its rows and their share of those
    sent, marked when there are any."""
    cells = []
    for error_class in CHECKED:
        count, share = checked.classes[error_class], checked.share(error_class)
        text = "–" if share is None else f"{count:,} ({share:.1%})"
        css = ' class="bad"' if count else ""
        cells.append(f"<td{css}>{esc(text)}</td>")
    return "".join(cells)


def checked_table(totals: Totals) -> str:
    """Per endpoint and prompt: the rows sent, and how many answers were cut off at
    max_tokens, refused, or broke the response schema (docs/monitoring.md)."""
    if not totals.checked:
        return ""
    head = (f"<tr><th class='l'>endpoint</th><th class='l'>prompt</th><th>rows sent</th>"
            f"{CHECKED_HEADS}<th class='l'>finish reasons</th></tr>")
    body = "".join(
        f"<tr><td class='l ep'>{esc(endpoint)}</td><td class='l'><code>{esc(prompt)}</code>"
        f"</td><td>{c.sent:,}</td>{checked_cells(c)}<td class='l'>"
        + esc(" · ".join(f"{k} {n:,}" for k, n in c.finish_reasons.most_common()) or "–")
        + "</td></tr>"
        for (endpoint, prompt), c in sorted(totals.checked.items()))
    note = ('<p class="note">Answers that came but are no caption, as a share of the rows sent: '
            "cut off at max_tokens (raise --max-tokens and run again), refused by the model or "
            "its guard, or breaking the response schema after every attempt. The SQL path "
            "cannot tell a cut-off plain answer from a complete one.</p>")
    return (f'<h2>Answers checked</h2><div class="wrap"><table class="runs checked">{head}'
            f"{body}</table></div>{note}")


def runs_table(runs: Sequence[Mapping[str, Any]], selected: str | None) -> str:
    if not runs:
        return '<p class="note">No run recorded in the runs table.</p>'
    epoch = datetime.min.replace(tzinfo=timezone.utc)
    ordered = sorted(runs, key=lambda r: utc(r["started_at"]) if r.get("started_at") else epoch,
                     reverse=True)
    shown = ordered[:RUNS_LISTED]
    if selected and all(r.get("run_id") != selected for r in shown):
        shown += [r for r in ordered if r.get("run_id") == selected]
    head = ("<tr><th class='l'>run</th><th class='l'>started (UTC)</th><th>seconds</th>"
            "<th class='l'>status</th><th class='l'>mode</th><th class='l'>endpoint</th>"
            "<th>listed</th><th>skipped</th><th>ok</th><th>invalid</th><th>failed</th>"
            "<th>cut off</th><th>requests</th><th>retries</th><th>images/s</th></tr>")
    body = []
    for r in shown:
        started, ended = r.get("started_at"), r.get("ended_at")
        seconds = f"{(utc(ended) - utc(started)).total_seconds():.1f}" if started and ended \
            else "–"

        def num(key: str, r: Mapping[str, Any] = r) -> str:
            v = r.get(key)
            return "–" if v is None else (f"{v:,.2f}" if isinstance(v, float) else f"{v:,}")

        css = ' class="selected"' if r.get("run_id") == selected else ""
        body.append(
            f"<tr{css}><td class='l' title=\"{esc(r.get('run_id'))}\">"
            f"{esc(str(r.get('run_id'))[:12])}</td>"
            f"<td class='l'>{esc(f'{utc(started):%Y-%m-%d %H:%M:%S}' if started else '–')}</td>"
            f"<td>{seconds}</td><td class='l'>{esc(r.get('status'))}</td>"
            f"<td class='l'>{esc(r.get('mode'))}</td><td class='l ep'>{esc(r.get('endpoint'))}</td>"
            + "".join(f"<td>{esc(num(k))}</td>" for k in (
                "listed", "skipped", "ok", "invalid", "failed", "cut_off", "requests",
                "retries", "images_per_s")) + "</tr>")
    more = (f'<p class="note">{len(runs):,} runs recorded; the {RUNS_LISTED} latest are listed.'
            "</p>" if len(runs) > len(shown) else "")
    return f'<div class="wrap"><table class="runs">{head}{"".join(body)}</table></div>{more}'


def _clip(text: str, limit: int) -> str:
    """Escaped text, cut at `limit` characters with a visible mark."""
    if len(text) <= limit:
        return esc(text)
    return (esc(text[:limit]) + f'<span class="truncated">… ({len(text):,} characters; '
            "the full text is in the table)</span>")


def _file_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] or path


def card(row: Mapping[str, Any], thumb: str, many_targets: bool) -> str:
    """One gallery card; `thumb` is the thumbnail's (or placeholder's) markup."""
    status = str(row.get("status"))
    path = str(row.get("path") or "")
    if status == Status.OK:
        text = f'<p class="caption">{_clip(str(row.get("caption") or ""), MAX_CAPTION_CHARS)}</p>'
    else:
        text = (f'<p class="reason"><span class="class">{esc(row.get("error_class"))}</span>: '
                f'{_clip(str(row.get("error_message") or ""), MAX_MESSAGE_CHARS)}</p>')
    facts = []
    if row.get("format"):
        facts.append(esc(row["format"]))
    if row.get("width") and row.get("height"):
        facts.append(f"{row['width']}×{row['height']}")
    if row.get("size_bytes") is not None:
        facts.append(esc(_size(row["size_bytes"])))
    if row.get("latency_ms") is not None and (row.get("attempts") or 0) > 0:
        facts.append(f"{row['latency_ms']:,} ms")
    if row.get("total_tokens") is not None:
        facts.append(f"{row['total_tokens']:,} tokens")
    if (row.get("attempts") or 0) > 1:
        facts.append(f"{row['attempts']} attempts")
    if row.get("reused_from"):
        facts.append(f'<span title="{esc(row["reused_from"])}">reused from '
                     f"{esc(_file_name(str(row['reused_from'])))}</span>")
    if row.get("group_key"):
        facts.append(f'group <span class="group">{esc(row["group_key"])}</span>')
    if many_targets:
        facts.append(esc(f"{row.get('endpoint')} · prompt {str(row.get('prompt_id'))[:8]}"))
    return (
        f'<article class="card" data-status="{esc(status)}">{thumb}<div class="body">'
        f'<div class="head"><span class="badge {esc(status)}">{esc(status)}</span>'
        f'<span class="name" title="{esc(path)}">{esc(_file_name(path))}</span></div>'
        f'{text}<div class="facts">{" · ".join(facts)}</div></div></article>')


def _size(n: int) -> str:
    for limit, unit in ((1 << 20, "MB"), (1 << 10, "KB")):
        if n >= limit:
            return f"{n / limit:.1f} {unit}"
    return f"{n} B"


def _thumb_markup(row: Mapping[str, Any], found: Preview | None, allowed: bool) -> str:
    """The card's image, or a placeholder saying why there is none."""
    name = esc(_file_name(str(row.get("path") or "")))
    expected = row.get("content_sha256")
    if found is None:
        note = "not read" if row.get("error_class") in NOT_READ else "no preview"
    elif found.note:
        note = found.note
    elif expected and found.sha256 and found.sha256 != expected:
        note = "file changed since it was captioned"
    elif found.jpeg is None:
        note = "no preview"
    elif not allowed:
        note = "thumbnail left out to keep the page small"
    else:
        size = image_size(found.jpeg)
        dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
        data = base64.b64encode(found.jpeg).decode("ascii")
        return (f'<figure class="thumb"><img src="data:image/jpeg;base64,{data}"{dims} '
                f'alt="thumbnail of {name}"></figure>')
    return f'<figure class="thumb"><div class="placeholder">{esc(note)}</div></figure>'


def gallery(rows: Sequence[Mapping[str, Any]], previews: Mapping[str, Any], totals: Totals,
            scope: Scope, budget: int) -> tuple[str, int]:
    """The filter buttons, the sampling note and the cards; and how many thumbnails it holds.
    Thumbnails are embedded in gallery order while they fit in `budget` bytes."""
    rows = sorted(rows, key=gallery_order)
    many = len(totals.targets) > 1
    found = {str(r.get("path")): _as_preview(previews.get(str(r.get("path")))) for r in rows}
    cards, used, embedded = [], 0, 0
    for row in rows:
        p = found[str(row.get("path"))]
        cost = len(p.jpeg) * 4 // 3 + 100 if p is not None and p.jpeg else 0
        allowed = used + cost <= budget
        markup = _thumb_markup(row, p, allowed)
        if "<img" in markup:
            used += cost
            embedded += 1
        cards.append(card(row, markup, many))
    shown = Counter(str(r.get("status")) for r in rows)
    buttons = [f'<button type="button" data-filter="all" aria-pressed="true">all'
               f'<span class="count">{len(rows):,}</span></button>']
    for status in Status:
        buttons.append(f'<button type="button" data-filter="{status}" aria-pressed="false">'
                       f'{status}<span class="count">{shown.get(status, 0):,}</span></button>')
    buttons.append(f'<span class="note"><span id="visible">{len(rows):,}</span> cards shown'
                   "</span>")
    notes = [sampling_note(totals.statuses, shown, scope)]
    in_order = (found[str(r.get("path"))] for r in rows)
    left_out = sum(1 for preview in in_order if preview is not None and preview.jpeg) - embedded
    if left_out > 0:
        notes.append(f"{left_out:,} thumbnails were left out to keep the page under "
                     f"{PAGE_BUDGET_BYTES / 1e6:.0f} MB.")
    return ('<section id="gallery"><h2>Gallery</h2>'
            + "".join(f'<p class="note">{esc(n)}</p>' for n in notes)
            + f'<div class="filters" role="group" aria-label="filter by status">'
            f'{"".join(buttons)}</div>'
            f'<div class="gallery">{"".join(cards)}</div></section>'), embedded


def sampling_note(counts: Mapping[str, int], shown: Mapping[str, int], scope: Scope) -> str:
    total, cards = sum(counts.values()), sum(shown.values())
    if cards >= total:
        return f"Showing all {total:,} rows." if total else "No rows to show."
    parts = []
    for status in (*PROBLEMS, Status.OK):
        n, k = counts.get(status, 0), shown.get(status, 0)
        if n:
            parts.append(f"all {n:,} {status}" if k == n else f"{k:,} of {n:,} {status}")
    return (f"Showing {cards:,} of {total:,} rows, sampled: {', '.join(parts)} "
            f"(failed and invalid rows first, up to {PROBLEM_SHARE:.0%} of the cards; a fixed "
            "pseudo-random choice by path otherwise). The figures and charts above count "
            "every row.")


def page(totals: Totals, gallery_rows: Sequence[Mapping[str, Any]], previews: Mapping[str, Any],
         runs: Sequence[Mapping[str, Any]], scope: Scope, catalog: Catalog) -> Page:
    """The whole HTML document."""
    run = latest_run(runs, scope.run_id)
    when = utc(scope.generated_at or datetime.now(timezone.utc))
    what = f"rows written by run {scope.run_id}" if scope.run_id else "every row of the table"
    header = (f'<header class="top"><div><h1>vision-batch report</h1>'
              f'<p class="sub">{esc(scope.table)} · {esc(what)} · generated '
              f"{esc(f'{when:%Y-%m-%d %H:%M:%S}')} UTC</p></div></header>")
    top = (figures(totals, run, costs(totals.paid, catalog), scope)
           + checked_table(totals)
           + "<h2>Runs</h2>" + runs_table(runs, scope.run_id)
           + '<h2>Charts</h2><div class="charts">' + "".join(charts(totals)) + "</div>")
    head = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
            f"<title>vision-batch report: {esc(scope.table)}</title>"
            f"<style>{CSS}</style></head><body>")
    tail = f"<script>{SCRIPT}</script></body></html>"
    fixed = len((head + header + top + tail).encode()) + 200_000  # gallery text margin
    text_only, _ = gallery(gallery_rows, {}, totals, scope, 0)
    budget = PAGE_BUDGET_BYTES - fixed - len(text_only.encode())
    section, embedded = gallery(gallery_rows, previews, totals, scope, max(0, budget))
    document = head + header + "<main>" + top + section + "</main>" + tail
    return Page(document, totals.rows, len(gallery_rows), embedded)


def render_report(rows: Iterable[Mapping[str, Any]], runs: Iterable[Mapping[str, Any]] = (),
                  previews: Mapping[str, Any] | None = None, *, scope: Scope | None = None,
                  catalog: Catalog | None = None,
                  max_thumbnails: int = MAX_THUMBNAILS) -> Page:
    """The page from plain data: every row (dicts with the captions table's columns), the
    runs rows, and thumbnails (bytes or Preview) by path. No Spark."""
    rows = list(rows)
    totals, chosen = tally(rows, max_thumbnails)
    shown = [r for r in rows if row_key(r) in chosen]
    return page(totals, shown, previews or {}, list(runs), scope or Scope("captions"),
                catalog or load_catalog())
