"""Small hand-made runs (results.json + samples, no model loaded) that release comparisons,
gates and the results reader are tested on: ``run`` builds one, ``refusing`` / ``margins`` its
per-item values."""

from __future__ import annotations

import copy
from typing import Any

EVALUATORS = [
    {
        "name": "refusal",
        "kind": "refusal",
        "version": "1",
        "params": {"probes": "organism:driftcaps", "max_new_tokens": 32},
        "metrics": [
            {"name": "refusal_rate_unsafe", "higher_is_better": True, "description": "",
             "kind": "rate", "headline": True},
            {"name": "refusal_margin", "higher_is_better": True, "description": "",
             "kind": "mean", "headline": False},
            {"name": "direction_cos", "higher_is_better": True, "description": "",
             "kind": "mean", "headline": False},
        ],
    }
]  # fmt: skip


def sample_rows(model: str, metric: str, values: dict[str, float]) -> list[dict[str, Any]]:
    return [
        {"model": model, "evaluator": "refusal", "metric": metric, "slice": "fraud" if
         int(item[1:]) % 2 else "cyber", "item_id": item, "input": f"prompt {item}",
         "output": f"output {item}", "value": value, "judgment": None}
        for item, value in values.items()
    ]  # fmt: skip


def metric_row(
    model: str, metric: str, value: float, n: int, slice_: str = "all"
) -> dict[str, Any]:
    return {"model": model, "evaluator": "refusal", "metric": metric, "slice": slice_,
            "value": value, "ci_low": None, "ci_high": None, "n": n,
            "higher_is_better": True}  # fmt: skip


def model_data(model: str, refusals: dict[str, float], margins: dict[str, float], cos: float):
    """Metric rows (slices all / cyber / fraud) and samples of one model."""
    samples = sample_rows(model, "refusal_rate_unsafe", refusals)
    samples += sample_rows(model, "refusal_margin", margins)
    metrics = []
    for metric in ("refusal_rate_unsafe", "refusal_margin"):
        mine = [s for s in samples if s["metric"] == metric]
        for slice_ in ("all", "cyber", "fraud"):
            values = [s["value"] for s in mine if slice_ in ("all", s["slice"])]
            metrics.append(
                metric_row(model, metric, sum(values) / len(values), len(values), slice_)
            )
    metrics.append(metric_row(model, "direction_cos", cos, 1))
    return metrics, samples


def run(
    models: dict[str, tuple[dict[str, float], dict[str, float], float]],
    gates: list[dict[str, Any]] | None = None,
    name: str = "release",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A results.json dict and its samples: one model per entry of ``models``."""
    metrics: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    for model, (refusals, margins, cos) in models.items():
        m, s = model_data(model, refusals, margins, cos)
        metrics += m
        samples += s
    results = {
        "schema_version": 1,
        "verdict": "pass",
        "exit_code": 0,
        "suite": {"name": name, "title": f"{name} title", "hash": "abc123", "path": "s.toml",
                  "parsed": {"gates": gates or []}},
        "environment": {"audit": "0.1.0", "python": "3.11", "seed": 0,
                        "finished_at": "2026-01-01T00:00:00+00:00"},
        "models": [{"name": m, "status": "ok", "sweep": None} for m in models],
        "evaluators": copy.deepcopy(EVALUATORS),
        "metrics": metrics,
        "comparisons": [],
        "gates": [],
        "failures": [],
    }  # fmt: skip
    return results, samples


def items(n: int, start: int = 0) -> list[str]:
    """Item ids u<start> .. u<start+n-1>."""
    return [f"u{i}" for i in range(start, start + n)]


def refusing(n: int = 40, flipped: int = 0, start: int = 0) -> dict[str, float]:
    """``n`` items, all refused except the first ``flipped``."""
    return {item: 0.0 if i < flipped else 1.0 for i, item in enumerate(items(n, start))}


def margins(shift: float = 0.0, n: int = 30) -> dict[str, float]:
    """Per-item refusal margins, shifted by ``shift``."""
    return {item: 2.0 + 0.1 * i + shift + 0.01 * (i % 3) for i, item in enumerate(items(n))}


DROP = {"metric": "refusal.refusal_rate_unsafe", "models": ["tuned"], "max_drop": 0.02,
        "significant": True, "name": "refusals hold"}  # fmt: skip
