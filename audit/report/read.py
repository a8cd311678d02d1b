"""Reading a results dict for the pages: its rows, its evaluators and their metrics, its models
and their parents, its verdict."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from audit.report.format import cell_text


def rows_of(results: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    rows = results.get(key)
    return [dict(r) for r in rows if isinstance(r, Mapping)] if isinstance(rows, list) else []


def verdict(results: Mapping[str, Any]) -> str:
    """``PASS`` / ``FAIL`` / ``ERROR``: the run's own verdict, else derived like its exit code.

    ``ERROR`` when a step crashed, else ``FAIL`` when a gate failed, else ``PASS``.
    """
    given = str(results.get("verdict") or "").upper()
    if given in ("PASS", "FAIL", "ERROR"):
        return given
    if rows_of(results, "failures"):
        return "ERROR"
    return "FAIL" if any(not g.get("passed") for g in rows_of(results, "gates")) else "PASS"


@dataclass(frozen=True)
class MetricInfo:
    evaluator: str
    name: str
    higher_is_better: bool
    description: str
    kind: str
    headline: bool


EvaluatorInfo = tuple[str, str, list[MetricInfo]]
"""An evaluator's name, kind and metrics."""


def evaluator_infos(results: Mapping[str, Any]) -> list[EvaluatorInfo]:
    """(name, kind, metrics) per evaluator: the declared ones, then any seen only in rows."""
    found: dict[str, tuple[str, list[MetricInfo]]] = {}
    for spec in rows_of(results, "evaluators"):
        name = cell_text(spec.get("name"))
        metrics = [
            MetricInfo(
                evaluator=name,
                name=cell_text(m.get("name")),
                higher_is_better=bool(m.get("higher_is_better", True)),
                description=str(m.get("description") or ""),
                kind=str(m.get("kind") or ""),
                headline=bool(m.get("headline", True)),
            )
            for m in spec.get("metrics") or []
            if isinstance(m, Mapping)
        ]
        found.setdefault(name, (str(spec.get("kind") or ""), metrics))
    for row in rows_of(results, "metrics") + rows_of(results, "comparisons"):
        name, metric = cell_text(row.get("evaluator")), cell_text(row.get("metric"))
        kind, metrics = found.setdefault(name, ("", []))
        if all(m.name != metric for m in metrics):
            hib = bool(row.get("higher_is_better", True))
            metrics.append(MetricInfo(name, metric, hib, "", "", True))
    return [(name, kind, metrics) for name, (kind, metrics) in found.items()]


def model_names(results: Mapping[str, Any]) -> list[str]:
    names = [cell_text(m.get("name")) for m in rows_of(results, "models")]
    for row in rows_of(results, "metrics"):
        if cell_text(row.get("model")) not in names:
            names.append(cell_text(row.get("model")))
    return names


def parents_of(results: Mapping[str, Any]) -> dict[str, list[str]]:
    """Each model's parents: from the models table, then from parent comparisons."""
    parents: dict[str, list[str]] = {}
    for m in rows_of(results, "models"):
        parents[cell_text(m.get("name"))] = [cell_text(p) for p in m.get("parents") or []]
    for c in rows_of(results, "comparisons"):
        if c.get("relation") == "parent":
            found = parents.setdefault(cell_text(c.get("model")), [])
            if cell_text(c.get("baseline")) not in found:
                found.append(cell_text(c.get("baseline")))
    return parents
