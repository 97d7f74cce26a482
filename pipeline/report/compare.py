"""`vision-batch compare`: the answers of several (endpoint, prompt) pairs to the same images,
side by side on one self-contained page, with what each pair costs.

Pure functions from plain data (rows of the captions table, runs rows, thumbnails by path),
in the style of the report page (pipeline/report/page.py): every value escaped, one inline
script allowed by its hash, nothing fetched.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.images.limits import Catalog
from pipeline.outcomes import Status
from pipeline.percentiles import percentile
from pipeline.report.charts import esc
from pipeline.report.page import CHECKED_HEADS, _csp_hash, _file_name, _money, checked_cells
from pipeline.report.page import CSS as REPORT_CSS
from pipeline.report.thumbnails import Preview
from pipeline.report.totals import Checked

# What the page reads of each captions row.
COLUMNS = ("path", "endpoint", "prompt_id", "status", "error_class", "caption",
           "response_json", "prompt_tokens", "completion_tokens", "attempts", "latency_ms")
MAX_IMAGES = 500

CSS = REPORT_CSS + """
table.grid td { vertical-align: top; max-width: 420px; }
table.grid td.img { width: 132px; }
table.grid img { max-width: 128px; max-height: 128px; border-radius: 4px; }
.sorts { margin: 8px 0; } .sorts button { margin-right: 6px; }
.note { color: var(--muted); }
"""

# Reorders the grid's rows by a data attribute, largest first (or by path).
SCRIPT = """
(function () {
  var body = document.querySelector("table.grid tbody");
  document.querySelectorAll("[data-sort]").forEach(function (b) {
    b.addEventListener("click", function () {
      var key = b.getAttribute("data-sort");
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (x, y) {
        if (key === "path") { return x.dataset.path < y.dataset.path ? -1 : 1; }
        return Number(y.dataset[key]) - Number(x.dataset[key]) ||
          (x.dataset.path < y.dataset.path ? -1 : 1);
      });
      rows.forEach(function (r) { body.appendChild(r); });
      document.querySelectorAll("[data-sort]").forEach(function (o) {
        o.setAttribute("aria-pressed", String(o === b));
      });
    });
  });
})();
"""

CSP = (f"default-src 'none'; img-src data:; style-src {_csp_hash(CSS)}; "
       f"script-src {_csp_hash(SCRIPT)}; base-uri 'none'; form-action 'none'")


@dataclass(frozen=True, order=True)
class Pair:
    endpoint: str
    prompt_id: str

    @property
    def label(self) -> str:
        return f"{self.endpoint}:{self.prompt_id}"

    @classmethod
    def parse(cls, text: str) -> Pair:
        endpoint, sep, prompt_id = text.rpartition(":")
        if not sep or not endpoint or not prompt_id:
            raise ValueError(f"--pair {text!r} is not ENDPOINT:PROMPT_ID")
        return cls(endpoint, prompt_id)


@dataclass
class Summary:
    """One pair's figures over its rows."""

    files: int = 0
    statuses: Counter = field(default_factory=Counter)
    input_tokens: list[int] = field(default_factory=list)  # per paid ok row
    output_tokens: list[int] = field(default_factory=list)
    latencies: list[int] = field(default_factory=list)  # per paid row
    checked: Checked = field(default_factory=Checked)  # answers that are no caption

    def add(self, row: Mapping[str, Any]) -> None:
        self.files += 1
        self.statuses[row["status"]] += 1
        self.checked.add(row)
        if not row.get("attempts"):
            return  # never sent, or reused an answer: it paid nothing
        if row.get("latency_ms") is not None:
            self.latencies.append(int(row["latency_ms"]))
        if row["status"] == Status.OK and row.get("prompt_tokens") is not None:
            self.input_tokens.append(int(row["prompt_tokens"]))
            self.output_tokens.append(int(row.get("completion_tokens") or 0))


def mean(values: list[int]) -> float | None:
    return sum(values) / len(values) if values else None


def words(text: str | None) -> set[str]:
    return set(re.findall(r"\w+", (text or "").lower()))


