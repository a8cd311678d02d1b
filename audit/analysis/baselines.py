"""Before/after comparisons of every (model, baseline) pair the plan lists
(:attr:`audit.plan.Plan.pairs`: parents, ``compare``, the reference, the baselines gates name in
``vs``), paired on items where both sides have samples."""

from __future__ import annotations

from audit.plan import Plan
from audit.plugins import EvalResult, MetricSpec
from audit.results import ComparisonRowT
from audit.stats import ComparisonStats, compare_rows, compare_samples


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
    for pair in plan.pairs:
        for ename, espec in plan.suite.file.evaluators.items():
            after = results.get((pair.model, ename))
            before = results.get((pair.baseline, ename))
            if after is None or before is None:
                continue
            for spec in plan.evaluator_classes[espec.kind].metrics:
                for stats in compare_results(before, after, spec):
                    rows.append(
                        ComparisonRowT(
                            model=pair.model,
                            baseline=pair.baseline,
                            relation=pair.relation,
                            evaluator=ename,
                            metric=spec.name,
                            higher_is_better=spec.higher_is_better,
                            **stats,
                        )
                    )
    return rows
