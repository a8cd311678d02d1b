"""suite.toml: the pydantic models of a suite file, its name rules and its JSON schema.

Structure: ``[suite]``, ``[models.NAME]`` (a ``source`` to load, or ``from``/``models`` +
``intervention`` + its parameters), ``[evaluators.NAME]`` (``kind`` + its parameters, optional
``models``), ``[[gates]]``, ``[[scaling]]`` and ``[report]``. :func:`audit.suite.checks.load_suite`
parses, expands parameter sweeps (:mod:`audit.suite.sweeps`), validates against the plug-ins'
declared parameters, checks references and cycles, and raises
:class:`~audit.suite.checks.SuiteError` with every problem found.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from audit import registry
from audit.registry import PluginError

SOURCE_SCHEMES = ("hf:", "path:", "organism:", "gguf:", "openai:")
ENDPOINT_KEYS = ("api_key_env", "max_concurrency", "timeout_s", "max_retries")
"""The keys of a model table that apply to an ``openai:`` source only."""
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
EVALUATOR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")  # "EVALUATOR.METRIC" splits at '.'
MAX_NAME_CHARS = 100
"""The longest model or evaluator name (names appear in every table, chart and file of a run)."""


class Strict(BaseModel):
    """Sections with a fixed set of keys; numbers strict (``seed = true`` is no number)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


def _no_nul(value: str) -> str:
    if "\0" in value:
        raise ValueError("a path cannot contain a NUL character")
    return value


_MAX_NAME_BYTES = 120  # "compare-<old>-vs-<new>" must stay a valid file name (255 bytes)


def _suite_name(value: str) -> str:
    """A suite name is a directory name (reports/<name>/): one path component, printable."""
    if not value.strip():
        raise ValueError("the suite name cannot be empty")
    if "/" in value or "\\" in value or value in (".", ".."):
        raise ValueError("the suite name is a directory name: no '/', '\\', '.' or '..'")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError("the suite name cannot contain control characters")
    if len(value.encode("utf-8")) > _MAX_NAME_BYTES:
        raise ValueError(f"the suite name is longer than {_MAX_NAME_BYTES} bytes")
    return value


class SuiteMeta(Strict):
    """``[suite]``: the run's name, seed, reference model and cache location."""

    name: Annotated[str, AfterValidator(_suite_name)] = Field(
        description="Name of the suite; the default output dir is reports/<name>/."
    )
    seed: int = Field(
        0, ge=0, lt=2**32, description="Seed for every random procedure of the run (0 … 2³²−1)."
    )
    seeds: Annotated[list[Annotated[int, Field(ge=0, lt=2**32)]], Field(min_length=1)] | None = (
        Field(
            None,
            description="Replicate every intervention model once per seed (NAME.seedS); "
            "comparisons are reported per seed and pooled across seeds, and gates decide on "
            "the pooled estimate.",
        )
    )
    reference: str | None = Field(
        None,
        description="The model every other model is compared with (default: the first "
        "model with a `source`).",
    )
    cache_dir: Annotated[str, AfterValidator(_no_nul)] = Field(
        ".audit-cache", description="The store, relative to the suite file."
    )
    description: str = ""
    backend: Literal["hf", "vllm"] = Field(
        "hf",
        description='How evaluators that generate do it unless their table says otherwise: "hf" '
        '(transformers generate) or "vllm" (vLLM in process; needs vLLM and a GPU).',
    )
    correction: Literal["none", "holm", "bh"] = Field(
        "none",
        description='Multiplicity control over the p-values of the run\'s mode = "significant" '
        'gates: "holm" (family-wise error), "bh" (Benjamini-Hochberg false discovery rate) '
        'or "none".',
    )

    @model_validator(mode="after")
    def _one_seed_setting(self) -> SuiteMeta:
        if self.seeds is not None:
            if "seed" in self.model_fields_set:
                raise ValueError("give `seed` or `seeds`, not both")
            dups = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
            if dups:
                raise ValueError(f"seeds are listed twice: {', '.join(map(str, dups))}")
        return self


def _size(value: int | str) -> int:
    from audit.resources import parse_size

    if isinstance(value, bool):
        raise ValueError("a memory size is a number of bytes or a size such as '8G'")
    return value if isinstance(value, int) else parse_size(value)