def disagreement(captions: list[str]) -> float:
    """1 - the mean word overlap (Jaccard) of every two answers: 0 when they say the same."""
    sets = [words(c) for c in captions]
    pairs = [(a, b) for i, a in enumerate(sets) for b in sets[i + 1:]]
    if not pairs:
        return 0.0
    overlap = [len(a & b) / len(a | b) if a | b else 1.0 for a, b in pairs]
    return 1.0 - sum(overlap) / len(overlap)


def agreement(answers: list[list[Any]]) -> dict[str, float]:
    """Per field of the structured answers: the share of images whose pairs all gave the
    same value. `answers` holds, per image, every pair's parsed answer (a dict)."""
    fields = sorted({k for image in answers for a in image for k in a})
    return {f: sum(len({json.dumps(a.get(f), sort_keys=True) for a in image}) == 1
                   for image in answers) / len(answers)
            for f in fields} if answers else {}


def prompt_texts(runs: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The prompt text of each prompt_id, from the runs' recorded configuration."""
    texts: dict[str, str] = {}
    for run in sorted(runs, key=lambda r: r.get("started_at") or 0):
        try:
            config = json.loads(run.get("config_json") or "{}")
        except ValueError:
            continue
        text = config.get("group_prompt") if config.get("group_by") else config.get("prompt")
        if run.get("prompt_id") and text:
            texts[run["prompt_id"]] = text
    return texts


def _cell(row: Mapping[str, Any] | None) -> str:
    if row is None:
        return '<td class="note">no row</td>'
    if row["status"] != Status.OK:
        return (f'<td><p class="reason"><span class="class">{esc(row["status"])}: '
                f'{esc(row.get("error_class") or "")}</span></p></td>')
    return f'<td><p class="caption">{esc(row.get("caption") or "")}</p></td>'


def _thumb(found: Preview | bytes | None, path: str) -> str:
    name = esc(_file_name(path))
    label = f'<div class="facts" title="{esc(path)}">{name}</div>'
    jpeg = found.jpeg if isinstance(found, Preview) else found
    if not jpeg:
        note = found.note if isinstance(found, Preview) and found.note else "no preview"
        return f'<td class="img"><p class="note">{esc(note)}</p>{label}</td>'
    data = base64.b64encode(jpeg).decode("ascii")
    return (f'<td class="img"><img src="data:image/jpeg;base64,{data}" '
            f'alt="thumbnail of {name}">{label}</td>')


def summary_table(pairs: list[Pair], sums: Mapping[Pair, Summary], prompts: Mapping[str, str],
                  catalog: Catalog) -> str:
    head = ("<tr><th>endpoint</th><th>prompt</th><th>files</th><th>ok</th><th>invalid</th>"
            f"<th>failed</th>{CHECKED_HEADS}<th>input tokens / image</th>"
            "<th>output tokens / image</th>"
            "<th>latency p50</th><th>latency p95</th><th>cost / 1,000 images</th></tr>")
    body = []
    for pair in pairs:
        s = sums[pair]
        price = catalog.family(pair.endpoint).price
        mean_in, mean_out = mean(s.input_tokens), mean(s.output_tokens)
        if price is None:
            cost = '<span class="note">no price configured</span>'
        elif mean_in is None:
            cost = '<span class="note">no paid answer</span>'
        else:
            cost = esc(_money(price.cost(1000 * mean_in, 1000 * (mean_out or 0)),
                              price.currency))

        def num(value: float | None, unit: str = "") -> str:
            return "–" if value is None else f"{value:,.1f}{unit}"

        prompt = prompts.get(pair.prompt_id, "(prompt not recorded)")
        body.append(
            f'<tr data-pair="{esc(pair.label)}"><td>{esc(pair.endpoint)}</td>'
            f'<td><code>{esc(pair.prompt_id)}</code><br>{esc(prompt)}</td>'
            f'<td>{s.files:,}</td><td>{s.statuses[Status.OK]:,}</td>'
            f'<td>{s.statuses[Status.INVALID]:,}</td><td>{s.statuses[Status.FAILED]:,}</td>'
            f"{checked_cells(s.checked)}"
            f'<td class="in">{num(mean_in)}</td><td class="out">{num(mean_out)}</td>'
            f'<td>{num(percentile(s.latencies, 0.5), " ms")}</td>'
            f'<td>{num(percentile(s.latencies, 0.95), " ms")}</td><td>{cost}</td></tr>')
    return f'<table class="summary">{head}{"".join(body)}</table>'


def render_compare(rows: Iterable[Mapping[str, Any]], pairs: list[Pair],
                   runs: Iterable[Mapping[str, Any]], previews: Mapping[str, Any],
                   catalog: Catalog, table: str, max_images: int = MAX_IMAGES) -> str:
    """The page: a summary row per pair (over every row), the prompts, structured-answer
    agreement, and a grid of the first `max_images` images with every pair's answer. `rows`
    come sorted by path, so only the grid's images are held."""
    by_image: dict[str, dict[Pair, Mapping[str, Any]]] = defaultdict(dict)
    sums = {pair: Summary() for pair in pairs}
    images, last = 0, None
    for row in rows:
        pair = Pair(row["endpoint"], row["prompt_id"])
        if pair not in sums:
            continue
        sums[pair].add(row)
        images, last = images + (row["path"] != last), row["path"]
        if row["path"] in by_image or len(by_image) < max_images:
            by_image[row["path"]][pair] = row
    paths = list(by_image)
    lines, structured = [], []
    for path in paths:
        answers = by_image[path]
        ok = [answers[p] for p in pairs if p in answers and answers[p]["status"] == Status.OK]
        captions = [r.get("caption") or "" for r in ok]
        parsed = [_parsed(r.get("response_json")) for r in ok]
        if len(ok) == len(pairs) and all(isinstance(a, dict) for a in parsed):
            structured.append(parsed)
        cells = "".join(_cell(answers.get(p)) for p in pairs)
        lines.append(
            f'<tr data-path="{esc(path)}" data-length="{max(map(len, captions), default=0)}" '
            f'data-disagreement="{disagreement(captions):.4f}">'
            f'{_thumb(previews.get(path), path)}{cells}</tr>')
    note = ("" if len(pairs) > 1 else
            '<p class="note">Only one (endpoint, prompt) pair: nothing to compare yet. Run '
            "another endpoint or prompt over the same files (`--sample N` picks the same "
            "ones).</p>")
    agree = agreement(structured)
    agree_html = "" if not agree else (
        f"<h2>Structured answers: agreement per field</h2><p class=\"note\">Over the "
        f"{len(structured):,} images every pair answered.</p><table class=\"agreement\">"
        + "".join(f"<tr><td><code>{esc(k)}</code></td><td>{v:.0%}</td></tr>"
                  for k, v in agree.items()) + "</table>")
    heads = "".join(f"<th>{esc(p.label)}</th>" for p in pairs)
    shown = (f"{len(paths):,} images" + (f" of {images:,} (the first by path)"
                                         if images > len(paths) else ""))
    grid = (f'<h2>Answers</h2><p class="note">{shown}</p><div class="sorts">Sort: '
            '<button data-sort="path" aria-pressed="true">by path</button>'
            '<button data-sort="length">by answer length</button>'
            '<button data-sort="disagreement">by disagreement</button></div>'
            f'<table class="grid"><thead><tr><th>image</th>{heads}</tr></thead>'
            f'<tbody>{"".join(lines)}</tbody></table>')
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
            f"<title>vision-batch compare: {esc(table)}</title><style>{CSS}</style></head>"
            f'<body><main><h1>vision-batch compare</h1><p class="sub">{esc(table)} · '
            f"{len(pairs)} pair(s)</p>{note}<h2>Pairs</h2>"
            f"{summary_table(pairs, sums, prompt_texts(runs), catalog)}{agree_html}{grid}"
            f"</main><script>{SCRIPT}</script></body></html>")


def _parsed(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None
