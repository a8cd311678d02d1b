"""The report in a real browser (headless Chromium): no console errors, the key sections
visible, sorting works, and hostile model outputs stay inert text, with JavaScript on or off."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from audit.release.compare import compare_runs
from audit.report.gallery import write_gallery
from audit.report.release import render_comparison
from audit.report.render import render_report

SECTIONS = ["#verdicts", "#lineage", "#scorecard", "#evaluator-1", "#models", "#provenance"]


def _sample(model: str, i: int, value: float, text: str) -> dict[str, Any]:
    return {
        "model": model,
        "evaluator": "refusal",
        "metric": "refusal_rate_unsafe",
        "slice": "unsafe",
        "item_id": f"u{i:03d}",
        "input": f"prompt {i}: {text}",
        "output": f"output {i}: {text}",
        "value": value,
        "judgment": "refusal" if value else "compliance",
    }


def _metric(model: str, value: float, n: int) -> dict[str, Any]:
    return {
        "model": model,
        "evaluator": "refusal",
        "metric": "refusal_rate_unsafe",
        "slice": "all",
        "value": value,
        "ci_low": value - 0.1,
        "ci_high": min(value + 0.1, 1.0),
        "n": n,
        "higher_is_better": True,
    }


def hostile_run(payloads: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A failing run whose model names, gate, error and outputs all carry the payloads."""
    evil = payloads[1]
    tuned = f"tuned{evil}"
    samples = [_sample("aligned", i, 1.0, p) for i, p in enumerate(payloads)]
    samples += [_sample(tuned, i, 0.0, p) for i, p in enumerate(payloads)]
    results = {
        "schema_version": 1,
        "verdict": "error",
        "suite": {"name": payloads[0], "title": payloads[3], "text": "\n".join(payloads)},
        "environment": {"seed": 0, "device": "cpu", "started_at": "2026-01-01T00:00:00+00:00"},
        "models": [
            {"name": "aligned", "parents": [], "status": "ok", "key": "a" * 40},
            {"name": tuned, "parents": ["aligned"], "status": "ok", "key": "b" * 40},
        ],
        "evaluators": [
            {
                "name": "refusal",
                "kind": "refusal",
                "metrics": [
                    {"name": "refusal_rate_unsafe", "kind": "rate", "higher_is_better": True}
                ],
            }
        ],
        "metrics": [_metric("aligned", 1.0, len(payloads)), _metric(tuned, 0.0, len(payloads))],
        "comparisons": [
            {
                "model": tuned,
                "baseline": "aligned",
                "relation": "parent",
                "evaluator": "refusal",
                "metric": "refusal_rate_unsafe",
                "slice": "all",
                "before": 1.0,
                "after": 0.0,
                "delta": -1.0,
                "ci_low": -1.0,
                "ci_high": -0.7,
                "n": len(payloads),
                "p_value": 0.004,
                "test": "mcnemar_exact",
                "higher_is_better": True,
            }
        ],
        "gates": [
            {
                "name": payloads[2],
                "rule": "max_drop 0.05",
                "model": tuned,
                "baseline": "aligned",
                "passed": False,
                "observed": 1.0,
                "threshold": 0.05,
                "detail": payloads[4],
            },
            {
                "name": "z passes",
                "rule": "min 0",
                "model": "aligned",
                "baseline": None,
                "passed": True,
                "observed": 1.0,
                "threshold": 0.0,
                "detail": "ok",
            },
        ],
        "failures": [{"step": "eval:x", "error": payloads[5], "traceback": payloads[6]}],
        "steps": [
            {
                "step": "model:aligned",
                "kind": "model",
                "key": "a" * 40,
                "status": "ok",
                "cached": True,
                "duration_s": 0.1,
            },
            {
                "step": payloads[7],
                "kind": "eval",
                "key": "c" * 40,
                "status": "failed",
                "cached": False,
                "duration_s": 2.0,
            },
        ],  # fmt: skip
    }
    return results, samples


@pytest.mark.parametrize("javascript", [True, False], ids=["js-on", "js-off"])
def test_hostile_report_is_inert_and_readable(
    tmp_path: Path,
    open_page: Callable[..., Any],
    payloads: list[str],
    assert_inert: Callable[[Any], None],
    javascript: bool,
) -> None:
    results, samples = hostile_run(payloads)
    path = render_report(results, samples, tmp_path / "index.html")
    opened = open_page(path, javascript=javascript)
    assert_inert(opened)
    page = opened.page
    for section in SECTIONS:
        assert page.locator(section).is_visible(), section
    assert page.locator(".verdict").inner_text() == "ERROR"
    # the payloads are on the page as text: the failed gate's card, the flipped outputs
    card = page.locator(".card").first
    assert payloads[2] in card.inner_text() and payloads[4] in card.inner_text()
    flips = page.locator("#evaluator-1 details.flips").first
    assert flips.is_visible() and flips.get_attribute("open") is not None
    text = flips.inner_text()
    for payload in payloads:
        assert f"output {payloads.index(payload)}: {payload}" in text


def test_click_to_sort_and_to_drill_down(
    tmp_path: Path, open_page: Callable[..., Any], payloads: list[str]
) -> None:
    results, samples = hostile_run(payloads)
    path = render_report(results, samples, tmp_path / "index.html")
    opened = open_page(path)
    page = opened.page
    gates = page.locator("table.gates")
    first_gate = "table.gates tbody tr:first-child td:nth-child(2)"
    assert page.locator(first_gate).inner_text() == payloads[2]  # failed gates first
    heading = gates.locator("thead th", has_text="gate")
    heading.click()
    assert heading.get_attribute("aria-sort") == "ascending"
    assert page.locator(first_gate).inner_text() == payloads[2]  # "<" sorts before "z"
    heading.click()
    assert heading.get_attribute("aria-sort") == "descending"
    assert page.locator(first_gate).inner_text() == "z passes"
    # the failures' traceback opens on a click
    summary = page.locator(".failure details summary")
    traceback = page.locator(".failure details pre")
    assert not traceback.is_visible()
    summary.click()
    assert traceback.is_visible() and traceback.inner_text() == payloads[6]
    assert opened.console_errors == [] and opened.errors == []


def test_comparison_page_and_gallery_are_inert(
    tmp_path: Path,
    open_page: Callable[..., Any],
    payloads: list[str],
    assert_inert: Callable[..., None],
) -> None:
    """The other pages users share: the release comparison and the gallery of runs."""
    old, old_samples = hostile_run(payloads)
    new, new_samples = hostile_run(payloads)
    for sample in new_samples[: len(payloads) // 2]:
        sample["value"] = 0.0  # the new release refuses less: a paired worsening
    comparison = compare_runs(old, old_samples, new, new_samples)
    page = render_comparison(comparison, tmp_path / "compare" / "index.html")
    opened = open_page(page)
    assert_inert(opened, scripts=0)
    for section in ("#verdict", "#regressions", "#coverage", "#provenance"):
        assert opened.page.locator(section).is_visible(), section

    run_dir = tmp_path / "run"
    render_report(old, old_samples, run_dir / "index.html")
    (run_dir / "results.json").write_text(json.dumps(old))
    (tmp_path / "compare" / "comparison.json").write_text(json.dumps(comparison))
    gallery = open_page(write_gallery(tmp_path))
    assert_inert(gallery, scripts=0)
    links = gallery.page.locator("a[href$='index.html']")
    assert sorted(link.get_attribute("href") for link in links.all()) == [
        "compare/index.html",
        "run/index.html",
    ]
    assert payloads[3] in gallery.page.inner_text("body")  # the hostile title, as text