class ResourceSpec(Strict):
    """``resources = {...}`` of a model or evaluator table: what one of its steps asks a cluster
    executor for (``--executor ray``), overriding the plug-in's declaration
    (:func:`audit.executors.resources.step_resources`). The local executor ignores it."""

    num_cpus: Annotated[float, Field(strict=False, ge=0, le=4096, allow_inf_nan=False)] | None = (
        Field(None, description="CPUs the step holds.")
    )
    num_gpus: Annotated[float, Field(strict=False, ge=0, le=64, allow_inf_nan=False)] | None = (
        Field(None, description="GPUs the step holds (fractions share one).")
    )
    memory: Annotated[int | str, AfterValidator(_size)] | None = Field(
        None, description="Memory the step reserves: bytes, or a size such as '16G'."
    )


class ModelSpec(BaseModel):
    """``[models.NAME]``: a loaded checkpoint, or an intervention on other models."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    source: str | None = Field(
        None,
        description='"hf:ID[@REVISION]", "path:DIR", "gguf:FILE.gguf", '
        '"gguf:pkg:PACKAGE/FILE.gguf", "organism:NAME" or "openai:MODEL@BASE_URL" (an '
        "OpenAI-compatible endpoint: text only, no weights).",
    )
    from_: str | Annotated[list[str], Field(min_length=1)] | None = Field(
        None, alias="from", description="Parent model(s)."
    )
    models: list[str] | None = Field(
        None, min_length=1, description="Input models (e.g. of a merge)."
    )
    intervention: str | None = Field(None, description="The intervention plug-in to apply.")
    allow_pickle: bool = Field(False, description="Allow pickle weights (weights_only loading).")
    trust_remote_code: bool = Field(False, description="Allow the checkpoint's custom code.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        None,
        description="Load a checkpoint's weights in this dtype (default: as transformers "
        "loads it; 'auto': the dtype the checkpoint was saved in). Models built from it inherit "
        "the weights as loaded.",
    )
    device_map: str | None = Field(
        None,
        description="Place a checkpoint across devices with accelerate (e.g. 'auto'); "
        "overrides --device for this model.",
    )
    api_key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = Field(
        None,
        description="openai: sources: the environment variable holding the API key, sent as a "
        "bearer token and never written anywhere (default: no Authorization header).",
    )
    max_concurrency: Annotated[int, Field(strict=True, ge=1, le=256)] | None = Field(
        None, description="openai: sources: requests in flight at most (default 4)."
    )
    timeout_s: Annotated[float, Field(strict=True, gt=0, le=3600, allow_inf_nan=False)] | None = (
        Field(None, description="openai: sources: seconds to wait for a reply (default 60).")
    )
    max_retries: Annotated[int, Field(strict=True, ge=0, le=20)] | None = Field(
        None,
        description="openai: sources: retries of a request after a connection error, a timeout, "
        "HTTP 429 or 5xx, with exponential backoff (default 4).",
    )
    resources: ResourceSpec | None = Field(
        None,
        description="What building this model asks a cluster executor for (num_cpus, num_gpus, "
        "memory); default: the intervention's declaration.",
    )
    compare: list[str] | None = Field(
        None,
        description="Other models to compare this one with (paired, in the report and for "
        "gates), besides its parents and the reference.",
    )
    controls: bool = Field(
        False,
        description="Add the intervention's matched controls (e.g. a merge's update shrunk to "
        "this model's norm, and masked at random to its keep rate) as models NAME.SUFFIX, "
        "evaluated wherever this model is and compared with it.",
    )

    @property
    def params(self) -> dict[str, Any]:
        """The intervention's parameters: every key that is not a field of this table."""
        return dict(self.model_extra or {})

    @property
    def has_weights(self) -> bool:
        """Whether the model has weights: every model but one served by an endpoint."""
        return not (self.source or "").startswith("openai:")

    @property
    def parents(self) -> list[str]:
        """The models named by ``from`` and ``models``, in order, without repeats."""
        names = [self.from_] if isinstance(self.from_, str) else list(self.from_ or [])
        return list(dict.fromkeys([*names, *(self.models or [])]))


class EvaluatorSpec(BaseModel):
    """``[evaluators.NAME]``: an evaluator plug-in (``kind``) and its parameters."""

    model_config = ConfigDict(extra="allow")

    kind: str = Field(description="The evaluator plug-in.")
    models: list[str] | None = Field(
        None, description="Model names or glob patterns to evaluate (default: all)."
    )
    resources: ResourceSpec | None = Field(
        None,
        description="What each of this evaluator's steps asks a cluster executor for "
        "(num_cpus, num_gpus, memory); default: the evaluator's declaration.",
    )

    @property
    def params(self) -> dict[str, Any]:
        """The evaluator's parameters."""
        return dict(self.model_extra or {})


