"""Scaling-law fits: known laws are recovered with honest intervals; unfit data says why."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from audit.analysis.scaling import ScalingPointT, fit_power_law, power_law, scaling_fits


def point(tokens: int, drift: float, half: float = 0.01, n: int = 200) -> ScalingPointT:
    return ScalingPointT(
        model=f"m{tokens}",
        value=tokens,
        tokens=tokens,
        drift=drift,
        ci_low=drift - half,
        ci_high=drift + half,
        n=n,
    )


def test_recovers_a_known_power_law() -> None:
    a, beta, e = 0.08, 0.6, 0.02
    tokens = [1000, 2000, 4000, 8000, 16000, 32000]
    points = [point(d, float(power_law(d / 1000, a, beta, e))) for d in tokens]
    estimates, chi2, dof = fit_power_law(points)
    assert dof == 3 and chi2 == pytest.approx(0.0, abs=1e-6)
    for name, truth in (("A", a), ("beta", beta), ("E", e)):
        est = estimates[name]
        assert est["value"] == pytest.approx(truth, rel=1e-3, abs=1e-4)
        assert est["ci_low"] is not None and est["ci_high"] is not None
        assert est["ci_low"] < truth < est["ci_high"]


def test_zero_degrees_of_freedom_gives_no_interval_and_says_so() -> None:
    """Three points for three parameters: the law interpolates them, so an interval from the
    points' own errors alone would claim a precision nothing tested."""
    points = [point(d, float(power_law(d / 1000, 0.08, 0.6, 0.02))) for d in (1000, 4000, 16000)]
    estimates, _, dof = fit_power_law(points)
    assert dof == 0
    assert all(
        estimates[k]["ci_low"] is None and estimates[k]["ci_high"] is None
        for k in ("A", "beta", "E")
    )
    assert estimates["beta"]["value"] == pytest.approx(0.6, rel=1e-2)
    from audit.analysis.scaling import _caveat

    assert "0 degrees of freedom" in (_caveat(estimates, dof) or "")


def test_noisy_points_widen_the_intervals() -> None:
    tokens = [1000, 2000, 4000, 8000, 16000]
    clean = [point(d, float(power_law(d / 1000, 0.1, 0.5, 0.0))) for d in tokens]
    wobble = [0.03, -0.03, 0.03, -0.03, 0.03]
    noisy = [point(p["tokens"], p["drift"] + w) for p, w in zip(clean, wobble, strict=True)]
    tight, _, _ = fit_power_law(clean)
    loose, chi2, dof = fit_power_law(noisy)
    assert chi2 / dof > 1  # more scatter than the errors explain → intervals inflated

    def width(e: Any) -> float:
        return float(e["ci_high"] - e["ci_low"])

    assert width(loose["beta"]) > 2 * width(tight["beta"])


def test_too_few_points_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least 3 sweep points"):
        fit_power_law([point(1000, 0.1), point(2000, 0.2)])
    with pytest.raises(ValueError, match="3 distinct token counts"):
        fit_power_law([point(1000, 0.1), point(1000, 0.2), point(2000, 0.3)])


def _model(name: str, tokens: int | None, value: int) -> dict[str, Any]:
    return {
        "name": name,
        "intervention": "lora",
        "training": None if tokens is None else {"tokens": tokens},
        "sweep": {"base": "s", "param": "steps", "value": value},
    }


def _comparison(model: str, before: float, after: float) -> dict[str, Any]:
    delta = after - before
    return {
        "model": model,
        "baseline": "base",
        "relation": "parent",
        "evaluator": "drift",
        "metric": "refusal_rate_unsafe",
        "slice": "all",
        "delta": delta,
        "ci_low": delta - 0.05,
        "ci_high": delta + 0.04,
        "n": 100,
        "higher_is_better": True,
    }


def test_drift_is_the_worsening_and_missing_data_is_named() -> None:
    spec = SimpleNamespace(name=None, metric="drift.refusal_rate_unsafe", slice="all", sweeps=["s"])
    models = [_model("s[steps=1]", 500, 1), _model("s[steps=2]", 1000, 2)]
    models.append(_model("s[steps=4]", None, 4))
    comparisons = [_comparison("s[steps=1]", 0.9, 0.8), _comparison("s[steps=2]", 0.9, 0.6)]
    (row,) = scaling_fits([spec], models, comparisons, {})  # type: ignore[arg-type]
    (fit,) = row["fits"]
    drifts = [(p["model"], p["drift"], p["ci_low"], p["ci_high"]) for p in fit["points"]]
    # a higher-is-better rate that fell by 0.1: drift +0.1, interval sign-flipped
    assert drifts[0] == pytest.approx(("s[steps=1]", 0.1, 0.06, 0.15))  # type: ignore[arg-type]
    assert fit["A"] is None and fit["error"] is not None
    assert "at least 3" in fit["error"] and "s[steps=4] (no token count)" in fit["error"]
    assert row["name"] == "scaling 1: drift.refusal_rate_unsafe"


def test_flat_drift_is_fitted_but_flagged() -> None:
    from audit.analysis.scaling import _caveat

    points = [point(d, 0.0) for d in (1000, 2000, 4000, 8000)]
    estimates, _, _ = fit_power_law(points)
    assert estimates["A"]["value"] == pytest.approx(0.0, abs=1e-3)
    note = _caveat(estimates)
    assert note is not None and "no detectable growth" in note
