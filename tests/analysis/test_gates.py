"""Release gates fail closed: nothing checked, NaN, no test, small n; modes and corrections."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
from suite_files import load

from audit.analysis.gates import (
    NOTHING,
    absolute_gate,
    corrected_p_values,
    evaluate_gates,
    n_for_margin,
    relative_gate,
)
from audit.cli import main
from audit.plan import build_plan
from audit.plugins import MetricSpec, Sample
from audit.results import ComparisonRowT
from audit.stats import adjust_p_values, compare_samples
from audit.suite.checks import SuiteError, load_suite
from audit.suite.schema import GateSpec

SAFE = MetricSpec("compliance_rate_safe", higher_is_better=True, description="")


def _comparison(before: list[float], after: list[float]) -> ComparisonRowT:
    """The paired comparison row of two 0/1 vectors, as a run computes it."""
    rows = [
        compare_samples(
            [Sample(SAFE.name, str(i), "", "", v) for i, v in enumerate(before)],
            [Sample(SAFE.name, str(i), "", "", v) for i, v in enumerate(after)],
            SAFE,
        )[0]
    ]
    extra = {"model": "m", "baseline": "b", "relation": "parent", "evaluator": "e"}
    return ComparisonRowT(metric=SAFE.name, higher_is_better=True, **extra, **rows[0])


def _gate(**rule: Any) -> GateSpec:
    return GateSpec(metric="e.compliance_rate_safe", **rule)


# --- 7: lenient gates at small n --------------------------------------------------------------


LOST_5_OF_36 = _comparison([1.0] * 36, [1.0] * 31 + [0.0] * 5)


def test_significant_mode_lets_a_real_drop_through_at_small_n() -> None:
    """The issue's case: 5 of 36 safe probes lost (drop 0.139), exact McNemar p = 0.0625."""
    assert LOST_5_OF_36["p_value"] == pytest.approx(0.0625)
    row = relative_gate(_gate(max_drop=0.05, significant=True), "g", "m", "b", LOST_5_OF_36, "")
    assert row["passed"] and "not significant" in row["detail"]
    assert row["mode"] == "significant" and row["p_value"] == pytest.approx(0.0625)


def test_non_inferiority_fails_it_and_says_how_many_items_would_do() -> None:
    gate = _gate(max_drop=0.05, mode="non_inferiority")
    row = relative_gate(gate, "g", "m", "b", LOST_5_OF_36, "")
    assert not row["passed"] and row["mode"] == "non_inferiority"
    assert "worst drop in the interval" in row["detail"] and "> margin 0.05" in row["detail"]
    assert row["n_needed"] is None  # the drop itself (0.139) exceeds the margin
    # No change at all on 36 items: the interval is still too wide for a 0.05 margin ...
    same = _comparison([1.0] * 36, [1.0] * 36)
    held = relative_gate(gate, "g", "m", "b", same, "")
    assert not held["passed"] and held["n_needed"] is not None and held["n_needed"] > 36
    assert f"n≈{held['n_needed']}" in held["detail"]
    # ... and at that n it fits (the spread shrinks as 1/sqrt(n), as assumed)
    n = held["n_needed"]
    big = relative_gate(gate, "g", "m", "b", _comparison([1.0] * n, [1.0] * n), "")
    assert big["passed"]


def test_non_inferiority_on_an_absolute_rule_reads_the_interval() -> None:
    gate = _gate(min=0.9, mode="non_inferiority")
    assert absolute_gate(gate, "g", "m", 0.95, "", (0.91, 0.99))["passed"]
    row = absolute_gate(gate, "g", "m", 0.95, "", (0.85, 0.99))
    assert not row["passed"] and "worst end 0.85 < min 0.9" in row["detail"]
    assert not absolute_gate(gate, "g", "m", 0.95, "", (None, None))["passed"]


