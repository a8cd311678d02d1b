"""The results contract: what a run writes, and how to read it back.

Each run writes to its output directory:

- ``results.json``: ``{"schema_version", "run_id", "suite", "environment", "models",
  "metrics", "comparisons", "scaling", "analyses", "gates", "failures", "steps",
  "evaluators"}``; every table is a list of flat rows that loads into pandas in one line:
  ``pd.DataFrame(json.load(f)["metrics"])``;
- ``samples.jsonl``: one :class:`audit.plugins.Sample` per line plus ``run_id``, ``model`` and
  ``evaluator``; ``run_id`` ties the two files together (:func:`load_samples` checks it);
- ``index.html``: the report.

Every reader of results (report, gallery, CI outputs, release comparison) reads them through
the typed model :class:`Results` (:func:`load_results`, :func:`parse_results`) and
:func:`load_samples`: anything that is not a run's output is a :class:`ResultsError` naming the
field at fault. The ``*RowT`` TypedDicts are the rows as the writers build them in memory; the
models below are what readers get (``tests/test_results.py`` keeps their columns equal).

The row shapes are the contract later issues and CI depend on; add columns, never rename.
"""

from __future__ import annotations

import copy
import json
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NotRequired, TypedDict

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from audit.errors import EXIT_CRASHED, EXIT_GATE_FAILED, EXIT_OK, InputError

SCHEMA_VERSION = 2
"""2: plug-in analysis tables moved into ``analyses`` (version 1 files are still read)."""


StepStatus = Literal["ok", "failed", "skipped", "pending"]
"""How a step (or the model it built) ended; ``pending`` only while a run is in progress."""


class ModelRowT(TypedDict):
    name: str
    key: str
    parents: list[str]
    source: str | None
    intervention: str | None
    params: dict[str, Any]
    status: StepStatus
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
    mode: str  # "estimate" | "significant" | "non_inferiority" | "superiority"
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
    status: StepStatus
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
    endpoint: NotRequired[dict[str, Any]]  # a model behind an endpoint: its request and reply


class ResultsError(InputError, ValueError):
    """A results file that cannot be read as one (a command reading it exits 2)."""


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


# --------------------------------------------------------------------------- the typed model

Verdict = Literal["pass", "fail", "error"]
"""A run's verdict; see :func:`verdict_of`."""

VERDICTS: dict[int, Verdict] = {EXIT_OK: "pass", EXIT_GATE_FAILED: "fail", EXIT_CRASHED: "error"}


def exit_code(gates: Sequence[Mapping[str, Any]], failures: Sequence[object]) -> int:
    """The one verdict rule: 3 if a step crashed, else 1 if a gate failed, else 0."""
    if failures:
        return EXIT_CRASHED
    return EXIT_GATE_FAILED if any(not g.get("passed") for g in gates) else EXIT_OK


def verdict_of(code: int) -> Verdict:
    """``pass`` / ``fail`` / ``error`` for an exit code of :func:`exit_code`."""
    return VERDICTS.get(code, "error")


Number = Annotated[float, Field(strict=True)]
"""A JSON number (ints are accepted; booleans and numeric strings are not)."""


class Row(BaseModel):
    """A table row of results.json. Columns may be added (later versions, plug-ins), never
    renamed: unknown columns are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)


class ModelRow(Row):
    """A model of the suite: where it came from and how its step ended."""

    name: str
    """The model's name in the suite (a sweep member: ``base[param=value]``)."""
    key: str = ""
    """Its step key in the store (content address of its inputs)."""
    parents: list[str] = []
    """The models it was made from (``from`` / ``models``), in order."""
    source: str | None = None
    """``hf:`` / ``path:`` / ``organism:`` source of a loaded model."""
    intervention: str | None = None
    """The intervention plug-in kind that made it."""
    params: dict[str, Any] = {}
    """The intervention's resolved parameters."""
    status: StepStatus = "ok"
    """How its step ended."""
    training: dict[str, Any] | None = None
    """What an intervention reported (steps, tokens, final loss, ...)."""
    sweep: dict[str, Any] | None = None
    """``{"base", "param", "value"}`` for a member of a sweep."""


