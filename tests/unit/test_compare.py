"""The compare page from plain rows: summaries, prompts, agreement, the grid, its size."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from pipeline.images.limits import Price, load_catalog
from pipeline.report.compare import Pair, agreement, disagreement, prompt_texts, render_compare
from tests import files

A, B = Pair("ep-a", "p1"), Pair("ep-b", "p2")


def row(pair: Pair, path: str, caption: str | None = "a red car", status: str = "ok",
        **extra) -> dict:
    return {"path": path, "endpoint": pair.endpoint, "prompt_id": pair.prompt_id,
            "status": status, "error_class": None if status == "ok" else "timeout",
            "caption": caption if status == "ok" else None, "response_json": None,
            "prompt_tokens": 100, "completion_tokens": 20, "attempts": 1, "latency_ms": 300,
            **extra}


def test_disagreement_is_zero_for_the_same_words_and_grows_as_they_part() -> None:
    assert disagreement(["A red car.", "a RED car"]) == 0.0
    assert disagreement(["a red car", "a blue car"]) == pytest.approx(1 - 2 / 4)
    assert disagreement(["a red car"]) == 0.0


def test_agreement_is_per_field_over_the_images() -> None:
    answers = [[{"kind": "car", "colour": "red"}, {"kind": "car", "colour": "blue"}],
               [{"kind": "dog", "colour": "brown"}, {"kind": "dog", "colour": "brown"}]]
    assert agreement(answers) == {"colour": 0.5, "kind": 1.0}


def test_prompt_texts_come_from_the_runs_configuration() -> None:
    runs = [{"prompt_id": "p1", "started_at": 1, "config_json": json.dumps({"prompt": "Old"})},
            {"prompt_id": "p1", "started_at": 2, "config_json": json.dumps({"prompt": "New"})},
            {"prompt_id": "g1", "started_at": 3, "config_json": json.dumps(
                {"prompt": "x", "group_by": "folder", "group_prompt": "Together?"})}]
    assert prompt_texts(runs) == {"p1": "New", "g1": "Together?"}


def test_the_page_sums_each_pair_and_shows_every_answer_side_by_side() -> None:
    rows = sorted([row(A, "/in/1.jpg"), row(B, "/in/1.jpg", "a red <b>car</b>"),
                   row(A, "/in/2.jpg", status="failed"), row(B, "/in/2.jpg", "a dog"),
                   row(A, "/in/3.jpg", prompt_tokens=200, completion_tokens=40)],
                  key=lambda r: r["path"])
    html = render_compare(rows, [A, B], [], {"/in/1.jpg": files.jpeg(20, 10)},
                          load_catalog(), "t")
    summary = {m[0]: m[1:] for m in re.findall(
        r'data-pair="([^"]+)">.*?<td class="in">([^<]+)</td><td class="out">([^<]+)</td>',
        html)}
    assert summary == {"ep-a:p1": ("150.0", "30.0"), "ep-b:p2": ("100.0", "20.0")}
    assert html.count("no price configured") == 2
    assert "a red &lt;b&gt;car&lt;/b&gt;" in html and "<b>car" not in html  # escaped
    assert "failed: timeout" in html and "no row" in html  # 3.jpg has no answer from B
    assert html.count("<tr data-path=") == 3 and html.count("data:image/jpeg;base64,") == 1
    assert "nothing to compare" not in html


def test_a_price_gives_the_cost_of_a_thousand_images() -> None:
    catalog = load_catalog()
    generic = replace(catalog.families["generic"], price=Price(1.0, 2.0, "USD", "test"))
    priced = replace(catalog, families={**catalog.families, "generic": generic})
    html = render_compare([row(A, "/in/1.jpg")], [A], [], {}, priced, "t")
    # 1,000 images of 100 input and 20 output tokens: 0.1 M at $1 and 0.02 M at $2.
    assert "0.14 USD" in html
    assert "nothing to compare yet" in html  # one pair only


def test_five_hundred_images_and_four_pairs_stay_a_small_page() -> None:
    pairs = [Pair(f"ep-{i}", "p") for i in range(4)]
    thumb = files.jpeg(128, 96)
    rows = [row(p, f"/in/{n:04}.jpg", f"caption {n} of {p.endpoint} " * 8)
            for n in range(600) for p in pairs]
    html = render_compare(rows, pairs, [], {f"/in/{n:04}.jpg": thumb for n in range(600)},
                          load_catalog(), "t")
    assert html.count("<tr data-path=") == 500 and "500 images of 600" in html
    assert len(html.encode()) < 10_000_000


def test_the_summary_shows_each_pairs_answers_cut_off_refused_or_off_schema() -> None:
    rows = [row(A, f"/in/{i}.jpg") for i in range(6)]
    rows += [row(A, "/in/6.jpg", status="failed", error_class="cut_off"),
             row(A, "/in/7.jpg", status="failed", error_class="schema_mismatch"),
             row(B, "/in/1.jpg", status="failed", error_class="refused"),
             row(B, "/in/2.jpg")]
    rows.sort(key=lambda r: r["path"])
    html = render_compare(rows, [A, B], [], {}, load_catalog(), "t")
    assert "<th>cut off</th><th>refused</th><th>schema mismatch</th>" in html
    shares = {m[0]: re.findall(r"<td[^>]*>([^<]+)</td>", m[1])[5:8] for m in re.findall(
        r'data-pair="([^"]+)">(.*?)</tr>', html)}
    assert shares == {"ep-a:p1": ["1 (12.5%)", "0 (0.0%)", "1 (12.5%)"],
                      "ep-b:p2": ["0 (0.0%)", "1 (50.0%)", "0 (0.0%)"]}
