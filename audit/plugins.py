"""The plug-in protocols and the data they exchange with the runner.

Three kinds of plug-in carry the harness: an *intervention* turns parent models into a new
model, an *evaluator* turns a model into metric rows and per-item samples, a *judge* turns a
model's text into a judgment. Each plug-in is a class with declarative metadata:

- ``name``: the name suites use (``intervention = "lora"``, ``kind = "refusal"``);
- ``version``: the code version, part of every cache key the plug-in produces; bump it when a
  change alters results;
- ``Params``: a pydantic model of its parameters, validated like the rest of the suite;
- evaluators only: ``metrics``, the :class:`MetricSpec` of every metric they produce, so the
  report and the gates need no per-plug-in code; and optionally the hooks of
  :class:`EvaluatorHooks` (a suite check, a cross-model analysis, report sections, figures).

Plug-in modules import torch and transformers inside methods, never at module level, so that
``audit validate`` and ``audit list`` stay fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    ClassVar,
    Literal,
    Protocol,
    cast,
    runtime_checkable,
)

from pydantic import BaseModel, ConfigDict

from audit.registry import PluginError

if TYPE_CHECKING:
    from audit.models.handle import ModelHandle


class ModelRefMarker:
    """Marks a parameter whose value names a model of the suite (adds a dependency edge)."""


ModelRef = Annotated[str, ModelRefMarker()]
"""A parameter naming another model of the suite, e.g. ``base = "aligned"`` in a merge."""


@dataclass(frozen=True)
class DataRefMarker:
    """Marks a parameter naming a data set; ``shape`` is the record model its lines must match.

    ``audit validate`` reads every user file (``path:``) such a parameter names, so a malformed
    line is reported before anything runs.
    """

    shape: str  # "pair" | "probe"


PairData = Annotated[str, DataRefMarker("pair")]
"""A data set of prompt/response pairs (``path:FILE.jsonl``, ``organism:NAME``, shipped name)."""

ProbeData = Annotated[str, DataRefMarker("probe")]
SafetyData = Annotated[str, DataRefMarker("safety")]
"""Prompt/response pairs, or preference records (``prompt``, ``chosen``, ``rejected``)."""
"""A data set of labelled refusal probes."""


class Params(BaseModel):
    """Base of every plug-in's parameter model.

    Unknown keys are errors; numbers are strict (``true`` or ``"5"`` is no number; an integer
    is a fine float) and must be finite (``lr = inf`` or ``nan`` is refused). Consistency
    between parameters is checked with pydantic ``model_validator`` functions on the plug-in's
    ``Params``: a ``ValueError`` raised there is reported by ``audit validate`` at the
    plug-in's table, like any other invalid parameter.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


@dataclass(frozen=True)
class MetricSpec:
    """What an evaluator declares about one metric it produces.

    ``kind`` chooses the statistics: ``rate`` metrics are means of per-item 0/1 values (Wilson
    intervals, exact McNemar test when paired); ``mean`` metrics are means of per-item reals
    (bootstrap intervals, paired bootstrap when paired).
    """

    name: str
    higher_is_better: bool
    description: str
    kind: Literal["rate", "mean"] = "rate"
    headline: bool = True


@dataclass(frozen=True)
class MetricRow:
    """One value of one metric on one slice of the data, with its interval and sample size."""

    metric: str
    value: float
    ci_low: float | None
    ci_high: float | None
    n: int
    slice: str = "all"


@dataclass(frozen=True)
class Sample:
    """One judged item: what went in, what came out, and its contribution to a metric.

    ``value`` is the item's value for ``metric`` (0/1 for a rate metric), which is what paired
    before/after comparisons use; items are paired across models on ``(metric, item_id)``.
    """

    metric: str
    item_id: str
    input: str
    output: str
    value: float
    slice: str = "all"
    judgment: str | None = None
    endpoint: dict[str, Any] | None = None
    """For a model served by an OpenAI-compatible endpoint: the request sent for ``input`` and
    what the server said besides the text (finish reason, token usage, the model it answered
    as); the runner fills it in (:meth:`audit.models.handle.ModelHandle.take_exchanges`)."""


@dataclass
class EvalResult:
    """What an evaluator returns: metric rows (every slice) and the samples behind them."""

    metrics: list[MetricRow] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)


@dataclass
class RunContext:
    """What a running step may use besides its inputs.

    ``work_dir`` is an empty directory owned by the step; whatever an intervention writes there
    (an adapter directory, training logs) is kept in the store with the step's result.
    ``suite_dir`` is where relative paths in the suite resolve. ``device`` is the one torch
    device the step runs on: the run's, the first of a ``--device`` list, or ``cpu`` for an
    intervention whose ``devices`` hook says so (:func:`placement`). ``progress`` reports
    progress on long work: ``progress(description, completed, total)``.
    """

    seed: int
    suite_dir: Path
    work_dir: Path
    device: str = "cpu"
    progress: Callable[[str, int, int], None] = lambda description, completed, total: None
    models: Mapping[str, ModelHandle] = field(default_factory=dict)
    reference: ModelHandle | None = None
    cache: Callable[[str, Callable[[Path], None]], Path] | None = None

    def cached(self, key: str, build: Callable[[Path], None]) -> Path:
        """A directory of derived data (e.g. a Fisher) stored under ``key``, built once.

        ``build(directory)`` writes the files; later calls with the same key (in this run or
        another) return the stored directory. Without a store (``cache`` unset) it builds into
        ``work_dir/cache/<key>``. The key must hash everything the data depends on.
        """
        if self.cache is not None:
            return self.cache(key, build)
        directory = self.work_dir / "cache" / key
        if not directory.exists():
            directory.mkdir(parents=True)
            build(directory)
        return directory