GATE_MODES = ("estimate", "significant", "non_inferiority", "superiority")
"""How a gate decides (``mode``); see :func:`audit.analysis.gates.relative_gate` and README
"Gates"."""


class GateSpec(Strict):
    """``[[gates]]``: a release rule on one metric. Exactly one of min/max/max_drop/max_rise.

    ``mode`` says how the rule is decided: ``estimate`` (default) compares the point estimate
    with the threshold; ``significant`` (also ``significant = true``) fires only when the
    change exceeds the threshold *and* the paired test rejects "no change" at ``alpha``;
    ``non_inferiority`` passes only when the worst end of the 95% interval (of the change for
    max_drop/max_rise, of the value for min/max) lies within the threshold; ``superiority``
    only when it lies strictly inside it (``max_drop = 0``: the model is shown better, not just
    no worse; an interval of exactly [0, 0] does not pass).
    """

    name: str | None = None
    metric: str = Field(description='"EVALUATOR.METRIC", e.g. "drift.refusal_rate_unsafe".')
    slice: str = "all"
    models: list[str] = Field(default_factory=lambda: ["*"], description="Names or globs.")
    vs: str = Field(
        "reference", description='Baseline for max_drop/max_rise: "reference", "parent" or a name.'
    )
    min: float | None = Field(None, allow_inf_nan=False)
    max: float | None = Field(None, allow_inf_nan=False)
    max_drop: float | None = Field(None, allow_inf_nan=False)
    max_rise: float | None = Field(None, allow_inf_nan=False)
    mode: Literal["estimate", "significant", "non_inferiority", "superiority"] | None = Field(
        None,
        description='"estimate" (point estimate vs threshold, the default), "significant" '
        '(fire only when the paired test also rejects at alpha), "non_inferiority" (pass only '
        'when the worst end of the 95% interval is within the threshold) or "superiority" '
        "(pass only when it is strictly inside it).",
    )
    of_gain: bool = Field(
        False,
        description="max_drop/max_rise is a share of the baseline's own change against the "
        "reference model (max_drop = 0.1: keep at least 90% of what the baseline gained).",
    )
    significant: bool = Field(False, description='Same as mode = "significant".')
    alpha: float = Field(0.05, gt=0, lt=1, description='Test level of mode = "significant".')

    @model_validator(mode="after")
    def _one_rule(self) -> GateSpec:
        set_rules = [
            r for r in ("min", "max", "max_drop", "max_rise") if getattr(self, r) is not None
        ]
        if len(set_rules) != 1:
            raise ValueError(
                "a gate needs exactly one of min, max, max_drop, max_rise"
                + (f" (got {', '.join(set_rules)})" if set_rules else "")
            )
        if self.significant and self.mode not in (None, "significant"):
            raise ValueError(f'significant = true contradicts mode = "{self.mode}"')
        if self.decision == "significant" and not self.relative:
            raise ValueError(
                f'mode = "significant" needs max_drop or max_rise (a change to test); '
                f'{set_rules[0]} compares one value: use mode = "non_inferiority" to require '
                "its whole interval within the threshold"
            )
        if self.of_gain and not self.relative:
            raise ValueError("of_gain = true needs max_drop or max_rise (a change to share)")
        if self.of_gain and self.vs in ("reference", "parent"):
            raise ValueError(
                'of_gain = true compares with another fine-tune: vs = "NAME", whose gain over '
                "its parent sets the threshold"
            )
        if self.decision in ("non_inferiority", "superiority") and self.alpha != 0.05:
            raise ValueError(
                f'mode = "{self.decision}" reads the comparison\'s 95% interval (a one-sided '
                'test at 2.5%); alpha applies to mode = "significant" only'
            )
        return self

    @property
    def decision(self) -> str:
        """The resolved ``mode``: ``estimate``, ``significant`` or ``non_inferiority``."""
        return self.mode or ("significant" if self.significant else "estimate")

    @property
    def rule(self) -> tuple[str, float]:
        """The rule's name and threshold."""
        for r in ("min", "max", "max_drop", "max_rise"):
            value = getattr(self, r)
            if value is not None:
                return r, float(value)
        raise AssertionError("validated gate without a rule")

    @property
    def relative(self) -> bool:
        """Whether the rule compares against a baseline model."""
        return self.rule[0] in ("max_drop", "max_rise")


