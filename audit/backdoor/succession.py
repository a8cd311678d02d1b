"""Backdoor succession: how much of a contributor's backdoor a merged model keeps.

For every model with at least two parents (a merge) and every parent (*contributor*) whose
backdoor works on a slice — ASR > 0 in its metric row and, when the reference model has a row
for the same slice, the contributor's interval lies wholly above the reference's (so a clean
fine-tune whose answers merely drift onto the target is not treated as backdoored) — the
*succession ratio* is the merged
model's ASR divided by the contributor's on that slice (one per task, or ``TASK@DATA`` for
transfer; never ``"all"``, which would mix the contributor's backdoor with the others'), both
over the items scored on both models (an ASR item counts only where the model's clean answer
missed the target, so the two item sets can differ). A ratio of 1 means the backdoor passed
through the merge intact; 0 that it was removed. The same is done for ``transfer_asr`` (rows of
kind ``"transfer"``): does the merged model carry the trigger onto other tasks' inputs as much
as the contributor did?

The 95% interval is a paired percentile bootstrap over items (both models' outcomes of an item
resampled together; seeded), dropping the resamples where the contributor's ASR is 0 (the
ratio is undefined there). With fewer than 2 items, or no usable resample, the interval is
``None``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, TypedDict

import numpy as np

from audit.results import MetricRowT, ModelRowT
from audit.stats import paired_bootstrap

__all__ = ["KINDS", "SuccessionRowT", "succession_ratio", "succession_rows"]

KINDS: dict[str, str] = {"asr": "succession", "transfer_asr": "transfer"}
"""Backdoor metric -> the kind of row it gives."""


class SuccessionRowT(TypedDict):
    kind: str  # "succession" | "transfer"
    model: str
    contributor: str
    evaluator: str
    metric: str  # "asr" | "transfer_asr"
    slice: str
    asr_model: float
    asr_contributor: float
    ratio: float
    ci_low: float | None
    ci_high: float | None
    n: int


def succession_ratio(
    model: Sequence[float],
    contributor: Sequence[float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float | None, float | None]:
    """``(ratio, ci_low, ci_high)`` of ``mean(model) / mean(contributor)`` over paired items.

    Raises ``ValueError`` when the contributor's mean is 0 or the lengths differ.
    """
    a = np.asarray(model, dtype=float)
    b = np.asarray(contributor, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired lengths differ: {a.size} model, {b.size} contributor")
    if a.size == 0 or b.sum() == 0:
        raise ValueError("the contributor's ASR is 0: no ratio")
    ratio = float(a.sum() / b.sum())
    if a.size < 2:
        return ratio, None, None
    ci = paired_bootstrap(
        [a, b], _resample_ratio, n_resamples=n_resamples, seed=seed, confidence=confidence
    )
    if ci is None:
        return ratio, None, None
    return ratio, ci[0], ci[1]


def _resample_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per resample (rows), ``sum(a) / sum(b)``; NaN (dropped) where ``sum(b)`` is not > 0."""
    num, den = a.sum(axis=1), b.sum(axis=1)
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def _values(
    samples: Sequence[Mapping[str, Any]],
) -> dict[tuple[str, str, str, str], dict[str, float]]:
    """(model, evaluator, metric, slice) -> {item_id: value}, backdoor metrics only."""
    out: dict[tuple[str, str, str, str], dict[str, float]] = {}
    for s in samples:
        if s["metric"] not in KINDS:
            continue
        key = (s["model"], s["evaluator"], s["metric"], s["slice"])
        out.setdefault(key, {})[s["item_id"]] = float(s["value"])
    return out


def succession_rows(
    models: Sequence[ModelRowT],
    metrics: Sequence[MetricRowT],
    samples: Sequence[Mapping[str, Any]],
    *,
    evaluators: Collection[str] | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    reference: str | None = None,
) -> list[SuccessionRowT]:
    """Succession and transfer rows for every merged model × contributor × backdoor slice.

    ``samples`` are sample rows (:class:`audit.results.SampleRowT`: model, evaluator, metric,
    slice, item_id, value); ``evaluators`` restricts to those evaluator names (the suite's
    ``backdoor`` evaluators; ``None``: any evaluator with ``asr``/``transfer_asr`` samples).
    """
    values = _values(samples)
    reference_high = {
        (m["evaluator"], m["metric"], m["slice"]): m.get("ci_high")
        for m in metrics
        if m["model"] == reference and m.get("ci_high") is not None
    }
    rows: list[SuccessionRowT] = []
    for merged in models:
        if len(merged["parents"]) < 2:
            continue
        for parent in merged["parents"]:
            for m in metrics:
                if m["model"] != parent or m["metric"] not in KINDS or m["slice"] == "all":
                    continue
                if not m["value"] > 0:
                    continue
                floor = reference_high.get((m["evaluator"], m["metric"], m["slice"]))
                low = m.get("ci_low")
                if floor is not None and not (low is not None and low > floor):
                    continue
                if evaluators is not None and m["evaluator"] not in evaluators:
                    continue
                key = (m["evaluator"], m["metric"], m["slice"])
                mine = values.get((merged["name"], *key), {})
                theirs = values.get((parent, *key), {})
                shared = [i for i in theirs if i in mine]
                after = [mine[i] for i in shared]
                before = [theirs[i] for i in shared]
                if not shared or sum(before) == 0:
                    continue
                ratio, low, high = succession_ratio(
                    after, before, confidence=confidence, n_resamples=n_resamples, seed=seed
                )
                rows.append(
                    SuccessionRowT(
                        kind=KINDS[m["metric"]],
                        model=merged["name"],
                        contributor=parent,
                        evaluator=m["evaluator"],
                        metric=m["metric"],
                        slice=m["slice"],
                        asr_model=float(np.mean(after)),
                        asr_contributor=float(np.mean(before)),
                        ratio=ratio,
                        ci_low=low,
                        ci_high=high,
                        n=len(shared),
                    )
                )
    return rows
