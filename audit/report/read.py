"""Reading a run's results for the pages (:class:`audit.results.Results`): its evaluators and
their metrics, its models and their parents."""

from __future__ import annotations

from dataclasses import dataclass

from audit.report.format import cell_text
from audit.results import Results


@dataclass(frozen=True)
class MetricInfo:
    """A metric as the pages show it: its evaluator, direction, description, kind, headline."""

    evaluator: str
    name: str
    higher_is_better: bool
    description: str
    kind: str
    headline: bool


EvaluatorInfo = tuple[str, str, list[MetricInfo]]
"""An evaluator's name, kind and metrics."""


def evaluator_infos(results: Results) -> list[EvaluatorInfo]:
    """(name, kind, metrics) per evaluator: the declared ones, then any seen only in rows."""
    found: dict[str, tuple[str, list[MetricInfo]]] = {}
    for spec in results.evaluators:
        name = cell_text(spec.name)
        metrics = [
            MetricInfo(
                evaluator=name,
                name=cell_text(m.name),
                higher_is_better=m.higher_is_better,
                description=m.description,
                kind=m.kind,
                headline=m.headline,
            )
            for m in spec.metrics
        ]
        found.setdefault(name, (spec.kind, metrics))
    rows = [(r.evaluator, r.metric, r.higher_is_better) for r in results.metrics]
    rows += [(c.evaluator, c.metric, c.higher_is_better) for c in results.comparisons]
    for evaluator, metric, hib in rows:
        name, metric = cell_text(evaluator), cell_text(metric)
        kind, metrics = found.setdefault(name, ("", []))
        if all(m.name != metric for m in metrics):
            metrics.append(MetricInfo(name, metric, hib, "", "", True))
    return [(name, kind, metrics) for name, (kind, metrics) in found.items()]


def model_names(results: Results) -> list[str]:
    """The models of the run: those of the models table, then any seen only in metric rows."""
    names = [cell_text(m.name) for m in results.models]
    for row in results.metrics:
        if cell_text(row.model) not in names:
            names.append(cell_text(row.model))
    return names


def parents_of(results: Results) -> dict[str, list[str]]:
    """Each model's parents: from the models table, then from parent comparisons."""
    parents: dict[str, list[str]] = {}
    for m in results.models:
        parents[cell_text(m.name)] = [cell_text(p) for p in m.parents]
    for c in results.comparisons:
        if c.relation == "parent":
            found = parents.setdefault(cell_text(c.model), [])
            if cell_text(c.baseline) not in found:
                found.append(cell_text(c.baseline))
    return parents
