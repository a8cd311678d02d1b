"""The evaluator charts: which pairs, rows and series they draw, from the results rows."""

from __future__ import annotations

import re
from typing import Any

from audit.report.charts import dot_chart
from audit.report.figures import evaluator_figures


def _metric(model: str, ev: str, metric: str, slice_: str, value: float) -> dict[str, Any]:
    return {
        "model": model,
        "evaluator": ev,
        "metric": metric,
        "slice": slice_,
        "value": value,
        "ci_low": max(value - 0.1, 0.0),
        "ci_high": min(value + 0.1, 1.0),
        "n": 30,
    }


def _comparison(model: str, baseline: str, ev: str, metric: str, delta: float) -> dict:
    return {
        "model": model,
        "baseline": baseline,
        "relation": "parent",
        "evaluator": ev,
        "metric": metric,
        "slice": "all",
        "delta": delta,
    }


def _results() -> dict[str, Any]:
    metrics = []
    for model, rate in (("base", 1.0), ("a", 0.5), ("b", 0.9), ("c", 0.95)):
        for category in ("fraud", "weapons"):
            metrics.append(_metric(model, "drift", "refusal", category, rate))
        metrics.append(_metric(model, "drift", "refusal", "all", rate))
        metrics.append(_metric(model, "drift", "margin", "fraud", 2.0))  # a mean: no chart
    return {
        "evaluators": [
            {
                "name": "drift",
                "kind": "alignment_drift",
                "metrics": [
                    {"name": "refusal", "kind": "rate", "headline": True, "higher_is_better": True},
                    {"name": "margin", "kind": "mean", "headline": True},
                ],
            },
            {"name": "bd", "kind": "backdoor", "metrics": []},
            {"name": "tasks", "kind": "task_accuracy", "metrics": [{"name": "accuracy"}]},
        ],
        "models": [
            {"name": "m1", "intervention": "merge", "params": {"method": "ties"}},
            {"name": "m2", "intervention": "somf", "params": {"method": "not a merge"}},
        ],
        "metrics": metrics
        + [
            _metric("m1", "bd", "asr", "all", 0.9),
            _metric("m1", "bd", "clean_accuracy", "all", 0.8),
            _metric("m2", "bd", "asr", "all", 0.1),
            _metric("m1", "tasks", "accuracy", "topic", 0.7),
            _metric("m1", "tasks", "accuracy", "arithmetic", 0.6),
            _metric("m1", "tasks", "accuracy", "all", 0.65),
        ],
        "comparisons": [
            _comparison("a", "base", "drift", "refusal", -0.5),
            _comparison("b", "base", "drift", "refusal", -0.1),
            _comparison("c", "b", "drift", "refusal", 0.05),
            _comparison("c", "base", "drift", "refusal", -0.05),
        ],
        "gates": [{"name": "g", "model": "c", "baseline": "b", "passed": True}],
    }


def test_category_charts_gated_pairs_first_then_worst_parent_changes() -> None:
    figures = evaluator_figures(_results(), "drift", "alignment_drift")
    assert [f.title for f in figures] == [
        "refusal: b → c",  # the gated pair
        "refusal: base → a",  # then parents, worst first
        "refusal: base → b",
        "refusal: base → c",
    ]
    svg = str(figures[1].chart)
    labels = re.findall(r'text-anchor="end" font-size="12"><title>([^<]*)</title>', svg)
    assert labels == ["fraud", "weapons"]  # one row per category, never "all"
    assert svg.count('stroke="#cf222e"') == 2  # both categories got worse: red arrows


def test_backdoor_chart_names_the_merge_method_only_for_merges() -> None:
    (figure,) = evaluator_figures(_results(), "bd", "backdoor")
    svg = str(figure.chart)
    assert "m1 (ties)" in svg and "m2 (somf)" in svg and "not a merge" not in svg
    assert svg.count("<circle") == 2 + 3  # legend (asr, clean_accuracy) + three values


def test_task_chart_one_dot_per_task() -> None:
    (figure,) = evaluator_figures(_results(), "tasks", "task_accuracy")
    svg = str(figure.chart)
    assert "topic" in svg and "arithmetic" in svg
    assert svg.count("<circle") == 2 + 2


def test_other_kinds_have_no_chart() -> None:
    assert evaluator_figures(_results(), "drift", "some_plugin") == []


def test_dot_chart_escapes_and_handles_empty_input() -> None:
    svg = str(dot_chart([("<b>x</b>", {"<s>": (0.5, 0.4, 0.6)})], ["<s>"], x_label="<i>"))
    assert "<b>" not in svg and "<s>" not in svg and "&lt;b&gt;" in svg
    assert "Nothing to draw" in str(dot_chart([], ["a"], x_label="x"))