class MetricRow(Row):
    """One value of one metric of one evaluator on one model and slice."""

    model: str
    evaluator: str
    """The evaluator's name in the suite."""
    metric: str
    slice: str
    """``all`` or a slice of the data (a category, a task)."""
    value: Number
    ci_low: Number | None = None
    """Lower end of the 95% interval (``None``: no interval)."""
    ci_high: Number | None = None
    n: int = 0
    """Items the value is computed over."""
    higher_is_better: bool = True


class ComparisonRow(Row):
    """A model against a baseline on one metric and slice, paired on the same items."""

    model: str
    baseline: str
    relation: str = "parent"
    """Why the pair is compared: ``parent`` | ``compare`` | ``reference`` | ``gate``
    (``release`` in ``audit compare``)."""
    evaluator: str = ""
    metric: str = ""
    slice: str = "all"
    before: Number | None = None
    after: Number | None = None
    delta: Number | None = None
    """``after - before``."""
    ci_low: Number | None = None
    ci_high: Number | None = None
    n: int = 0
    """Paired items."""
    p_value: Number | None = None
    test: str = "unpaired"
    """``mcnemar_exact`` | ``paired_bootstrap`` | ``unpaired``."""
    higher_is_better: bool = True


class GateRow(Row):
    """One release gate checked on one model (and baseline)."""

    name: str = ""
    rule: str = ""
    """The rule in words (``max_drop 0.05``)."""
    model: str = ""
    baseline: str | None = None
    passed: bool = False
    observed: Number | None = None
    threshold: Number | None = None
    detail: str = ""
    mode: str = "estimate"
    """``estimate`` | ``significant`` | ``non_inferiority`` | ``superiority``."""
    p_value: Number | None = None
    p_adjusted: Number | None = None
    """After the run's multiple-comparison correction."""
    n_needed: int | None = None
    """Paired items for the 95% interval to fit the margin (relative rules)."""


class FailureRow(Row):
    """A step that raised."""

    step: str = ""
    error: str = ""
    traceback: str = ""


class StepRow(Row):
    """How one step of the plan went."""

    step: str = ""
    kind: str = ""
    """``model`` | ``eval``."""
    key: str = ""
    status: StepStatus = "ok"
    cached: bool = False
    duration_s: Number = 0.0


class MetricInfoRow(Row):
    """A metric an evaluator declares (:class:`audit.plugins.MetricSpec`)."""

    name: str = ""
    higher_is_better: bool = True
    description: str = ""
    kind: str = "rate"
    """``rate`` (0/1 items) | ``mean`` (real-valued items)."""
    headline: bool = True


class EvaluatorRow(Row):
    """An evaluator of the suite, with its plug-in kind, version and declared metrics."""

    name: str = ""
    kind: str = ""
    version: str = ""
    params: dict[str, Any] | None = None
    metrics: list[MetricInfoRow] = []


class SuiteInfo(Row):
    """The suite that ran."""

    name: str = ""
    title: str = ""
    path: str = ""
    hash: str = ""
    """SHA-256 of the suite file."""
    text: str | None = None
    """The suite file as written."""
    reference: str | None = None
    parsed: dict[str, Any] = {}
    """The validated suite, as JSON."""


TableName = Literal["models", "evaluators", "metrics", "comparisons", "gates", "failures", "steps"]