@dataclass
class TrainedModel:
    """An intervention's output: an in-memory model and its tokenizer, saved by the runner.

    ``info`` is JSON-serialisable facts about how it was made, kept with the model and shown
    in results.json (``models[].training``). Fine-tuning interventions report ``tokens``, the
    number of tokens trained on, which scaling-law fits use as the amount of fine-tuning.
    """

    model: Any
    tokenizer: Any
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Intervention(Protocol):
    """Model(s) in, model out. ``inputs`` maps each referenced model's suite name to its handle."""

    name: ClassVar[str]
    version: ClassVar[str]
    Params: ClassVar[type[Params]]

    def __init__(self, params: Any) -> None: ...

    def apply(self, inputs: Mapping[str, ModelHandle], ctx: RunContext) -> TrainedModel: ...


@runtime_checkable
class Evaluator(Protocol):
    """Model in, metric rows and samples out."""

    name: ClassVar[str]
    version: ClassVar[str]
    Params: ClassVar[type[Params]]
    metrics: ClassVar[Sequence[MetricSpec]]

    def __init__(self, params: Any) -> None: ...

    def evaluate(self, model: ModelHandle, ctx: RunContext) -> EvalResult: ...


# --- what an evaluator may add: a suite check, a cross-model analysis, a report section ----------

SuiteProblem = tuple[tuple[str | int, ...], str]
"""A problem an evaluator's suite check finds: where, below the evaluator's table (e.g.
``("lineages", 0)``), and what is wrong. ``audit validate`` reports it at that line."""


@dataclass(frozen=True)
class SuiteView:
    """What an evaluator's suite check sees of the suite: every model's parents, in suite order."""

    parents: Mapping[str, Sequence[str]]
    replicas: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """With ``[suite] seeds``: each replicated model's name as written -> its replicas
    (``NAME.seedS``, in seed order), for parameters that name models as written."""


@dataclass(frozen=True)
class RunData:
    """What a cross-model analysis reads once every step has run: the rows results.json holds
    (``models``, ``metrics``), the samples, and the suite's evaluators of the plug-in's kind."""

    evaluators: Mapping[str, Params]
    """This kind's evaluators in the suite: name -> validated parameters."""
    models: Sequence[Mapping[str, Any]]
    metrics: Sequence[Mapping[str, Any]]
    samples: Sequence[Mapping[str, Any]]
    seed: int
    reference: str | None = None
    replicas: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """As :attr:`SuiteView.replicas`."""


@dataclass(frozen=True)
class ReportSection:
    """A section an evaluator adds to the run page, after the evaluators' own sections.

    ``body`` is HTML (:class:`markupsafe.Markup`) built only from escaped pieces: the report's
    table helpers (:func:`audit.report.format.html_table`) and ``Markup(...).format(...)``,
    which escapes its arguments.
    """

    id: str
    """The anchor (``#id``) and the nav entry's target."""
    title: str
    note: str
    """One paragraph saying how to read the section (plain text)."""
    body: Any


class EvaluatorHooks(Protocol):
    """Optional class methods an evaluator may define; the spine calls them, never naming a
    kind (README "Adding a plug-in" walks through one):

    - ``check_suite(params, suite: SuiteView) -> list[SuiteProblem]``: extra checks of the
      evaluator's table at ``audit validate`` (e.g. that ``lineages`` name chains of models);
    - ``analyze(run: RunData) -> dict[str, list[dict]]``: tables computed across models after
      the run (e.g. backdoor succession), written to results.json ``analyses[TABLE]``;
    - ``report_sections(results) -> list[ReportSection]``: sections of the run page drawn from
      those tables (``results`` is :class:`audit.results.Results`);
    - ``figures(results, evaluator) -> list[Figure]``: charts in the evaluator's own section
      (:class:`audit.report.figures.Figure`);
    - ``needs_weights(params) -> str | None``: why the evaluator, with these parameters, needs
      the evaluated model's weights (log-likelihoods, hidden states, lm-eval), or ``None`` when
      it reaches the model through :meth:`~audit.models.handle.ModelHandle.generate` only, so
      that it can evaluate a model served by an OpenAI-compatible endpoint (``openai:``
      source). An evaluator without it is taken to need weights (:func:`weights_needed`).
      Judges may declare it too.
    - ``resources(params) -> dict``: what one step of it asks a cluster executor for
      (``num_cpus``, ``num_gpus``, ``memory`` in bytes; :mod:`audit.executors.resources`),
      which a table's ``resources`` overrides. Without it: one CPU, and one GPU when the run's
      device is one.
    """

    @classmethod
    def check_suite(cls, params: Any, suite: SuiteView) -> list[SuiteProblem]: ...

    @classmethod
    def analyze(cls, run: RunData) -> dict[str, list[dict[str, Any]]]: ...

    @classmethod
    def report_sections(cls, results: Any) -> list[ReportSection]: ...

    @classmethod
    def figures(cls, results: Any, evaluator: str) -> list[Any]: ...

    @classmethod
    def needs_weights(cls, params: Any) -> str | None: ...

    @classmethod
    def resources(cls, params: Any) -> dict[str, float]: ...


