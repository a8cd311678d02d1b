"""The results contract: what a run writes, and how to read it back.

Each run writes to its output directory:

- ``results.json``: ``{"schema_version", "run_id", "suite", "environment", "models",
  "metrics", "comparisons", "gates", "failures", "steps", "evaluators"}``; every table is a
  list of flat rows that loads into pandas in one line: ``pd.DataFrame(json.load(f)["metrics"])``;
- ``samples.jsonl``: one :class:`audit.plugins.Sample` per line plus ``run_id``, ``model`` and
  ``evaluator``; ``run_id`` ties the two files together (:func:`load_samples` checks it);
- ``index.html``: the report.

Every command that reads results files reads them here (:func:`load_results`,
:func:`load_samples`): anything that is not a run's output is a :class:`ResultsError`.

The row shapes below are the contract later issues and CI depend on; add columns, never rename.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from audit.errors import InputError

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
    run_id: NotRequired[str]  # the run that wrote it: equal to results.json's run_id
    model: str
    evaluator: str
    metric: str
    slice: str
    item_id: str
    input: str
    output: str
    value: float
    judgment: str | None


class ResultsError(InputError, ValueError):
    """A results file that cannot be read as one (a command reading it exits 2)."""


_TABLES = ("models", "metrics", "comparisons", "gates", "failures", "steps", "evaluators")
_METRIC_KEYS = ("model", "evaluator", "metric", "slice", "value")
_SAMPLE_KEYS = ("model", "evaluator", "metric", "item_id", "value")


def read_json_file(path: str | Path, what: str = "results file") -> Any:
    """The JSON value of a file, or :class:`ResultsError` saying what is wrong with it.

    Only a regular file is opened (a FIFO, a device or a directory is refused from its
    ``stat``, never read, so nothing blocks). Bytes that are not UTF-8, invalid JSON, numbers
    with too many digits, nesting too deep to parse and lone surrogates are errors.
    """
    return _parse(_read_text(Path(path), what), Path(path), what)


def _read_text(path: Path, what: str) -> str:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such {what}") from None
    except (OSError, ValueError) as e:
        raise ResultsError(f"{path}: cannot read the {what} ({e})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ResultsError(f"{path}: {kind}, not a {what}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ResultsError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ResultsError(f"{path}: not UTF-8 (byte 0x{data[e.start]:02x} at {e.start})") from None


def _parse(text: str, path: Path, what: str, line: int | None = None) -> Any:
    where = f"{path}" + (f":{line}" if line is not None else "")
    try:
        value = json.loads(text)
    except RecursionError:
        raise ResultsError(f"{where}: not a {what} (JSON nested too deeply)") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
    except ValueError:  # an integer beyond Python's int/str digit limit
        raise ResultsError(f"{where}: not a {what} (a number with too many digits)") from None
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ResultsError(f"{where}: not valid text (a lone surrogate escape)") from None
    except (RecursionError, ValueError):
        raise ResultsError(f"{where}: not a {what} (JSON nested too deeply)") from None
    return value


def check_results(data: Any, label: str) -> dict[str, Any]:
    """``data`` if it has the shape of a run's results.json, else :class:`ResultsError`."""
    if not isinstance(data, dict):
        raise ResultsError(f"{label}: not a results.json (a JSON object was expected)")
    missing = [k for k in ("schema_version", "suite", "metrics") if k not in data]
    if missing:
        raise ResultsError(
            f"{label}: not a results.json written by `audit run` (missing {', '.join(missing)})"
        )
    if not isinstance(data["suite"], dict):
        raise ResultsError(f"{label}: suite is not an object")
    for table in _TABLES:
        rows = data.get(table, [])
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ResultsError(f"{label}: {table} is not a list of rows")
    for i, row in enumerate(data["metrics"]):
        value = row.get("value")
        if any(k not in row for k in _METRIC_KEYS) or not _number(value):
            raise ResultsError(f"{label}: metrics[{i}] is not a metric row")
    run_id = data.get("run_id")
    if run_id is not None and not isinstance(run_id, str):
        raise ResultsError(f"{label}: run_id is not a string")
    return data


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def load_results(path: str | Path) -> dict[str, Any]:
    """Read and check a ``results.json`` written by a run (:class:`ResultsError` if not one)."""
    return check_results(read_json_file(path, "results.json"), str(path))


def load_samples(path: str | Path, run_id: str | None = None) -> list[SampleRowT]:
    """Read and check a ``samples.jsonl`` written by a run.

    ``run_id``: the run id of the ``results.json`` beside it. Every row must carry it: a
    ``samples.jsonl`` of another run (a run killed between writing its two files) is refused,
    never paired with the wrong results. Without a run id (results of an older audit) nothing
    is checked.
    """
    path = Path(path)
    rows: list[SampleRowT] = []
    for number, line in enumerate(_read_text(path, "samples.jsonl").splitlines(), start=1):
        if not line.strip():
            continue
        row = _parse(line, path, "samples.jsonl", number)
        if not isinstance(row, dict) or any(k not in row for k in _SAMPLE_KEYS):
            raise ResultsError(f"{path}:{number}: not a sample row")
        if not _number(row["value"]):
            raise ResultsError(f"{path}:{number}: value is not a number")
        if run_id is not None and row.get("run_id") != run_id:
            raise ResultsError(
                f"{path}:{number}: belongs to another run (run id {row.get('run_id')!r}; "
                f"results.json has {run_id!r}): the run was interrupted between writing its "
                "outputs; rerun it (its steps come from the store)"
            )
        rows.append(row)  # type: ignore[arg-type]
    return rows