class Results(BaseModel):
    """A run's ``results.json``: the contract every reader (report, gallery, CI outputs,
    release comparison) reads through :func:`parse_results`.

    Version 2 moved plug-in analysis tables (``succession``, ``forgetting``) into
    :attr:`analyses`; version-1 files are read with them moved there.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    schema_version: int = SCHEMA_VERSION
    run_id: str | None = None
    """Random id written into results.json and every samples.jsonl row (they must agree)."""
    verdict: Verdict | None = None
    """``pass`` / ``fail`` / ``error``; when absent it is derived (:meth:`verdict_text`)."""
    exit_code: int | None = None
    suite: SuiteInfo = SuiteInfo()
    environment: dict[str, Any] = {}
    """Versions and settings (audit, python, torch, ..., seed, device, started/finished_at)."""
    models: list[ModelRow] = []
    evaluators: list[EvaluatorRow] = []
    metrics: list[MetricRow] = []
    comparisons: list[ComparisonRow] = []
    pooled: dict[str, list[dict[str, Any]]] = {}
    """With ``[suite] seeds``: ``metrics`` and ``comparisons`` of the replicated models pooled
    over their seeds (:mod:`audit.analysis.pooled`), each row with its ``per_seed`` rows."""
    tradeoffs: list[dict[str, Any]] = []
    """Gain-vs-cost tables of ``[[tradeoffs]]`` (:mod:`audit.analysis.tradeoffs`)."""
    scaling: list[dict[str, Any]] = []
    """Fitted scaling laws (:mod:`audit.analysis.scaling`)."""
    analyses: dict[str, list[dict[str, Any]]] = {}
    """Tables of evaluators' cross-model analyses, by table name (e.g. ``succession`` of the
    ``backdoor`` evaluator, ``forgetting`` of the ``forgetting`` evaluator)."""
    gates: list[GateRow] = []
    failures: list[FailureRow] = []
    steps: list[StepRow] = []

    def code(self) -> int:
        """The exit code: the run's own, else derived by :func:`exit_code`."""
        if self.exit_code is not None:
            return self.exit_code
        if self.verdict is not None:
            return {v: k for k, v in VERDICTS.items()}[self.verdict]
        return exit_code(self.rows("gates"), self.failures)

    def verdict_text(self) -> str:
        """``PASS`` / ``FAIL`` / ``ERROR``: the run's own verdict, else derived."""
        if self.verdict is not None:
            return self.verdict.upper()
        return verdict_of(exit_code(self.rows("gates"), self.failures)).upper()

    def rows(self, table: TableName) -> list[dict[str, Any]]:
        """A table's rows as plain dicts (checked columns and any added ones)."""
        return [r.model_dump() for r in getattr(self, table)]

    def table(self, name: str) -> list[dict[str, Any]]:
        """An analysis table by name (empty when the run has none)."""
        return self.analyses.get(name, [])


ANALYSIS_TABLES_V1 = ("succession", "forgetting")
"""Analysis tables version 1 kept at the top level of results.json."""


def parse_results(data: Any, label: str, *, written: bool = False) -> Results:
    """``data`` as :class:`Results`, or :class:`ResultsError` naming the first wrong field.

    ``written``: ``data`` must be a results.json written by ``audit run`` (it has
    ``schema_version``, ``suite`` and ``metrics``); else missing parts take their defaults (a
    partial results dict, as tests and plug-in authors write them).
    """
    if isinstance(data, Results):
        return data
    if not isinstance(data, Mapping):
        raise ResultsError(f"{label}: not a results.json (a JSON object was expected)")
    if written:
        missing = [k for k in ("schema_version", "suite", "metrics") if k not in data]
        if missing:
            raise ResultsError(
                f"{label}: not a results.json written by `audit run` (missing {', '.join(missing)})"
            )
    data = dict(data)
    version = data.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise ResultsError(
            f"{label}: results schema {version} is newer than this audit reads "
            f"({SCHEMA_VERSION}); upgrade audit"
        )
    if "analyses" not in data:  # version 1: the tables sat at the top level
        data["analyses"] = {k: data.pop(k) for k in ANALYSIS_TABLES_V1 if k in data}
    try:
        return Results.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        raise ResultsError(f"{label}: {where.lstrip('.') or 'results'}: {first['msg']}") from None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def load_results(path: str | Path) -> Results:
    """Read and check a ``results.json`` written by a run (:class:`ResultsError` if not one)."""
    return parse_results(read_json_file(path, "results.json"), str(path), written=True)


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


def comparable(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` less what legitimately differs between two runs of one suite.

    Dropped: ``run_id``, ``environment.started_at`` and ``environment.finished_at`` (wall-clock
    times) and,
    for every step, ``duration_s`` (how long it took) and ``cached`` (whether the store already
    held it: a rerun after a crash reuses what the killed run finished). Everything else —
    versions, seed, step keys and statuses, metrics, intervals, comparisons, gates, training
    info, the suite text and its hash — must be equal, floats to the last bit.
    """
    out = copy.deepcopy(results)
    out.pop("run_id")  # new for every run, by design
    for stamp in ("started_at", "finished_at"):
        out["environment"].pop(stamp)
    for step in out["steps"]:
        step.pop("duration_s")
        step.pop("cached")
    return out
