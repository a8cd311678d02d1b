"""Charts of an evaluator's results, each point with its 95% interval: the builders evaluators
choose from in their ``figures`` hook (:class:`audit.plugins.EvaluatorHooks`): a metric per
category before → after (:func:`category_figures`), a metric per task (:func:`task_figures`);
and :func:`metric_values` to build others."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from audit.report.charts import Estimate, dot_chart
from audit.report.format import as_float, cell_text
from audit.report.read import MetricInfo, evaluator_infos
from audit.results import Results, parse_results

MAX_PAIRS = 4
"""Before → after charts per metric: the gated pairs first, then the worst parent changes."""


@dataclass(frozen=True)
class Figure:
    title: str
    note: str
    chart: Markup


Values = dict[tuple[str, str, str], Estimate]
"""(model, metric, slice) -> estimate, for one evaluator."""


def metric_values(results: Results, evaluator: str) -> Values:
    """(model, metric, slice) -> (value, ci_low, ci_high) of one evaluator's metric rows."""
    out: Values = {}
    for r in results.rows("metrics"):
        value = as_float(r.get("value"))
        if cell_text(r.get("evaluator")) != evaluator or value is None:
            continue
        key = (
            cell_text(r.get("model")),
            cell_text(r.get("metric")),
            cell_text(r.get("slice", "all")),
        )
        out[key] = (value, as_float(r.get("ci_low")), as_float(r.get("ci_high")))
    return out


def _slices(values: Values, metric: str) -> list[str]:
    seen: list[str] = []
    for _, m, s in values:
        if m == metric and s != "all" and s not in seen:
            seen.append(s)
    return seen


def _pairs(results: Results, evaluator: str, metric: str) -> list[tuple[str, str]]:
    """(model, baseline) pairs worth a before → after chart."""
    compared = {
        (cell_text(c.get("model")), cell_text(c.get("baseline"))): as_float(c.get("delta")) or 0.0
        for c in results.rows("comparisons")
        if cell_text(c.get("evaluator")) == evaluator
        and cell_text(c.get("metric")) == metric
        and c.get("slice", "all") == "all"
    }
    pairs: list[tuple[str, str]] = []
    for g in results.rows("gates"):
        pair = (cell_text(g.get("model")), cell_text(g.get("baseline")))
        if g.get("baseline") and pair in compared and pair not in pairs:
            pairs.append(pair)
    parents = sorted(
        (
            (delta, (cell_text(c.get("model")), cell_text(c.get("baseline"))))
            for c in results.rows("comparisons")
            if c.get("relation") == "parent"
            and cell_text(c.get("evaluator")) == evaluator
            and cell_text(c.get("metric")) == metric
            and c.get("slice", "all") == "all"
            and (delta := as_float(c.get("delta"))) is not None
        ),
        key=lambda item: item[0] if item[0] is not None else 0.0,
    )
    for _, pair in parents:
        if pair not in pairs:
            pairs.append(pair)
    return pairs[:MAX_PAIRS]


def _metric_info(results: Results, evaluator: str) -> list[MetricInfo]:
    return next((metrics for name, _, metrics in evaluator_infos(results) if name == evaluator), [])


def category_figures(results: Results, evaluator: str) -> list[Figure]:
    """Each headline rate per category (slice), a model against its baseline."""
    values = metric_values(results, evaluator)
    figures = []
    for info in _metric_info(results, evaluator):
        metric = info.name
        slices = _slices(values, metric)
        if info.kind != "rate" or not info.headline or not slices:
            continue
        for model, baseline in _pairs(results, evaluator, metric):
            rows = [
                (
                    s,
                    {
                        name: values[(name, metric, s)]
                        for name in (baseline, model)
                        if (name, metric, s) in values
                    },
                )
                for s in slices
            ]
            rows = [(s, est) for s, est in rows if est]
            if not rows:
                continue
            chart = dot_chart(
                rows,
                [baseline, model],
                x_label=f"{metric} per category",
                bounds=(0.0, 1.0),
                connect=(baseline, model),
                higher_is_better=info.higher_is_better,
            )
            figures.append(
                Figure(
                    f"{metric}: {baseline} → {model}",
                    "Per category, before (the baseline) and after, each with its 95% Wilson "
                    "interval; the bar is red where the model got worse.",
                    chart,
                )
            )
    return figures


def task_figures(results: Results, evaluator: str) -> list[Figure]:
    """Accuracy per task (slice) of every model."""
    values = metric_values(results, evaluator)
    figures = []
    for info in _metric_info(results, evaluator):
        metric = info.name
        tasks = _slices(values, metric)
        if not tasks:
            continue
        models = list(dict.fromkeys(k[0] for k in values if k[1] == metric))
        rows = [
            (model, {t: values[(model, metric, t)] for t in tasks if (model, metric, t) in values})
            for model in models
        ]
        chart = dot_chart(
            [(m, est) for m, est in rows if est], tasks, x_label=metric, bounds=(0.0, 1.0)
        )
        note = "Per model, one dot per task with its 95% interval."
        figures.append(Figure(f"{metric} per task", note, chart))
    return figures


def evaluator_figures(
    results: Results | Mapping[str, Any], evaluator: str, kind: str
) -> list[Figure]:
    """The charts for one evaluator of ``kind``: its plug-in's ``figures`` hook, if it has one
    and is installed (none otherwise)."""
    from audit import registry
    from audit.plugins import hook

    results = parse_results(results, "results")
    try:
        figures = hook(registry.evaluators.get(kind), "figures")
    except Exception:  # a kind not installed here: its section shows tables only
        return []
    return list(figures(results, evaluator)) if figures is not None else []
