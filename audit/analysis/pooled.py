"""Pooled over seeds: every metric and comparison of replicated models, pooled across the
replicas of ``[suite] seeds`` (:mod:`audit.suite.seeds`).

A pooled row names the models as written (``helpful_lora``, not ``helpful_lora.seed1``) and
carries each seed's own row in ``per_seed``. Metrics pool every item of every seed
(:func:`audit.stats.pooled_value`); comparisons pool the paired items of each seed's
comparison, seed by seed as strata (:func:`audit.stats.pooled_paired_difference`: exact
Mantel-Haenszel test for matched pairs for rates, sign-flip permutation for means, stratified
bootstrap intervals). Where an evaluator recorded no per-item samples the pooled value is the
item-weighted mean of the seeds' values, without an interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from audit.plan import Plan
from audit.plugins import EvalResult, MetricSpec
from audit.results import ComparisonRowT, MetricRowT
from audit.stats import paired_values, pooled_paired_difference, pooled_value

POOLED_TESTS = {"rate": "cmh_exact", "mean": "stratified_sign_flip"}
"""The test behind a pooled comparison's p-value, by metric kind."""


def _specs(plan: Plan, evaluator: str) -> dict[str, MetricSpec]:
    kind = plan.suite.file.evaluators[evaluator].kind
    return {m.name: m for m in plan.evaluator_classes[kind].metrics}


def pooled_metrics(
    plan: Plan, results: Mapping[tuple[str, str], EvalResult], metrics: Sequence[MetricRowT]
) -> list[dict[str, Any]]:
    """One row per replicated model × evaluator × metric × slice, pooled over its seeds."""
    suite = plan.suite
    groups: dict[tuple[str, str, str, str], list[MetricRowT]] = {}
    for row in metrics:
        base = suite.base_of(row["model"])
        if base in suite.replicas:
            groups.setdefault((base, row["evaluator"], row["metric"], row["slice"]), []).append(row)
    out: list[dict[str, Any]] = []
    for (base, evaluator, metric, slice_), rows in groups.items():
        spec = _specs(plan, evaluator).get(metric)
        strata = []
        for row in rows:
            result = results.get((row["model"], evaluator))
            values = [
                s.value
                for s in (result.samples if result is not None else [])
                if s.metric == metric and (slice_ == "all" or s.slice == slice_)
            ]
            strata.append(values)
        ci_low: float | None
        ci_high: float | None
        if spec is not None and all(strata):
            value, ci_low, ci_high, n = pooled_value(strata, spec.kind, seed=suite.seed)
        else:
            n = sum(r["n"] for r in rows)
            value = sum(r["value"] * r["n"] for r in rows) / n if n else rows[0]["value"]
            ci_low = ci_high = None
        out.append(
            {
                "model": base,
                "evaluator": evaluator,
                "metric": metric,
                "slice": slice_,
                "value": value,
                "ci_low": ci_low,
                "ci_high": ci_high,
                "n": n,
                "higher_is_better": rows[0]["higher_is_better"],
                "seeds": [suite.seed_of[r["model"]] for r in rows],
                "per_seed": [
                    {"seed": suite.seed_of[r["model"]], **{k: dict(r)[k] for k in _METRIC_KEYS}}
                    for r in rows
                ],
            }
        )
    return out


_METRIC_KEYS = ("value", "ci_low", "ci_high", "n")
_COMPARISON_KEYS = ("before", "after", "delta", "ci_low", "ci_high", "n", "p_value", "test")


def pooled_comparisons(
    plan: Plan,
    results: Mapping[tuple[str, str], EvalResult],
    comparisons: Sequence[ComparisonRowT],
) -> list[dict[str, Any]]:
    """One row per replicated model × baseline × evaluator × metric × slice, pooled over the
    seeds (the baseline is the same seed's replica, or a shared loaded model)."""
    suite = plan.suite
    groups: dict[tuple[str, str, str, str, str, str], list[ComparisonRowT]] = {}
    for row in comparisons:
        if row["model"] not in suite.seed_of:
            continue
        key = (
            suite.base_of(row["model"]),
            suite.base_of(row["baseline"]),
            row["relation"],
            row["evaluator"],
            row["metric"],
            row["slice"],
        )
        groups.setdefault(key, []).append(row)
    out: list[dict[str, Any]] = []
    for (model, baseline, relation, evaluator, metric, slice_), rows in groups.items():
        spec = _specs(plan, evaluator).get(metric)
        strata = []
        for row in rows:
            before = results.get((row["baseline"], evaluator))
            after = results.get((row["model"], evaluator))
            pairs = (
                paired_values(before.samples, after.samples, metric)
                if before is not None and after is not None
                else {}
            )
            strata.append(pairs.get(slice_))
        n = sum(r["n"] for r in rows)
        if spec is not None and all(s is not None for s in strata):
            paired = [s for s in strata if s is not None]
            delta, low, high, p = pooled_paired_difference(paired, spec.kind, seed=suite.seed)
            before_v = sum(sum(b) for b, _ in paired) / n
            after_v = sum(sum(a) for _, a in paired) / n
            test = POOLED_TESTS[spec.kind]
            ci_low, ci_high, p_value = low, high, p
        else:
            before_v = sum(r["before"] * r["n"] for r in rows) / n if n else rows[0]["before"]
            after_v = sum(r["after"] * r["n"] for r in rows) / n if n else rows[0]["after"]
            delta, ci_low, ci_high, p_value, test = after_v - before_v, None, None, None, "unpaired"
        out.append(
            {
                "model": model,
                "baseline": baseline,
                "relation": relation,
                "evaluator": evaluator,
                "metric": metric,
                "slice": slice_,
                "before": before_v,
                "after": after_v,
                "delta": delta,
                "ci_low": ci_low,
                "ci_high": ci_high,
                "n": n,
                "p_value": p_value,
                "test": test,
                "higher_is_better": rows[0]["higher_is_better"],
                "seeds": [suite.seed_of[r["model"]] for r in rows],
                "per_seed": [
                    {"seed": suite.seed_of[r["model"]], **{k: dict(r)[k] for k in _COMPARISON_KEYS}}
                    for r in rows
                ],
            }
        )
    return out
