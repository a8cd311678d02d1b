"""Before/after comparisons of every model with its parents, the models its ``compare`` key
names, the reference model, and the baselines gates name in ``vs``."""

from __future__ import annotations

from audit import registry
from audit.analysis.gates import gate_baselines
from audit.plan import Plan
from audit.plugins import EvalResult, MetricSpec
from audit.results import ComparisonRowT
from audit.stats import ComparisonStats, compare_rows, compare_samples


def baselines(plan: Plan, model: str) -> list[tuple[str, str]]:
    """(baseline, relation) pairs a model is compared with, each baseline once: its parents
    ("parent"), the models of its ``compare`` key ("compare"), the reference ("reference"),
    then the models that gates compare it with (``vs = NAME``, "gate")."""
    step = plan.model(model)
    out: dict[str, str] = {p: "parent" for p in step.inputs}
    for name in plan.suite.compare_with(model):
        out.setdefault(name, "compare")
    if plan.suite.reference != model:
        out.setdefault(plan.suite.reference, "reference")
    for name in gate_baselines(plan, model):
        out.setdefault(name, "gate")
    out.pop(model, None)
    return list(out.items())


def compare_results(
    before: EvalResult, after: EvalResult, spec: MetricSpec
) -> list[ComparisonStats]:
    """Paired statistics where both sides have samples of the metric, else unpaired deltas."""
    has_samples = any(s.metric == spec.name for s in before.samples) and any(
        s.metric == spec.name for s in after.samples
    )
    if has_samples:
        return compare_samples(before.samples, after.samples, spec)
    rows_before = {r.slice: r for r in before.metrics if r.metric == spec.name}
    return [
        compare_rows(rows_before[r.slice], r)
        for r in after.metrics
        if r.metric == spec.name and r.slice in rows_before
    ]


def all_comparisons(plan: Plan, results: dict[tuple[str, str], EvalResult]) -> list[ComparisonRowT]:
    """Comparison rows for every (model, baseline, evaluator, metric, slice) with data on both."""
    rows: list[ComparisonRowT] = []
    for step in plan.models:
        for baseline, relation in baselines(plan, step.name):
            for ename, espec in plan.suite.file.evaluators.items():
                after = results.get((step.name, ename))
                before = results.get((baseline, ename))
                if after is None or before is None:
                    continue
                for spec in registry.evaluators.get(espec.kind).metrics:
                    for stats in compare_results(before, after, spec):
                        rows.append(
                            ComparisonRowT(
                                model=step.name,
                                baseline=baseline,
                                relation=relation,
                                evaluator=ename,
                                metric=spec.name,
                                higher_is_better=spec.higher_is_better,
                                **stats,
                            )
                        )
    return rows
