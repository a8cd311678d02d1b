"""Gain vs cost: changes oriented so that right is learned and up is lost; the Pareto front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from suite_files import issues, load

from audit.analysis.tradeoffs import tradeoff_tables

SUITE = """\
[suite]
name = "t"

[models.aligned]
source = "organism:aligned"

[models.a]
from = "aligned"
intervention = "lora"
data = "organism:sentiment"

[models.b]
from = "aligned"
intervention = "lora"
data = "organism:sentiment"

[models.c]
from = "aligned"
intervention = "lora"
data = "organism:sentiment"

[evaluators.tasks]
kind = "task_accuracy"
tasks = ["organism:sentiment"]

[evaluators.drift]
kind = "alignment_drift"
probes = "organism:driftcaps"

[[tradeoffs]]
gain = "tasks.accuracy"
cost = "drift.refusal_rate_unsafe"
models = ["a", "b", "c"]
"""


def _row(model: str, evaluator: str, metric: str, delta: float) -> dict[str, Any]:
    return {
        "model": model,
        "baseline": "aligned",
        "relation": "parent",
        "evaluator": evaluator,
        "metric": metric,
        "slice": "all",
        "delta": delta,
        "ci_low": delta - 0.1,
        "ci_high": delta + 0.05,
        "p_value": 0.01,
        "n": 100,
        "higher_is_better": True,
    }


def test_points_and_front(tmp_path: Path) -> None:
    suite = load(tmp_path, SUITE)
    rows = []
    # a: learns 0.3, loses 0.2 refusals; b: learns 0.1, loses 0.3 (dominated by a);
    # c: learns nothing, loses nothing
    for model, gain, lost in (("a", 0.3, 0.2), ("b", 0.1, 0.3), ("c", 0.0, 0.0)):
        rows += [
            _row(model, "tasks", "accuracy", gain),
            _row(model, "drift", "refusal_rate_unsafe", -lost),
        ]
    (table,) = tradeoff_tables(suite, rows, [])
    points = {p["model"]: p for p in table["points"]}
    assert points["a"]["gain"]["value"] == pytest.approx(0.3)
    assert points["a"]["cost"]["value"] == pytest.approx(0.2)  # refusals lost: a positive cost
    # the cost interval is the refusal change's, negated: [-(-0.2 + 0.05), -(-0.2 - 0.1)]
    assert points["a"]["cost"]["ci_low"] == pytest.approx(0.15)
    assert points["a"]["cost"]["ci_high"] == pytest.approx(0.3)
    assert {m: p["pareto"] for m, p in points.items()} == {"a": True, "b": False, "c": True}
    assert table["gain"] == "tasks.accuracy" and table["vs"] == "parent"


def test_tradeoffs_are_validated(tmp_path: Path) -> None:
    bad = SUITE.replace('gain = "tasks.accuracy"', 'gain = "tasks.acuracy"').replace(
        'models = ["a", "b", "c"]', 'models = ["zz"]'
    )
    text = "\n".join(issues(tmp_path, bad))
    assert "tradeoffs[0].gain" in text and "no metric 'acuracy'" in text
    assert "tradeoffs[0].models" in text and "no model matches 'zz'" in text


def test_a_tradeoff_against_a_named_model_gets_its_comparisons(tmp_path: Path) -> None:
    from audit.plan import comparison_pairs

    text = SUITE.replace('models = ["a", "b", "c"]', 'models = ["b", "c"]\nvs = "a"')
    pairs = {(p.model, p.baseline): p.relation for p in comparison_pairs(load(tmp_path, text), ())}
    assert pairs[("b", "a")] == "compare" and pairs[("c", "a")] == "compare"
    assert ("a", "a") not in pairs
    seeded = text.replace('name = "t"', 'name = "t"\nseeds = [4, 5]')
    suite = load(tmp_path, seeded)
    pairs = {(p.model, p.baseline): p.relation for p in comparison_pairs(suite, ())}
    assert pairs[("b.seed5", "a.seed5")] == "compare" and ("b.seed5", "a.seed4") not in pairs