HOOKS = ("check_suite", "analyze", "report_sections", "figures", "needs_weights", "resources")
"""The optional evaluator class methods of :class:`EvaluatorHooks`."""


class InterventionHooks(Protocol):
    """Optional class methods an intervention may define:

    - ``controls(name, parents, params) -> dict[str, dict]``: the matched controls of the model
      ``name`` (built by this intervention from ``parents`` with the raw table ``params``) that
      a suite asks for with ``controls = true``: a suffix (``control_norm``) -> the control's
      ``[models]`` table (its ``intervention`` and parameters). The suite adds each as the model
      ``NAME.SUFFIX``, evaluated wherever ``NAME`` is and compared with it.
    - ``devices(params) -> Placement``: where the intervention with these parameters runs
      (:data:`PLACEMENTS`); :attr:`RunContext.device` is that device. Every built-in declares
      it; one that does not is taken to run on a single device (:func:`placement`).
    - ``resources(params) -> dict``: as the evaluator hook of that name; an intervention that
      runs on the CPU (``devices``) is given no GPU by default.
    """

    @classmethod
    def controls(
        cls, name: str, parents: Sequence[str], params: Mapping[str, Any]
    ) -> dict[str, dict[str, Any]]: ...

    @classmethod
    def devices(cls, params: Any) -> Placement: ...

    @classmethod
    def resources(cls, params: Any) -> dict[str, float]: ...


INTERVENTION_HOOKS = ("controls", "devices", "resources")
"""The optional intervention class methods of :class:`InterventionHooks`."""

Placement = Literal["single", "cpu"]
"""Where an intervention runs (its ``devices`` hook)."""

PLACEMENTS: dict[str, str] = {
    "single": "one device: the run's --device, or the first of a --device list",
    "cpu": "the CPU, whatever --device says, e.g. tensor arithmetic streamed from disk",
}
"""Every :data:`Placement` and what it means. No intervention spreads a model over several
devices or trains data-parallel (DDP/FSDP): a model that must be trained so is trained outside
audit (``accelerate launch``) and audited as a ``path:`` checkpoint."""


def hook(cls: type, name: str) -> Callable[..., Any] | None:
    """The plug-in class's hook ``name`` (one of :data:`HOOKS` or :data:`INTERVENTION_HOOKS`),
    or ``None``."""
    found = getattr(cls, name, None)
    return found if callable(found) else None


def weights_needed(cls: type, params: Any) -> str | None:
    """Why the evaluator or judge ``cls`` with ``params`` needs a model's weights (its
    ``needs_weights`` hook), or ``None`` when text suffices. A plug-in that does not declare it
    is taken to need them: it may read ``model.model``, which a model behind an endpoint lacks.
    """
    declared = hook(cls, "needs_weights")
    if declared is None:
        name = getattr(cls, "name", cls.__name__)
        return (
            f"{name!r} does not declare that it works from generated text alone (a "
            "needs_weights class method returning None), so it may read the model's weights"
        )
    reason: str | None = declared(params)
    return reason


def placement(cls: type, params: Any) -> Placement:
    """Where the intervention ``cls`` with ``params`` runs (its ``devices`` hook); ``"single"``
    when it declares none, which is what :attr:`RunContext.device` gives it anyway."""
    declared = hook(cls, "devices")
    if declared is None:
        return "single"
    where = declared(params)
    if where not in PLACEMENTS:
        name = getattr(cls, "name", cls.__name__)
        supported = " or ".join(f"{k!r} ({v})" for k, v in PLACEMENTS.items())
        raise PluginError(
            f"intervention {name!r} declares devices {where!r}, which audit cannot give it: an "
            f"intervention runs on {supported}. DDP/FSDP training is not run by audit: train "
            "with `accelerate launch` yourself and audit the result as a path: checkpoint"
        )
    return cast("Placement", where)


@runtime_checkable
class Judge(Protocol):
    """Texts in, one judgment per text out (``"refusal"``, ``"compliance"`` or ``"degenerate"``
    — no answer at all — for refusal judges).

    ``model`` is the model that wrote the outputs, for judges that score with it; such a judge
    says so with a ``needs_weights(params)`` class method (see :func:`weights_needed`).
    """

    name: ClassVar[str]
    version: ClassVar[str]
    Params: ClassVar[type[Params]]

    def __init__(self, params: Any) -> None: ...

    def judge(
        self, prompts: Sequence[str], outputs: Sequence[str], model: ModelHandle | None = None
    ) -> list[str]: ...
