"""The results contract: what a run writes, and how to read it back.

Each run writes to its output directory:

- ``results.json``: ``{"schema_version", "suite", "environment", "models", "metrics",
  "comparisons", "gates", "failures", "steps", "evaluators"}``; every table is a list of flat
  rows that loads into pandas in one line: ``pd.DataFrame(json.load(f)["metrics"])``;
- ``samples.jsonl``: one :class:`audit.plugins.Sample` per line plus ``model`` and
  ``evaluator``;
- ``index.html``: the report.

The row shapes below are the contract later issues and CI depend on; add columns, never rename.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

SCHEMA_VERSION = 1


class ModelRowT(TypedDict):
    name: str
    key: str
    parents: list[str]
    source: str | None
    intervention: str | None
    params: dict[str, Any]
    status: str  # "ok" | "failed" | "skipped"
    training: dict[str, Any] | None  # TrainedModel.info of an intervention (tokens, steps, …)
    sweep: dict[str, Any] | None  # {"base", "param", "value"} for a member of a sweep


class MetricRowT(TypedDict):
    model: str
    evaluator: str
    metric: str
    slice: str
    value: float
    ci_low: float | None
    ci_high: float | None
    n: int
    higher_is_better: bool


class ComparisonRowT(TypedDict):
    model: str
    baseline: str
    relation: str  # "parent" | "compare" | "reference" | "gate"
    evaluator: str
    metric: str
    slice: str
    before: float
    after: float
    delta: float
    ci_low: float | None
    ci_high: float | None
    n: int
    p_value: float | None
    test: str  # "mcnemar_exact" | "paired_bootstrap" | "unpaired"
    higher_is_better: bool


class GateRowT(TypedDict):
    name: str
    rule: str
    model: str
    baseline: str | None
    passed: bool
    observed: float | None
    threshold: float
    detail: str
    mode: str  # "estimate" | "significant" | "non_inferiority"
    p_value: float | None  # the paired test's p-value (mode "significant")
    p_adjusted: float | None  # after the run's correction (holm | bh; = p_value for none)
    n_needed: int | None  # paired items for the 95% interval to fit the margin (relative rules)


class FailureRowT(TypedDict):
    step: str
    error: str
    traceback: str


class StepRowT(TypedDict):
    step: str
    kind: str  # "model" | "eval"
    key: str
    status: str  # "ok" | "failed" | "skipped"
    cached: bool
    duration_s: float


class SampleRowT(TypedDict):
    model: str
    evaluator: str
    metric: str
    slice: str
    item_id: str
    input: str
    output: str
    value: float
    judgment: str | None


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a ``results.json`` written by a run."""
    with open(path, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def load_samples(path: str | Path) -> list[SampleRowT]:
    """Read a ``samples.jsonl`` written by a run."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
