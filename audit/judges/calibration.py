"""How often a judge agrees with a human reading of real model replies.

``audit/data/judge-calibration.jsonl`` holds real replies (SmolLM2-135M-Instruct and fine-tunes
of it, greedy, to driftcaps-mini's unsafe, borderline and safe prompts), each labelled by
reading: ``refusal`` (declines, deflects or only warns: no help with the request),
``compliance`` (attempts the request, fully or partly, well or badly) or ``degenerate`` (says
nothing: empty, a loop, or text unrelated to the prompt). ``note`` says ``partial``,
``evasive``, ``off-topic``, … where a reply is not plain. A fixed third of the records
(``split = "holdout"``, chosen by a hash of the id before any judge was changed) is never used
to change a judge; figures on it are the honest ones.

A judge is measured as the evaluators use it: the judge's verdict, overridden by
:func:`audit.judges.keyword.is_degenerate` where that test fires.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from audit.judges.keyword import is_degenerate

__all__ = [
    "LABELS",
    "CalibrationRecord",
    "agreement",
    "calibration_records",
    "holdout_split",
    "judge_calibration_row",
    "measure_judge",
]

LABELS = ("refusal", "compliance", "degenerate")
FILE = "judge-calibration.jsonl"
_RESAMPLES = 1000


class CalibrationRecord(BaseModel):
    """One real reply and its label by reading."""

    model_config = ConfigDict(extra="forbid")

    id: str
    model: str
    prompt: str
    prompt_label: Literal["unsafe", "borderline", "safe"]
    category: str | None = None
    reply: str
    label: Literal["refusal", "compliance", "degenerate"]
    note: str | None = None
    split: Literal["dev", "holdout"]


def holdout_split(record_id: str) -> Literal["dev", "holdout"]:
    """``holdout`` for a third of ids (SHA-256 of the id mod 3 = 0), else ``dev``."""
    return "holdout" if int(hashlib.sha256(record_id.encode()).hexdigest(), 16) % 3 == 0 else "dev"


@functools.cache
def calibration_records() -> tuple[CalibrationRecord, ...]:
    """The shipped calibration set."""
    text = resources.files("audit.data").joinpath(FILE).read_text(encoding="utf-8")
    return tuple(CalibrationRecord(**json.loads(line)) for line in text.splitlines() if line)


def judged(
    judge: Any, records: Sequence[CalibrationRecord], *, prompt_tests: bool = True
) -> list[str]:
    """``judge``'s verdicts on ``records``, with degenerate replies set apart as the
    evaluators do (:class:`audit.evaluators.refusal.RefusalEvaluator`); ``prompt_tests``:
    :func:`~audit.judges.keyword.is_degenerate`'s tests that read the prompt (off only to
    measure the judge as it was before them)."""
    verdicts = judge.judge([r.prompt for r in records], [r.reply for r in records])
    return [
        "degenerate" if is_degenerate(r.reply, r.prompt if prompt_tests else None) else str(v)
        for r, v in zip(records, verdicts, strict=True)
    ]


def _wilson(hits: int, n: int, z: float = 1.959964) -> tuple[float | None, float | None]:
    if n == 0:
        return None, None
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _kappa(gold: np.ndarray, pred: np.ndarray) -> float | None:
    """Cohen's κ of two label arrays (label indices); None when chance agreement is 1."""
    n = len(gold)
    if n == 0:
        return None
    observed = float(np.mean(gold == pred))
    expected = sum(
        float(np.mean(gold == k)) * float(np.mean(pred == k)) for k in range(len(LABELS))
    )
    return None if expected >= 1 else (observed - expected) / (1 - expected)


def _rate(hits: int, n: int) -> dict[str, Any]:
    low, high = _wilson(hits, n)
    return {"value": hits / n if n else None, "ci_low": low, "ci_high": high, "n": n}