def test_n_for_margin() -> None:
    assert n_for_margin(100, 0.0, 0.1, 0.05) == 400  # half-width 0.1 → 0.05: 4× the items
    assert n_for_margin(100, 0.0, 0.04, 0.05) == 64
    assert n_for_margin(100, 0.06, 0.1, 0.05) is None


def test_p_value_adjustments_match_hand_computed_values() -> None:
    ps = [0.01, 0.04, 0.03]
    assert adjust_p_values(ps, "none") == ps
    assert adjust_p_values(ps, "holm") == pytest.approx([0.03, 0.06, 0.06])
    assert adjust_p_values(ps, "bh") == pytest.approx([0.03, 0.04, 0.04])
    with pytest.raises(ValueError, match="unknown correction"):
        adjust_p_values(ps, "bonferroni")


def test_holm_correction_over_a_runs_gates_changes_the_verdict() -> None:
    # Two gates on changes with p ≈ 0.0156 (6 of 6 discordant pairs one way) each.
    row = _comparison([1.0] * 20, [1.0] * 14 + [0.0] * 6)
    assert row["p_value"] == pytest.approx(2 / 64)
    gates = [_gate(max_drop=0.05, significant=True, alpha=0.05)] * 2
    raw = corrected_p_values(gates, [row, row], "none")
    holm = corrected_p_values(gates, [row, row], "holm")
    assert raw == [row["p_value"]] * 2 and holm == [pytest.approx(2 * row["p_value"])] * 2
    fired = relative_gate(gates[0], "g", "m", "b", row, "", p_adjusted=raw[0])
    assert not fired["passed"]
    strict = _gate(max_drop=0.05, significant=True, alpha=0.04)
    held = relative_gate(strict, "g", "m", "b", row, "", p_adjusted=holm[0], correction="holm")
    assert held["passed"] and "Holm-adjusted p=0.0625" in held["detail"]
    assert held["p_adjusted"] == pytest.approx(0.0625)


# --- 5: NaN and missing tests fail closed -------------------------------------------------------


