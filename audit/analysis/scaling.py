"""Forgetting scaling laws: drift = A·D^β + E over a sweep of fine-tuning amounts.

AlignGuard-LoRA (arXiv 2508.02079) reports that alignment forgetting after fine-tuning
follows a power law in the amount of fine-tuning data, ``L(D) = A·D^β + E``. For each
``[[scaling]]`` entry of a suite and each sweep it names, this module pairs every sweep member
with its parent (the paired comparison the run already computed), takes the *drift* — how much
the metric worsened, ``before − after`` for a higher-is-better metric and ``after − before``
otherwise — and fits it against ``D``, the number of tokens the member was fine-tuned on (its
``training.tokens``), with :func:`scipy.optimize.curve_fit`.

Each point is weighted by its own standard error (half its 95% interval / 1.96). Parameter
intervals are Wald intervals from the covariance, inflated by χ²/dof when the points scatter
more than their errors explain, with a t quantile on the residual degrees of freedom. With none
(3 points for 3 parameters) the law passes through every point and no interval is given: the
fit says so in its note. ``D`` is fitted in thousands of tokens, so ``A`` is the drift added by
the first thousand tokens above the floor ``E``. A fit needs at least 3 members with data;
otherwise, or if the fit does not converge, the entry says why instead of giving numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, TypedDict

from audit.results import ComparisonRowT, ModelRowT

TOKENS_UNIT = 1000.0
"""D is fitted in units of this many tokens."""
BETA_RANGE = (0.05, 5.0)
"""β is searched in this range and A ≥ 0: drift that grows with D. As β → 0 the law degenerates
into ``A + E + A·β·ln D`` with A and E unbounded, so β is kept away from 0."""


class EstimateT(TypedDict):
    value: float
    ci_low: float | None
    ci_high: float | None


class ScalingPointT(TypedDict):
    model: str
    value: Any  # the swept parameter's value
    tokens: int
    drift: float
    ci_low: float | None
    ci_high: float | None
    n: int


class ScalingFitT(TypedDict):
    sweep: str
    param: str
    intervention: str | None
    points: list[ScalingPointT]
    A: EstimateT | None
    beta: EstimateT | None
    E: EstimateT | None
    chi2: float | None
    dof: int | None
    error: str | None
    note: str | None


class ScalingRowT(TypedDict):
    name: str
    evaluator: str
    metric: str
    slice: str
    higher_is_better: bool
    tokens_unit: float
    fits: list[ScalingFitT]


def power_law(d: Any, a: float, beta: float, e: float) -> Any:
    """``a · d**beta + e``."""
    return a * d**beta + e


def _sigma(point: ScalingPointT) -> float:
    floor = 0.5 / max(point["n"], 1)
    if point["ci_low"] is None or point["ci_high"] is None:
        return max(floor, abs(point["drift"]) or floor)
    return max((point["ci_high"] - point["ci_low"]) / (2 * 1.96), floor)


def fit_power_law(
    points: Sequence[ScalingPointT],
) -> tuple[dict[str, EstimateT], float, int]:
    """Fit ``drift = A·(D/1000)^β + E``; estimates with 95% intervals, χ² and residual dof.

    Raises ValueError when the points cannot determine the law.
    """
    import numpy as np
    from scipy import stats
    from scipy.optimize import OptimizeWarning, curve_fit

    if len(points) < 3:
        raise ValueError(f"a power law needs at least 3 sweep points with data; got {len(points)}")
    x = np.array([p["tokens"] for p in points], dtype=float) / TOKENS_UNIT
    y = np.array([p["drift"] for p in points], dtype=float)
    sigma = np.array([_sigma(p) for p in points])
    if len(set(x.tolist())) < 3:
        raise ValueError("a power law needs at least 3 distinct token counts")
    order = np.argsort(x)
    span = float(y[order[-1]] - y[order[0]])
    slope = span / max(float(x.max()) - float(x.min()), 1e-9)
    p0 = (max(slope, 1e-3), 1.0, float(y[order[0]]) - max(slope, 1e-3) * float(x.min()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", OptimizeWarning)
        try:
            estimate, cov = curve_fit(
                power_law,
                x,
                y,
                p0=p0,
                sigma=sigma,
                absolute_sigma=True,
                bounds=([0.0, BETA_RANGE[0], -np.inf], [np.inf, BETA_RANGE[1], np.inf]),
                max_nfev=20000,
            )
        except (RuntimeError, OptimizeWarning) as error:
            raise ValueError(f"the fit did not converge ({error})") from None
    residuals = (y - power_law(x, *estimate)) / sigma
    chi2 = float(np.sum(residuals**2))
    dof = len(points) - 3
    if not np.all(np.isfinite(cov)):
        raise ValueError("the points do not determine all three parameters (singular fit)")
    out: dict[str, EstimateT] = {}
    if dof == 0:  # the law passes through every point: nothing is left to judge its error by
        for i, name in enumerate(("A", "beta", "E")):
            out[name] = EstimateT(value=float(estimate[i]), ci_low=None, ci_high=None)
        return out, chi2, dof
    inflate = max(1.0, chi2 / dof)
    quantile = float(stats.t.ppf(0.975, dof))
    for i, name in enumerate(("A", "beta", "E")):
        half = quantile * math.sqrt(max(float(cov[i, i]), 0.0) * inflate)
        value = float(estimate[i])
        out[name] = EstimateT(value=value, ci_low=value - half, ci_high=value + half)
    return out, chi2, dof


def _caveat(estimates: dict[str, EstimateT], dof: int | None = None) -> str | None:
    """Why a converged fit may still say little, in words for the report."""
    a, beta = estimates["A"], estimates["beta"]
    notes = []
    if dof == 0:
        notes.append(
            "3 points for 3 parameters: the law passes through every point (0 degrees of "
            "freedom), so no interval is given; add sweep values"
        )
    if a["ci_low"] is not None and a["ci_low"] <= 0.0:
        notes.append("A's interval includes 0: no detectable growth with D, so β is not determined")
    if min(abs(beta["value"] - b) for b in BETA_RANGE) < 1e-3:
        notes.append(f"β sits at the edge of its search range {BETA_RANGE}")
    return "; ".join(notes) or None


def _drift(row: ComparisonRowT) -> tuple[float, float | None, float | None]:
    """The worsening of a metric with its interval (sign flipped for higher-is-better)."""
    if row["higher_is_better"]:
        low = None if row["ci_high"] is None else -row["ci_high"]
        high = None if row["ci_low"] is None else -row["ci_low"]
        return -row["delta"], low, high
    return row["delta"], row["ci_low"], row["ci_high"]


def _points(
    members: Sequence[ModelRowT],
    comparisons: Sequence[ComparisonRowT],
    evaluator: str,
    metric: str,
    slice_: str,
) -> tuple[list[ScalingPointT], list[str]]:
    points: list[ScalingPointT] = []
    missing: list[str] = []
    for model in members:
        tokens = (model.get("training") or {}).get("tokens")
        sweep = model.get("sweep") or {}
        row = next(
            (
                c
                for c in comparisons
                if c["model"] == model["name"]
                and c["relation"] == "parent"
                and (c["evaluator"], c["metric"], c["slice"]) == (evaluator, metric, slice_)
            ),
            None,
        )
        if row is None or not tokens:
            missing.append(
                f"{model['name']} ({'no token count' if not tokens else 'no comparison'})"
            )
            continue
        drift, low, high = _drift(row)
        points.append(
            ScalingPointT(
                model=model["name"],
                value=sweep.get("value"),
                tokens=int(tokens),
                drift=drift,
                ci_low=low,
                ci_high=high,
                n=row["n"],
            )
        )
    return points, missing


def scaling_fits(
    specs: Sequence[Any],
    models: Sequence[ModelRowT],
    comparisons: Sequence[ComparisonRowT],
    higher_is_better: dict[tuple[str, str], bool],
) -> list[ScalingRowT]:
    """One row per ``[[scaling]]`` entry, with a fit (or the reason for none) per sweep."""
    rows: list[ScalingRowT] = []
    for i, spec in enumerate(specs):
        evaluator, _, metric = spec.metric.partition(".")
        fits: list[ScalingFitT] = []
        for sweep in spec.sweeps:
            members = [m for m in models if (m.get("sweep") or {}).get("base") == sweep]
            points, missing = _points(members, comparisons, evaluator, metric, spec.slice)
            fit = ScalingFitT(
                sweep=sweep,
                param=(members[0].get("sweep") or {}).get("param", "") if members else "",
                intervention=members[0]["intervention"] if members else None,
                points=points,
                A=None,
                beta=None,
                E=None,
                chi2=None,
                dof=None,
                error=None,
                note=None,
            )
            try:
                estimates, fit["chi2"], fit["dof"] = fit_power_law(points)
                fit["A"], fit["beta"], fit["E"] = estimates["A"], estimates["beta"], estimates["E"]
                fit["note"] = _caveat(estimates, fit["dof"])
            except ValueError as error:
                fit["error"] = str(error) + (
                    f"; without data: {', '.join(missing)}" if missing else ""
                )
            fits.append(fit)
        rows.append(
            ScalingRowT(
                name=spec.name or f"scaling {i + 1}: {spec.metric}",
                evaluator=evaluator,
                metric=metric,
                slice=spec.slice,
                higher_is_better=higher_is_better.get((evaluator, metric), True),
                tokens_unit=TOKENS_UNIT,
                fits=fits,
            )
        )
    return rows
