"""`vision-batch compare` on real local runs of two prompts over the demo photos, opened in
headless Chromium (as the report is: tests/e2e/test_report.py)."""

from __future__ import annotations

import shutil
from collections import defaultdict
from dataclasses import replace

from pipeline import cli
from pipeline import runs as runner
from pipeline.resources import samples_dir
from tests.e2e.test_report import artifacts_dir, browser_or_skip, full_page_png

PROMPTS = ("Describe this image in one sentence.",
           "List the three most visible things in this image.")


def test_the_compare_page_shows_both_prompts_answers_and_sorts_by_disagreement(
    spark, serve, run_config, tmp_path, capsys
) -> None:
    driver = browser_or_skip(tmp_path)
    try:
        _, credentials = serve()
        base = run_config(samples_dir())
        results = [runner.run(replace(base, prompt=p), credentials, spark,
                              progress=lambda _: None) for p in PROMPTS]
        rows = [r.asDict() for r in spark.read.format("delta").load(base.table).collect()]
        by_prompt: dict[str, dict[str, dict]] = defaultdict(dict)
        for r in rows:
            by_prompt[r["prompt_id"]][r["path"]] = r
        assert len(by_prompt) == 2 and all(r.statuses["ok"] == 12 for r in results)

        out = tmp_path / "compare.html"
        assert cli.main(["compare", "--table", base.table, "--out", str(out)]) == 0
        assert "2 pair(s), 12 images" in capsys.readouterr().out
        assert "://" not in out.read_text(encoding="utf-8")  # self-contained
        driver.get(out.as_uri())

        # Every image: a loaded thumbnail, and each pair's caption equal to the table's.
        pairs = [h.text for h in driver.find_elements("css selector", "table.grid th")][1:]
        lines = driver.find_elements("css selector", "table.grid tbody tr")
        assert len(lines) == 12
        for line in lines:
            path = line.get_attribute("data-path")
            img = line.find_element("css selector", "img")
            assert driver.execute_script("return arguments[0].naturalWidth", img) > 0
            shown = [c.get_attribute("textContent")
                     for c in line.find_elements("css selector", ".caption")]
            expected = [by_prompt[label.rsplit(":", 1)[1]][path]["caption"] for label in pairs]
            assert shown == expected
        # The summary's tokens per image are the table's sums over its rows.
        for summary in driver.find_elements("css selector", "table.summary tr[data-pair]"):
            prompt_id = summary.get_attribute("data-pair").rsplit(":", 1)[1]
            mine = by_prompt[prompt_id].values()
            for cell, column in (("in", "prompt_tokens"), ("out", "completion_tokens")):
                text = summary.find_element("css selector", f"td.{cell}").text
                assert float(text.replace(",", "")) == \
                    round(sum(r[column] for r in mine) / len(mine), 1)

        def order() -> list[str]:
            return [r.get_attribute("data-path") for r in
                    driver.find_elements("css selector", "table.grid tbody tr")]

        by_path = order()
        assert by_path == sorted(by_path)
        driver.find_element("css selector", '[data-sort="disagreement"]').click()
        ranked = order()
        assert ranked != by_path and sorted(ranked) == by_path
        scores = [float(r.get_attribute("data-disagreement")) for r in
                  driver.find_elements("css selector", "table.grid tbody tr")]
        assert scores == sorted(scores, reverse=True)
        driver.find_element("css selector", '[data-sort="path"]').click()
        assert order() == by_path
        shot = artifacts_dir() / "compare.png"
        shot.write_bytes(full_page_png(driver))
        shutil.copy(out, artifacts_dir() / "compare.html")
    finally:
        driver.quit()

    # A pair the table lacks: one line naming the pairs it has, exit 1.
    assert cli.main(["compare", "--table", base.table, "--out", str(tmp_path / "x.html"),
                     "--pair", "ep-x:nothing"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--pair ep-x:nothing is not in" in err and "local-reference:" in err
    assert "\n" not in err and not (tmp_path / "x.html").exists()