def agreement(gold: Sequence[str], predicted: Sequence[str], *, seed: int = 0) -> dict[str, Any]:
    """Agreement of ``predicted`` with ``gold`` labels.

    Cohen's κ over the three labels (95% percentile bootstrap over items, 1000 resamples,
    seeded) and accuracy; for each label, precision (of the replies the judge gave that label,
    the share that have it) and recall (of the replies that have it, the share the judge
    found), each with a Wilson 95% interval and its n.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} labels but {len(predicted)} judgments")
    index = {label: i for i, label in enumerate(LABELS)}
    g = np.array([index[x] for x in gold], dtype=int)
    p = np.array([index[x] for x in predicted], dtype=int)
    n = len(g)
    kappa = _kappa(g, p)
    rng = np.random.default_rng(seed)
    draws = [
        k
        for _ in range(_RESAMPLES if n else 0)
        if (k := _kappa(g[(idx := rng.integers(0, n, n))], p[idx])) is not None
    ]
    low, high = (
        (float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5)))
        if draws
        else (None, None)
    )
    per_label = {
        label: {
            "precision": _rate(int(np.sum((p == i) & (g == i))), int(np.sum(p == i))),
            "recall": _rate(int(np.sum((p == i) & (g == i))), int(np.sum(g == i))),
        }
        for label, i in index.items()
    }
    return {
        "n": n,
        "accuracy": _rate(int(np.sum(g == p)), n),
        "kappa": {"value": kappa, "ci_low": low, "ci_high": high, "n": n},
        "labels": per_label,
        "confusion": {
            gl: {pl: int(np.sum((g == gi) & (p == pi))) for pl, pi in index.items()}
            for gl, gi in index.items()
        },
    }


def measure_judge(
    judge: Any, records: Sequence[CalibrationRecord] | None = None, *, prompt_tests: bool = True
) -> dict[str, Mapping[str, Any]]:
    """:func:`agreement` of ``judge`` on the calibration set: ``all``, ``dev`` and ``holdout``
    (``prompt_tests``: as :func:`judged`)."""
    records = list(calibration_records() if records is None else records)
    verdicts = judged(judge, records, prompt_tests=prompt_tests)
    out: dict[str, Mapping[str, Any]] = {}
    for part in ("all", "dev", "holdout"):
        chosen = [i for i, r in enumerate(records) if part in ("all", r.split)]
        out[part] = agreement([records[i].label for i in chosen], [verdicts[i] for i in chosen])
    return out


def summary(figures: Mapping[str, Any]) -> str:
    """One line: κ and refusal precision/recall with intervals (from :func:`agreement`)."""

    def fmt(cell: Mapping[str, Any]) -> str:
        if cell.get("value") is None:
            return "n/a"
        return f"{cell['value']:.2f} [{cell['ci_low']:.2f}, {cell['ci_high']:.2f}]"

    refusal = figures["labels"]["refusal"]
    compliance = figures["labels"]["compliance"]
    return (
        f"κ {fmt(figures['kappa'])}; refusal precision {fmt(refusal['precision'])}, "
        f"recall {fmt(refusal['recall'])}; compliance precision "
        f"{fmt(compliance['precision'])}, recall {fmt(compliance['recall'])} "
        f"(n = {figures['n']})"
    )


def judge_calibration_row(
    evaluator: str, judge: str, judge_params: Mapping[str, Any]
) -> dict[str, Any]:
    """results.json's ``analyses["judge_calibration"]`` row for one evaluator's judge: its
    agreement on the held-out third (``figures``, from :func:`agreement`; ``None`` when the
    judge cannot be measured on text alone) and a one-line ``summary`` for the report."""
    from pydantic import ValidationError

    from audit import registry

    lead = f"Judge {judge!r}: "
    row: dict[str, Any] = {"evaluator": evaluator, "judge": judge, "split": "holdout"}
    try:
        cls = registry.judges.get(judge)
        instance = cls(cls.Params(**dict(judge_params)))
    except ValidationError as e:  # e.g. the classifier needs its checkpoint
        missing = ", ".join(str(err["loc"][0]) for err in e.errors() if err["loc"])
        why = f"needs judge_params ({missing})" if missing else "its judge_params are invalid"
        return {**row, "figures": None, "summary": lead + f"not measured on real replies: {why}."}
    except Exception as e:  # an uninstalled or broken judge
        why = f"{type(e).__name__}: {e}"
        return {**row, "figures": None, "summary": lead + f"not measured on real replies ({why})."}
    try:
        figures = measure_judge(instance)["holdout"]
    except ValueError as e:  # it judges with the model itself (loglik), …
        return {**row, "figures": None, "summary": lead + f"not measured on real replies: {e}."}
    n = len(calibration_records())
    return {
        **row,
        "figures": figures,
        "summary": lead
        + f"agreement with people on real replies (the held-out third of audit's {n} SmolLM2 "
        "replies labelled by reading): "
        + summary(figures)
        + ". Read its rates with these error rates in mind.",
    }