class ScalingSpec(Strict):
    """A forgetting scaling law: for each sweep, the metric's change vs. the parent (drift) is
    fitted as A·D^β + E over D, the number of fine-tuning tokens of each member."""

    name: str | None = Field(None, description="A title for the fit in the report.")
    metric: str = Field(
        description='"EVALUATOR.METRIC" whose drift is fitted, e.g. "drift.refusal_rate_unsafe".'
    )
    slice: str = Field("all", description="The metric's slice, e.g. a probe category.")
    sweeps: list[str] = Field(
        min_length=1,
        description="Base names of the sweeps (the [models.NAME] tables with a list) to fit.",
    )


class TradeoffSpec(Strict):
    """``[[tradeoffs]]``: what each model gained against what it cost, both paired changes
    against its baseline, drawn as a gain-vs-cost chart with the Pareto front marked."""

    name: str | None = Field(None, description="A title for the chart in the report.")
    gain: str = Field(description='"EVALUATOR.METRIC" of the skill the models were trained for.')
    gain_slice: str = Field("all", description="The gain metric's slice (e.g. one task).")
    cost: str = Field(description='"EVALUATOR.METRIC" of what they may lose, e.g. refusals.')
    cost_slice: str = Field("all", description="The cost metric's slice.")
    models: list[str] = Field(
        default_factory=lambda: ["*"], description="Model names or patterns to place."
    )
    vs: str = Field(
        "parent", description='The baseline: "parent" (default), "reference" or a model.'
    )


class ReportSpec(Strict):
    """``[report]``: where and how the report is written."""

    title: str | None = None
    output_dir: Annotated[str, AfterValidator(_no_nul)] | None = Field(
        None, description="Default: reports/<suite name>/."
    )
    max_flipped: int = Field(50, ge=0, description="Flipped samples shown per evaluator.")


class SuiteFile(Strict):
    """The whole suite file."""

    suite: SuiteMeta
    models: dict[str, ModelSpec]
    evaluators: dict[str, EvaluatorSpec] = Field(default_factory=dict)
    gates: list[GateSpec] = Field(default_factory=list)
    scaling: list[ScalingSpec] = Field(default_factory=list)
    tradeoffs: list[TradeoffSpec] = Field(default_factory=list)
    report: ReportSpec = Field(default_factory=ReportSpec)


def json_schema() -> dict[str, Any]:
    """The JSON schema of suite files, each plug-in's parameters linked to its tables.

    A ``[models.NAME]`` table whose ``intervention`` is X (an ``[evaluators.NAME]`` table whose
    ``kind`` is X) is checked against X's parameters: an editor flags an unknown key or a value
    of the wrong type. Each parameter may also be a list of its values (a sweep). Plug-in
    parameter schemas are under ``$defs`` as ``intervention:X`` / ``evaluator:X``.
    """
    schema = SuiteFile.model_json_schema(by_alias=True)
    defs = schema.setdefault("$defs", {})
    tables = (
        ("intervention", registry.interventions, "ModelSpec", "intervention"),
        ("evaluator", registry.evaluators, "EvaluatorSpec", "kind"),
    )
    for kind, reg, table, key in tables:
        own = defs[table].get("properties", {})
        branches = []
        for name in reg.names():
            try:
                params = reg.get(name).Params
            except PluginError:
                continue
            prefix = f"{kind}:{name}"
            sub = params.model_json_schema(
                by_alias=True, ref_template=f"#/$defs/{prefix}:{{model}}"
            )
            for inner, definition in sub.pop("$defs", {}).items():
                defs[f"{prefix}:{inner}"] = definition
            defs[prefix] = sub
            swept = {
                k: {"anyOf": [v, {"type": "array", "items": v}]}
                for k, v in sub.get("properties", {}).items()
            }
            branches.append(
                {
                    "if": {"properties": {key: {"const": name}}, "required": [key]},
                    "then": {
                        "properties": {**own, **swept},
                        "required": sub.get("required", []),
                        "additionalProperties": False,
                    },
                }
            )
        defs[table]["allOf"] = branches
    return schema
