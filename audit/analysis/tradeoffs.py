"""Gain vs cost (``[[tradeoffs]]``): for each model, what it gained on the skill it was trained
for against what it cost, both paired changes against its baseline with their intervals.

``gain`` is the change of the gain metric in its better direction (positive: learned), ``cost``
the change of the cost metric in its worse direction (positive: lost), so every chart reads the
same way: right is more learned, up is more lost. A point is on the Pareto front when no other
point gains at least as much at no more cost (one of the two strictly). With ``[suite] seeds``
the points are the pooled comparisons (:mod:`audit.analysis.pooled`) of the models as written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from audit.suite.schema import TradeoffSpec
from audit.suite.suite import Suite
from audit.suite.sweeps import match_models


def _oriented(row: Mapping[str, Any], better: bool) -> dict[str, float | None]:
    """The row's change with its interval, signed so that positive is ``better`` (a gain) or
    worse (a cost)."""
    flip = bool(row.get("higher_is_better", True)) != better
    sign = -1.0 if flip else 1.0
    low, high = row.get("ci_low"), row.get("ci_high")
    ends = [] if low is None or high is None else sorted([sign * low, sign * high])
    return {
        "value": sign * float(row["delta"]),
        "ci_low": ends[0] if ends else None,
        "ci_high": ends[1] if ends else None,
        "p_value": row.get("p_value"),
        "n": row.get("n"),
    }


def _pareto(points: list[dict[str, Any]]) -> None:
    for p in points:
        g, c = p["gain"]["value"], p["cost"]["value"]
        p["pareto"] = not any(
            q is not p
            and q["gain"]["value"] >= g
            and q["cost"]["value"] <= c
            and (q["gain"]["value"] > g or q["cost"]["value"] < c)
            for q in points
        )


def tradeoff_tables(
    suite: Suite, comparisons: Sequence[Mapping[str, Any]], pooled: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One table per ``[[tradeoffs]]``: its spec and a point per (model, baseline) with both
    changes measured."""
    rows = [c for c in comparisons if c["model"] not in suite.seed_of] + list(pooled)
    by_pair = {
        (r["model"], r["baseline"], r["evaluator"], r["metric"], r.get("slice", "all")): r
        for r in rows
    }
    models = list(dict.fromkeys(r["model"] for r in rows))
    out = []
    for i, spec in enumerate(suite.file.tradeoffs):
        points = []
        for model in match_models(spec.models, models, suite.sweeps):
            for baseline in _baselines(spec, model, rows, suite):
                gain = by_pair.get((model, baseline, *_key(spec.gain, spec.gain_slice)))
                cost = by_pair.get((model, baseline, *_key(spec.cost, spec.cost_slice)))
                if gain is None or cost is None:
                    continue
                points.append(
                    {
                        "model": model,
                        "baseline": baseline,
                        "gain": _oriented(gain, better=True),
                        "cost": _oriented(cost, better=False),
                    }
                )
        _pareto(points)
        out.append(
            {
                "name": spec.name or f"{spec.gain} vs {spec.cost}",
                "index": i,
                "gain": _label(spec.gain, spec.gain_slice),
                "cost": _label(spec.cost, spec.cost_slice),
                "vs": spec.vs,
                "points": points,
            }
        )
    return out


def _key(metric: str, slice_: str) -> tuple[str, str, str]:
    evaluator, _, name = metric.partition(".")
    return evaluator, name, slice_


def _label(metric: str, slice_: str) -> str:
    return metric if slice_ == "all" else f"{metric} [{slice_}]"


def _baselines(
    spec: TradeoffSpec, model: str, rows: Sequence[Mapping[str, Any]], suite: Suite
) -> list[str]:
    if spec.vs == "parent":
        return list(
            dict.fromkeys(
                r["baseline"] for r in rows if r["model"] == model and r["relation"] == "parent"
            )
        )
    if spec.vs == "reference":
        return [suite.reference] if model != suite.reference else []
    return [spec.vs] if model != spec.vs else []