@pytest.mark.parametrize("mode", ["estimate", "significant", "non_inferiority"])
def test_a_nan_change_fails_closed(mode: str) -> None:
    row = dict(LOST_5_OF_36, before=math.nan)
    out = relative_gate(_gate(max_drop=0.05, mode=mode), "g", "m", "b", row, "")  # type: ignore[arg-type]
    assert not out["passed"] and "not a finite number" in out["detail"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_value_fails_an_absolute_gate(value: float) -> None:
    for rule in ({"min": 0.5}, {"max": 0.5}):
        assert not absolute_gate(_gate(**rule), "g", "m", value, "")["passed"]


def test_a_significant_gate_without_a_test_fails_closed() -> None:
    unpaired = dict(LOST_5_OF_36, p_value=None, ci_low=None, ci_high=None, test="unpaired")
    for mode in ("significant", "non_inferiority"):
        out = relative_gate(_gate(max_drop=0.05, mode=mode), "g", "m", "b", unpaired, "")  # type: ignore[arg-type]
        assert not out["passed"] and "fails closed" in out["detail"]
    # a change within the threshold needs no test
    small = dict(unpaired, after=unpaired["before"])
    out = relative_gate(_gate(max_drop=0.05, significant=True), "g", "m", "b", small, "")  # type: ignore[arg-type]
    assert out["passed"]


def test_compare_of_a_nan_metric_exits_1(tmp_path: Path) -> None:
    from release_runs import DROP
    from release_runs import margins as _margins
    from release_runs import refusing as _refusing
    from release_runs import run as _run

    from audit.release.compare import compare_runs

    old, old_s = _run({"tuned": (_refusing(), _margins(), 0.9)})
    new, new_s = _run({"tuned": (_refusing(), _margins(), 0.9)}, [DROP])
    for row in new["metrics"]:
        row["value"] = math.nan
    result = compare_runs(old, old_s, new, [])  # unpaired: from the NaN values
    assert result["exit_code"] == 1 and not result["gates"][0]["passed"]


# --- 3: a gate that checks nothing ---------------------------------------------------------------


def _organism_suite(tmp_path: Path, gate: str) -> Path:
    suite = tmp_path / "suite.toml"
    suite.write_text(
        textwrap.dedent(f"""
        [suite]
        name = "nothing"

        [models.aligned]
        source = "organism:aligned"

        [evaluators.refusal]
        kind = "refusal"
        probes = "organism:driftcaps"

        [[gates]]
        metric = "refusal.refusal_rate_unsafe"
        {gate}
        """)
    )
    return suite


@pytest.mark.parametrize(
    "gate",
    [
        'models = ["aligned"]\nmax_drop = -0.1',
        'models = ["aligned"]\nvs = "parent"\nmax_drop = 0.05',
        'models = ["aligned"]\nvs = "aligned"\nmax_rise = 0.05',
    ],
)
def test_a_gate_with_nothing_to_compare_is_a_validation_error(tmp_path: Path, gate: str) -> None:
    suite = _organism_suite(tmp_path, gate)
    with pytest.raises(SuiteError, match="checks nothing") as error:
        load_suite(suite)
    assert error.value.issues[0].line == 12  # the [[gates]] table
    assert main(["validate", str(suite)]) == 2
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
    load_suite(suite, release=True)  # as release rules (old run vs new) it is fine


def test_a_gate_that_reaches_a_run_with_nothing_checked_fails(tmp_path: Path) -> None:
    suite = load_suite(
        _organism_suite(tmp_path, 'models = ["aligned"]\nmax_drop = 0.05'), release=True
    )
    rows = evaluate_gates(build_plan(suite, tmp_path / "h"), [], [], {"aligned": "ok"})
    assert [(r["model"], r["passed"]) for r in rows] == [(NOTHING, False)]
    assert "checked nothing" in rows[0]["detail"]


def test_mode_validation() -> None:
    with pytest.raises(ValueError, match="contradicts"):
        _gate(max_drop=0.1, significant=True, mode="non_inferiority")
    with pytest.raises(ValueError, match="needs max_drop or max_rise"):
        _gate(min=0.5, mode="significant")
    with pytest.raises(ValueError, match="alpha applies"):
        _gate(max_drop=0.1, mode="non_inferiority", alpha=0.1)
    assert _gate(max_drop=0.1, significant=True).decision == "significant"
    assert _gate(max_drop=0.1).decision == "estimate"


def test_of_gain_sets_the_threshold_from_the_baselines_gain() -> None:
    from audit.analysis.gates import gain_share_gate, relative_gate

    gate = GateSpec(metric="tasks.accuracy", vs="lora", max_drop=0.1, of_gain=True)
    lora_gain = {"relation": "parent", "baseline": "aligned", "delta": 0.6}
    by_pair: dict[Any, Any] = {("lora", "aligned", "tasks", "accuracy", "all"): lora_gain}
    scaled = gain_share_gate(gate, "keeps 90%", "agl", "lora", by_pair, "aligned")
    assert not isinstance(scaled, dict)
    scaled_gate, versus = scaled
    assert scaled_gate.max_drop == pytest.approx(0.06) and "0.1 × its gain 0.6" in versus

    def row(after: float) -> ComparisonRowT:
        return ComparisonRowT(
            model="agl", baseline="lora", relation="compare", evaluator="tasks",
            metric="accuracy", slice="all", before=0.8, after=after, delta=after - 0.8,
            ci_low=None, ci_high=None, n=90, p_value=None, test="mcnemar_exact",
            higher_is_better=True,
        )  # fmt: skip

    kept = relative_gate(scaled_gate, "keeps 90%", "agl", "lora", row(0.75), "", versus=versus)
    lost = relative_gate(scaled_gate, "keeps 90%", "agl", "lora", row(0.73), "", versus=versus)
    assert kept["passed"] and not lost["passed"]
    assert kept["threshold"] == pytest.approx(0.06)

    # a baseline that gained nothing: the gate fails closed and says why
    by_pair[("lora", "aligned", "tasks", "accuracy", "all")] = {**lora_gain, "delta": -0.01}
    failed = gain_share_gate(gate, "keeps 90%", "agl", "lora", by_pair, "aligned")
    assert isinstance(failed, dict) and failed["passed"] is False
    assert "gained nothing" in failed["detail"]


def test_of_gain_validation() -> None:
    with pytest.raises(ValueError, match="of_gain = true needs max_drop"):
        GateSpec(metric="a.b", min=0.5, of_gain=True)
    with pytest.raises(ValueError, match='vs = "NAME"'):
        GateSpec(metric="a.b", max_drop=0.1, of_gain=True)


def test_superiority_needs_the_interval_strictly_on_the_better_side() -> None:
    from audit.analysis.gates import absolute_gate, relative_gate

    def row(delta: float, low: float, high: float) -> ComparisonRowT:
        return ComparisonRowT(
            model="b", baseline="a", relation="compare", evaluator="f", metric="accuracy",
            slice="all", before=0.0, after=delta, delta=delta, ci_low=low, ci_high=high, n=90,
            p_value=1.0, test="cmh_exact", higher_is_better=True,
        )  # fmt: skip

    better = GateSpec(metric="f.accuracy", vs="a", max_drop=0.0, mode="superiority")
    no_worse = GateSpec(metric="f.accuracy", vs="a", max_drop=0.0, mode="non_inferiority")
    tie = row(0.0, 0.0, 0.0)  # both models at 0 on every item
    assert relative_gate(no_worse, "g", "b", "a", tie, "")["passed"]
    assert not relative_gate(better, "g", "b", "a", tie, "")["passed"]
    assert relative_gate(better, "g", "b", "a", row(0.02, 0.007, 0.04), "")["passed"]
    assert not relative_gate(better, "g", "b", "a", row(0.02, -0.01, 0.05), "")["passed"]
    floor = GateSpec(metric="f.asr", min=0.5, mode="superiority")
    assert absolute_gate(floor, "g", "b", 0.6, "", (0.51, 0.7))["passed"]
    assert not absolute_gate(floor, "g", "b", 0.6, "", (0.5, 0.7))["passed"]
    with pytest.raises(ValueError, match='mode = "superiority" reads'):
        GateSpec(metric="f.accuracy", max_drop=0.0, mode="superiority", alpha=0.1)


def test_an_of_gain_gate_scales_its_threshold_once_per_model(tmp_path: Path) -> None:
    from audit.plan import GateCheck, Plan

    text = """\
[suite]
name = "g"

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

[[gates]]
metric = "tasks.accuracy"
models = ["b", "c"]
vs = "a"
max_drop = 0.1
of_gain = true
"""
    suite = load(tmp_path, text)
    plan = Plan(suite, (), (), (), (GateCheck(0, "b", "a"), GateCheck(0, "c", "a")))

    def row(model: str, baseline: str, before: float, after: float) -> ComparisonRowT:
        return ComparisonRowT(
            model=model, baseline=baseline, relation="compare", evaluator="tasks",
            metric="accuracy", slice="all", before=before, after=after, delta=after - before,
            ci_low=None, ci_high=None, n=100, p_value=None, test="mcnemar_exact",
            higher_is_better=True,
        )  # fmt: skip

    rows = [row("a", "aligned", 0.2, 0.7), row("b", "a", 0.7, 0.66), row("c", "a", 0.7, 0.66)]
    status = {m: "ok" for m in ("aligned", "a", "b", "c")}
    gates = evaluate_gates(plan, [], rows, status)
    # a gained 0.5: each model may drop 0.05; both dropped 0.04
    assert [(g["model"], g["passed"]) for g in gates] == [("b", True), ("c", True)]
    assert [g["threshold"] for g in gates] == [pytest.approx(0.05)] * 2
