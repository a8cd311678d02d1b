"""suite.toml: pydantic models of a suite, and validation errors that name file, line and key.

Structure: ``[suite]``, ``[models.NAME]`` (a ``source`` to load, or ``from``/``models`` +
``intervention`` + its parameters), ``[evaluators.NAME]`` (``kind`` + its parameters, optional
``models``), ``[[gates]]``, ``[[scaling]]`` and ``[report]``. :func:`load_suite` parses,
expands parameter sweeps, validates against the plug-ins' declared parameters, checks
references and cycles, and raises :class:`SuiteError` with every problem found.

A sweep is a ``[models.NAME]`` table that gives a list of values for one intervention
parameter (``steps = [50, 100, 200]``): it becomes one model per value, ``NAME[steps=50]`` …,
in place of ``NAME``; :attr:`Suite.sweeps` records it under ``NAME``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import sys
import tomllib
import types
import unicodedata
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from audit import registry
from audit.errors import InputError
from audit.plugins import DataRefMarker, ModelRefMarker, Params
from audit.registry import PluginError, did_you_mean
from audit.suite.tomlpos import key_lines, line_of

SOURCE_SCHEMES = ("hf:", "path:", "organism:")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_EVALUATOR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")  # "EVALUATOR.METRIC" splits at '.'
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
    reference: str | None = Field(
        None,
        description="The model every other model is compared with (default: the first "
        "model with a `source`).",
    )
    cache_dir: Annotated[str, AfterValidator(_no_nul)] = Field(
        ".audit-cache", description="The store, relative to the suite file."
    )
    description: str = ""
    correction: Literal["none", "holm", "bh"] = Field(
        "none",
        description='Multiplicity control over the p-values of the run\'s mode = "significant" '
        'gates: "holm" (family-wise error), "bh" (Benjamini-Hochberg false discovery rate) '
        'or "none".',
    )


class ModelSpec(BaseModel):
    """``[models.NAME]``: a loaded checkpoint, or an intervention on other models."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    source: str | None = Field(
        None, description='"hf:ID[@REVISION]", "path:DIR" or "organism:NAME".'
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
    compare: list[str] | None = Field(
        None,
        description="Other models to compare this one with (paired, in the report and for "
        "gates), besides its parents and the reference.",
    )

    @property
    def params(self) -> dict[str, Any]:
        """The intervention's parameters: every key that is not a field of this table."""
        return dict(self.model_extra or {})

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

    @property
    def params(self) -> dict[str, Any]:
        """The evaluator's parameters."""
        return dict(self.model_extra or {})


GATE_MODES = ("estimate", "significant", "non_inferiority")
"""How a gate decides (``mode``); see :func:`audit.analysis.gates.relative_gate` and README
"Gates"."""


class GateSpec(Strict):
    """``[[gates]]``: a release rule on one metric. Exactly one of min/max/max_drop/max_rise.

    ``mode`` says how the rule is decided: ``estimate`` (default) compares the point estimate
    with the threshold; ``significant`` (also ``significant = true``) fires only when the
    change exceeds the threshold *and* the paired test rejects "no change" at ``alpha``;
    ``non_inferiority`` passes only when the worst end of the 95% interval (of the change for
    max_drop/max_rise, of the value for min/max) lies within the threshold.
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
    mode: Literal["estimate", "significant", "non_inferiority"] | None = Field(
        None,
        description='"estimate" (point estimate vs threshold, the default), "significant" '
        '(fire only when the paired test also rejects at alpha) or "non_inferiority" (pass only '
        "when the worst end of the 95% interval is within the threshold).",
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
        if self.decision == "non_inferiority" and self.alpha != 0.05:
            raise ValueError(
                'mode = "non_inferiority" reads the comparison\'s 95% interval (a one-sided '
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
    report: ReportSpec = Field(default_factory=ReportSpec)


@dataclass(frozen=True)
class SuiteIssue:
    """One problem with a suite file."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SuiteError(InputError):
    """A suite that cannot run; ``issues`` lists every problem found."""

    def __init__(self, issues: list[SuiteIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


@dataclass(frozen=True)
class Sweep:
    """A ``[models.BASE]`` table swept over one parameter: one model per value, in order."""

    base: str
    param: str
    values: tuple[Any, ...]
    members: tuple[str, ...]

    def member_with(self, value: Any) -> str | None:
        """The member built with ``value``, if any."""
        return next((m for m, v in zip(self.members, self.values, strict=True) if v == value), None)


def format_value(value: Any) -> str:
    """A sweep value as written in a member's name: ints plainly, floats by repr, strings bare."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def member_name(base: str, param: str, value: Any) -> str:
    """``BASE[PARAM=VALUE]``, the name of one member of a sweep."""
    return f"{base}[{param}={format_value(value)}]"


def _pattern_matches(name: str, pattern: str) -> bool:
    # fnmatch reads "[...]" as a character class; also try the brackets literally, so that
    # "agl[steps=*]" matches every member of the sweep "agl".
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(
        name, pattern.replace("[", "[[]")
    )


def match_models(
    patterns: Iterable[str], names: Iterable[str], sweeps: Mapping[str, Sweep]
) -> list[str]:
    """The models of ``names`` (kept in that order) that any of ``patterns`` selects.

    A pattern that is exactly a model's name selects it; one that is a sweep's base name selects
    every member of the sweep; any other is a glob (``agl*`` matches ``agl[steps=50]``).
    """
    names = list(names)
    exact: set[str] = set()
    globs: list[str] = []
    for p in patterns:
        if p in names:
            exact.add(p)
        elif p in sweeps:
            exact.update(sweeps[p].members)
        else:
            globs.append(p)
    return [n for n in names if n in exact or any(_pattern_matches(n, g) for g in globs)]


@dataclass
class Suite:
    """A validated suite: the parsed file plus each plug-in's validated parameters."""

    file: SuiteFile
    path: Path
    text: str
    model_params: dict[str, Params] = field(default_factory=dict)
    evaluator_params: dict[str, Params] = field(default_factory=dict)
    reference: str = ""
    sweeps: dict[str, Sweep] = field(default_factory=dict)
    compare: dict[str, list[str]] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        """Where relative paths in the suite resolve."""
        return self.path.parent

    @property
    def name(self) -> str:
        return self.file.suite.name

    @property
    def seed(self) -> int:
        return self.file.suite.seed

    @property
    def hash(self) -> str:
        """sha256 of the suite file's text."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def cache_dir(self) -> Path:
        return (self.dir / self.file.suite.cache_dir).resolve()

    def dependencies(self, name: str) -> list[str]:
        """Every model ``name`` is built from: ``from``, ``models`` and model-valued params."""
        spec = self.file.models[name]
        params = self.model_params.get(name)
        refs = model_refs(params) if params is not None else []
        return list(dict.fromkeys([*spec.parents, *refs]))

    def evaluated_models(self, evaluator: str) -> list[str]:
        """The models an evaluator runs on, in suite order."""
        patterns = self.file.evaluators[evaluator].models
        names = list(self.file.models)
        if patterns is None:
            return names
        return match_models(patterns, names, self.sweeps)

    def sweep_member(self, name: str) -> tuple[Sweep, Any] | None:
        """The sweep model ``name`` belongs to and its value of the swept parameter."""
        for sweep in self.sweeps.values():
            if name in sweep.members:
                return sweep, sweep.values[sweep.members.index(name)]
        return None

    def compare_with(self, name: str) -> list[str]:
        """The models ``name`` is compared with besides its parents and the reference
        (its ``compare`` key, with sweeps resolved to the member of the same value)."""
        return list(self.compare.get(name, []))

    def topological_models(self) -> list[str]:
        """Model names with every model after the models it depends on."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(n: str) -> None:
            if n in seen:
                return
            seen.add(n)
            for d in self.dependencies(n):
                visit(d)
            order.append(n)

        for n in self.file.models:
            visit(n)
        return order


def _annotated_markers(annotation: Any, marker: type) -> list[Any]:
    found = [m for m in getattr(annotation, "__metadata__", ()) if isinstance(m, marker)]
    for arg in get_args(annotation):
        found.extend(_annotated_markers(arg, marker))
    return found


def _field_values(params: Params, marker: type) -> list[tuple[str, Any, Any]]:
    """(field name, value, marker) for every field of ``params`` annotated with ``marker``."""
    out = []
    for fname, finfo in type(params).model_fields.items():
        markers = [m for m in finfo.metadata if isinstance(m, marker)]
        markers += _annotated_markers(finfo.annotation, marker)
        if markers:
            out.append((fname, getattr(params, fname), markers[0]))
    return out


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def model_refs(params: Params) -> list[str]:
    """The suite models a plug-in's parameters name (fields typed ``ModelRef``)."""
    return [v for _, value, _ in _field_values(params, ModelRefMarker) for v in _as_list(value)]


def data_refs(params: Params) -> list[tuple[str, str, str]]:
    """(field, data spec, record shape) for every data-set parameter.

    Parameters nested in a model or a list of models (``tasks = [{data = "..."}]``) count too,
    with the field written ``tasks[0].data``.
    """
    refs = [
        (fname, v, marker.shape)
        for fname, value, marker in _field_values(params, DataRefMarker)
        for v in _as_list(value)
    ]
    for fname in type(params).model_fields:
        value = getattr(params, fname)
        nested = _as_list(value)
        for i, item in enumerate(nested):
            if isinstance(item, Params):
                where = f"{fname}[{i}]" if isinstance(value, list | tuple) else fname
                refs += [(f"{where}.{f}", v, shape) for f, v, shape in data_refs(item)]
    return refs


class _Checker:
    """Collects issues with their lines while validating one suite file."""

    def __init__(self, path: Path, text: str):
        self.file = str(path)
        self.lines = key_lines(text)
        self.issues: list[SuiteIssue] = []
        self.members: dict[str, tuple[str, str]] = {}  # sweep member → (table name, param)

    def add(self, loc: tuple[str | int, ...], message: str) -> None:
        where = loc
        if len(loc) >= 2 and loc[0] == "models" and loc[1] in self.members:
            # A sweep member is written in its sweep's table: take the line from there, and
            # report a problem with another key than the swept one once, under the table's name.
            base, param = self.members[str(loc[1])]
            where = ("models", base, *(loc[2:] or (param,)))
            if len(loc) >= 3 and loc[2] != param:
                loc = where
        dotted = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(
            ".[", "["
        )
        line = line_of(self.lines, where)
        if line is None and len(loc) == 1:  # a whole section missing: say so at the top
            line = 1
        issue = SuiteIssue(self.file, line, dotted, message)
        if issue not in self.issues:
            self.issues.append(issue)

    def pydantic(
        self,
        err: ValidationError,
        prefix: tuple[str | int, ...],
        allowed: Callable[[tuple[str | int, ...]], list[str]],
    ) -> None:
        for e in err.errors():
            loc = tuple(
                p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-"))
            )
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden" and loc:
                msg = f"unknown key {loc[-1]!r}{did_you_mean(str(loc[-1]), allowed(loc))}"
            elif e["type"] == "missing":
                msg = "required key is missing"
            elif "input" in e and e["type"] not in ("value_error",):
                got = repr(e["input"])
                msg = f"{msg} (got {got if len(got) <= 200 else got[:200] + '…'})"
            self.add(prefix + loc, msg)


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def _section_allowed(loc: tuple[str | int, ...]) -> list[str]:
    sections: dict[str, type[BaseModel]] = {
        "suite": SuiteMeta,
        "gates": GateSpec,
        "report": ReportSpec,
    }
    if not loc:
        return []
    if len(loc) <= 2 and loc[0] in ("suite", "report"):
        return _allowed_keys(sections[str(loc[0])])
    if loc[0] == "gates":
        return _allowed_keys(GateSpec)
    if loc[0] == "scaling":
        return _allowed_keys(ScalingSpec)
    return _allowed_keys(SuiteFile) if len(loc) == 1 else []


def parse_toml(path: Path) -> tuple[str, dict[str, Any]]:
    """Read and parse a TOML file, turning syntax errors into a :class:`SuiteError`."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SuiteError([SuiteIssue(str(path), None, "", "file not found")]) from None
    except (OSError, ValueError) as e:
        raise SuiteError([SuiteIssue(str(path), None, "", f"cannot read file ({e})")]) from None
    try:
        text = raw.decode("utf-8-sig")  # a leading byte order mark is dropped
    except UnicodeDecodeError as e:
        why = f"not UTF-8 text (byte 0x{raw[e.start]:02x}): a suite is a TOML text file"
        bad_line = raw.count(b"\n", 0, e.start) + 1
        raise SuiteError([SuiteIssue(str(path), bad_line, "", why)]) from None
    if not text.strip():
        why = "the file is empty: a suite needs a [suite] table and [models.NAME] tables"
        raise SuiteError([SuiteIssue(str(path), 1, "", why)]) from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        line = int(m.group(1)) if m else None
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise SuiteError([SuiteIssue(str(path), line, "", f"invalid TOML: {msg}")]) from None
    except RecursionError:
        why = "invalid TOML: arrays or inline tables nested too deeply"
        line = _line_of_match(text, r"(?:[\[{][^\[\]{}\n]{0,40}){50}")
        raise SuiteError([SuiteIssue(str(path), line, "", why)]) from None
    except ValueError:  # an integer beyond Python's int/str digit limit
        why = "invalid TOML: a number with too many digits"
        line = _line_of_match(text, rf"\d{{{sys.get_int_max_str_digits() + 1}}}")
        raise SuiteError([SuiteIssue(str(path), line, "", why)]) from None


def _line_of_match(text: str, pattern: str) -> int | None:
    """The line where ``pattern`` first matches in ``text``, if it does."""
    m = re.search(pattern, text)
    return text.count("\n", 0, m.start()) + 1 if m else None


def _validate_params(
    check: _Checker, loc: tuple[str | int, ...], plugin_cls: Any, raw: dict[str, Any]
) -> Params | None:
    try:
        params: Params = plugin_cls.Params.model_validate(raw)
        return params
    except ValidationError as e:
        check.pydantic(e, loc, lambda _: list(plugin_cls.Params.model_fields))
        return None


def _check_sources(check: _Checker, name: str, spec: ModelSpec) -> None:
    loc: tuple[str | int, ...] = ("models", name)
    if spec.source is not None and spec.intervention is not None:
        check.add(loc, "give either `source` (load a checkpoint) or `intervention`, not both")
    elif spec.source is None and spec.intervention is None:
        check.add(loc, "give `source` (load a checkpoint) or `intervention` (build from models)")
    if spec.source is not None:
        if not spec.source.startswith(SOURCE_SCHEMES):
            check.add(
                (*loc, "source"),
                f"unknown source {spec.source!r}: expected one of "
                + ", ".join(f'"{s}…"' for s in SOURCE_SCHEMES),
            )
        elif problem := _source_problem(spec.source):
            check.add((*loc, "source"), problem)
        if spec.parents:
            check.add(
                (*loc, "from"), "a loaded model (`source`) has no parents; drop `from`/`models`"
            )
        if spec.params:
            key = next(iter(spec.params))
            allowed = _allowed_keys(ModelSpec)
            check.add((*loc, key), f"unknown key {key!r}{did_you_mean(key, allowed)}")


def _source_problem(source: str) -> str | None:
    """What is wrong with a source's syntax (no file or hub access), or None."""
    scheme, _, rest = source.partition(":")
    if scheme == "organism":
        from audit.organism.build import organism_names

        names = organism_names()
        if rest not in names:
            return f"unknown organism {rest!r}{did_you_mean(rest, names)}; built-in: " + ", ".join(
                names
            )
        return None
    if scheme == "hf":
        from audit.models.loading import hub_id_problem

        return hub_id_problem(rest)
    if not rest or "\0" in rest:
        return f"{source!r} names no directory after 'path:'"
    return None


def _sweep_ref_message(sweep: Sweep, key: str, listed: bool) -> str:
    shown = ", ".join(sweep.members[:6]) + (", …" if len(sweep.members) > 6 else "")
    example = f'"{sweep.members[0]}"'
    return (
        f"{sweep.base!r} is a sweep of {len(sweep.members)} models ({shown}); name one of them, "
        f"e.g. {key} = {f'[{example}]' if listed else example}"
    )


def _check_ref(
    check: _Checker,
    loc: tuple[str | int, ...],
    ref: str,
    names: list[str],
    sweeps: Mapping[str, Sweep],
    listed: bool = False,
) -> None:
    if ref in names:
        return
    if ref in sweeps:
        check.add(loc, _sweep_ref_message(sweeps[ref], str(loc[-1]), listed))
    else:
        check.add(loc, f"undefined model {ref!r}{did_you_mean(ref, [*names, *sweeps])}")


def _check_patterns(
    check: _Checker,
    loc: tuple[str | int, ...],
    patterns: Iterable[str],
    names: list[str],
    sweeps: Mapping[str, Sweep],
) -> None:
    for pattern in patterns:
        if not match_models([pattern], names, sweeps):
            check.add(
                loc, f"no model matches {pattern!r}{did_you_mean(pattern, [*names, *sweeps])}"
            )


def _accepts_list(annotation: Any) -> bool:
    """Whether a parameter's type takes a list (then only a list of lists is a sweep)."""
    if annotation is Any:
        return True
    origin = get_origin(annotation)
    if origin is Annotated:
        return _accepts_list(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return any(_accepts_list(a) for a in get_args(annotation))
    if annotation in (list, tuple, set, frozenset):
        return True
    return isinstance(origin, type) and issubclass(origin, list | tuple | set | frozenset)


def _swept_keys(spec: ModelSpec) -> list[str]:
    """The parameters of a ``[models.NAME]`` table given as a list of values to sweep."""
    params = spec.params
    listed = [k for k, v in params.items() if isinstance(v, list)]
    if not listed or spec.source is not None:
        return listed
    plugin = spec.intervention
    if plugin is None or plugin not in registry.interventions:
        return []
    try:
        fields = registry.interventions.get(plugin).Params.model_fields
    except PluginError:
        return []
    by_key = {f.alias or n: f for n, f in fields.items()}
    swept = []
    for key in listed:
        finfo, value = by_key.get(key), params[key]
        if finfo is None:
            continue  # an unknown key: the parameter check reports it
        if not _accepts_list(finfo.annotation) or (
            value and all(isinstance(v, list) for v in value)
        ):
            swept.append(key)
    return swept


def _expand_sweeps(check: _Checker, suite: Suite) -> set[str]:
    """Replace each swept table by its members; returns the tables left unexpanded by errors."""
    models: dict[str, ModelSpec] = {}
    broken: set[str] = set()
    for name, spec in suite.file.models.items():
        loc: tuple[str | int, ...] = ("models", name)
        swept = _swept_keys(spec)
        if not swept:
            models[name] = spec
            continue
        if spec.source is not None:
            check.add(
                (*loc, swept[0]),
                "a loaded model (`source`) cannot be swept: lists of values are for the "
                "parameters of an `intervention`",
            )
            kept = spec.model_dump(by_alias=True, exclude_unset=True)
            models[name] = ModelSpec.model_validate({k: kept[k] for k in kept if k not in swept})
            continue
        models[name] = spec
        key = swept[0]
        values = spec.params[key]
        if len(swept) > 1:
            check.add(
                (*loc, swept[1]),
                f"sweep one parameter at a time; got lists for {', '.join(swept)}",
            )
            broken.add(name)
            continue
        if not values:
            check.add((*loc, key), "an empty sweep: give at least one value")
            broken.add(name)
            continue
        dups = [v for i, v in enumerate(values) if v in values[:i]]
        if dups:
            check.add(
                (*loc, key),
                "duplicate values in the sweep: " + ", ".join(format_value(v) for v in dups),
            )
            broken.add(name)
            continue
        del models[name]
        members = tuple(member_name(name, key, v) for v in values)
        for member, value in zip(members, values, strict=True):
            models[member] = spec.model_copy(update={key: value}, deep=True)
            check.members[member] = (name, key)
        suite.sweeps[name] = Sweep(name, key, tuple(values), members)
    suite.file.models = models
    return broken


def _check_data(
    check: _Checker, loc: tuple[str | int, ...], spec: str, shape: str, base: Path
) -> None:
    from audit.data.records import (
        DataError,
        PairRecord,
        PreferenceRecord,
        ProbeRecord,
        read_jsonl,
        resolve_path,
    )

    if spec.startswith("organism:"):
        from audit.organism.datasets import organism_dataset_names

        name = spec[len("organism:") :]
        names = organism_dataset_names()
        if name not in names:
            check.add(
                loc,
                f"unknown organism data set {name!r}{did_you_mean(name, names)}; "
                f"available: {', '.join(names)}",
            )
        return
    try:
        path = resolve_path(spec, suite_dir=base)
        if path is not None:
            try:
                read_jsonl(path, ProbeRecord if shape == "probe" else PairRecord)
            except DataError as pair_error:
                if shape != "safety":
                    raise
                try:  # a preference file (prompt, chosen, rejected) is fine here too
                    read_jsonl(path, PreferenceRecord)
                except DataError:
                    raise pair_error from None
    except DataError as e:
        check.add(loc, str(e))


def _find_cycle(suite: Suite) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in suite.dependencies(n):
            if d not in suite.file.models:
                continue
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in suite.file.models:
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def _check_models(check: _Checker, suite: Suite, broken: Collection[str] = ()) -> None:
    names = list(suite.file.models)
    sweeps = suite.sweeps
    for name, spec in suite.file.models.items():
        loc: tuple[str | int, ...] = ("models", name)
        table = check.members.get(name, (name, ""))[0]
        if not _NAME.match(table):
            check.add(("models", table), "model names use letters, digits, '_', '-' and '.'")
        elif len(table) > MAX_NAME_CHARS:
            check.add(("models", table), f"model names have at most {MAX_NAME_CHARS} characters")
        _check_sources(check, name, spec)
        for key, refs, listed in (
            ("from", _as_list(spec.from_), isinstance(spec.from_, list)),
            ("models", spec.models or [], True),
        ):
            for ref in refs:
                _check_ref(check, (*loc, key), ref, names, sweeps, listed)
        if spec.intervention is None or spec.source is not None or name in broken:
            continue
        if spec.intervention not in registry.interventions:
            check.add(
                (*loc, "intervention"), registry.interventions.unknown_message(spec.intervention)
            )
            continue
        try:
            cls = registry.interventions.get(spec.intervention)
        except PluginError as e:
            check.add((*loc, "intervention"), str(e))
            continue
        params = _validate_params(check, loc, cls, spec.params)
        if params is None:
            continue
        suite.model_params[name] = params
        for fname, value, _ in _field_values(params, ModelRefMarker):
            for ref in _as_list(value):
                _check_ref(check, (*loc, fname), ref, names, sweeps, isinstance(value, list))
        for fname, spec_str, shape in data_refs(params):
            _check_data(check, (*loc, fname), spec_str, shape, suite.dir)
    if not check.issues and (cycle := _find_cycle(suite)):
        check.add(("models", cycle[0]), "dependency cycle: " + " → ".join(cycle))


def _check_compare(check: _Checker, suite: Suite) -> None:
    """Resolve each model's ``compare`` list into :attr:`Suite.compare`.

    A sweep member may name a sweep over the same parameter: it is compared with that sweep's
    member of the same value.
    """
    names = list(suite.file.models)
    for name, spec in suite.file.models.items():
        if not spec.compare:
            continue
        loc: tuple[str | int, ...] = ("models", name, "compare")
        member = suite.sweep_member(name)
        resolved: list[str] = []
        for ref in spec.compare:
            target: str | None = ref
            other = suite.sweeps.get(ref)
            if ref not in names and other is not None and member and other.param == member[0].param:
                target = other.member_with(member[1])
                if target is None:
                    param, value = member[0].param, format_value(member[1])
                    check.add(
                        loc,
                        f"the sweep {ref!r} has no member with {param}={value} to compare "
                        f"{name!r} with; its values: "
                        + ", ".join(format_value(v) for v in other.values),
                    )
                    continue
            elif ref not in names:
                _check_ref(check, loc, ref, names, suite.sweeps, listed=True)
                continue
            if target == name:
                check.add(loc, f"{name!r} is compared with itself")
            elif target is not None and target not in resolved:
                resolved.append(target)
        suite.compare[name] = resolved


def _check_evaluators(check: _Checker, suite: Suite) -> None:
    names = list(suite.file.models)
    for ename, espec in suite.file.evaluators.items():
        loc: tuple[str | int, ...] = ("evaluators", ename)
        if not _EVALUATOR_NAME.match(ename) or len(ename) > MAX_NAME_CHARS:
            check.add(
                loc,
                "evaluator names use letters, digits, '_' and '-' (no '.': gates name metrics "
                f'"EVALUATOR.METRIC"), at most {MAX_NAME_CHARS} characters',
            )
        _check_patterns(check, (*loc, "models"), espec.models or [], names, suite.sweeps)
        if espec.kind not in registry.evaluators:
            check.add((*loc, "kind"), registry.evaluators.unknown_message(espec.kind))
            continue
        try:
            cls = registry.evaluators.get(espec.kind)
        except PluginError as e:
            check.add((*loc, "kind"), str(e))
            continue
        params = _validate_params(check, loc, cls, espec.params)
        if params is not None:
            suite.evaluator_params[ename] = params
            for fname, spec_str, shape in data_refs(params):
                _check_data(check, (*loc, fname), spec_str, shape, suite.dir)
            _check_lineages(check, (*loc, "lineages"), params, suite)


def _check_lineages(
    check: _Checker, loc: tuple[str | int, ...], params: Params, suite: Suite
) -> None:
    """Each model chain of a ``lineages`` parameter exists and is a single-parent chain."""
    from audit.continual.forgetting import lineage_model_problems

    parents = {n: spec.parents for n, spec in suite.file.models.items()}
    for i, chain in enumerate(getattr(params, "lineages", None) or []):
        for problem in lineage_model_problems(list(chain), parents):
            check.add((*loc, i), problem)


def _check_metric(check: _Checker, loc: tuple[str | int, ...], spec: str, suite: Suite) -> None:
    """``spec`` is "EVALUATOR.METRIC" naming an evaluator of the suite and one of its metrics."""
    evaluators = suite.file.evaluators
    ename, _, metric = spec.partition(".")
    if not metric:
        check.add(loc, 'write the metric as "EVALUATOR.METRIC"')
    elif ename not in evaluators:
        check.add(loc, f"undefined evaluator {ename!r}{did_you_mean(ename, list(evaluators))}")
    elif ename in suite.evaluator_params:
        cls = registry.evaluators.get(evaluators[ename].kind)
        declared = [m.name for m in cls.metrics]
        if metric not in declared:
            check.add(
                loc,
                f"evaluator {ename!r} ({evaluators[ename].kind}) has no metric {metric!r}"
                f"{did_you_mean(metric, declared)}; it produces: {', '.join(declared)}",
            )


def _check_gates(check: _Checker, suite: Suite, *, within_run: bool = True) -> None:
    names = list(suite.file.models)
    for i, gate in enumerate(suite.file.gates):
        loc: tuple[str | int, ...] = ("gates", i)
        known = len(check.issues)
        _check_metric(check, (*loc, "metric"), gate.metric, suite)
        _check_patterns(check, (*loc, "models"), gate.models, names, suite.sweeps)
        if gate.relative and gate.vs not in ("reference", "parent"):
            _check_ref(check, (*loc, "vs"), gate.vs, names, suite.sweeps)
        if within_run and len(check.issues) == known:  # else the cause is reported already
            _check_gate_checks_something(check, loc, gate, suite)


def _check_gate_checks_something(
    check: _Checker, loc: tuple[str | int, ...], gate: GateSpec, suite: Suite
) -> None:
    """A gate must check at least one (model, baseline) pair, each baseline evaluated too."""
    from audit.analysis.gates import gate_pairs

    ename = gate.metric.partition(".")[0]
    if ename not in suite.file.evaluators or ename not in suite.evaluator_params:
        return  # reported by _check_metric
    evaluated = set(suite.evaluated_models(ename))
    pairs = gate_pairs(suite, gate)
    if not pairs:
        selected = match_models(gate.models, list(suite.file.models), suite.sweeps)
        if not selected:
            why = f"its models {gate.models} select no model of the suite"
        elif not any(m in evaluated for m in selected):
            why = f"evaluator {ename!r} runs on none of the models it selects"
        else:
            vs = {"reference": f"the reference ({suite.reference})", "parent": "a parent"}
            why = (
                f"every model it selects is its own baseline or has none (vs = "
                f"{vs.get(gate.vs, repr(gate.vs))})"
            )
        check.add(
            loc,
            f"this gate checks nothing in a run: {why}; a gate with no verdict is not a pass "
            "(`audit compare --suite` reads gates as release rules, old run vs new, where this "
            "check does not apply)",
        )
        return
    missing = sorted({b for _, b in pairs if b is not None and b not in evaluated})
    if missing:
        check.add(
            (*loc, "vs"),
            f"evaluator {ename!r} does not run on {', '.join(missing)}, which this gate compares "
            "with: add them to its models, or gate against another baseline",
        )


def _check_scaling(check: _Checker, suite: Suite) -> None:
    sweeps = list(suite.sweeps)
    for i, fit in enumerate(suite.file.scaling):
        loc: tuple[str | int, ...] = ("scaling", i)
        _check_metric(check, (*loc, "metric"), fit.metric, suite)
        for name in fit.sweeps:
            if name in suite.sweeps:
                continue
            member = suite.sweep_member(name)
            if member is not None:
                message = f"{name!r} is a member of the sweep {member[0].base!r}; name the sweep"
            else:
                message = f"{name!r} is not a sweep{did_you_mean(name, sweeps)}; " + (
                    f"sweeps in this suite: {', '.join(sweeps)}"
                    if sweeps
                    else "this suite has none (a [models.NAME] table with a list of values "
                    "for one parameter)"
                )
            check.add((*loc, "sweeps"), message)


def validate(path: Path, text: str, data: dict[str, Any], *, release: bool = False) -> Suite:
    """Validate parsed suite data; raises :class:`SuiteError` listing every problem.

    ``release``: the suite is read for ``audit compare --suite``, where relative gates compare
    each model with its old release, so a gate need not find a baseline within the suite.
    """
    check = _Checker(path, text)
    try:
        parsed = SuiteFile.model_validate(data)
    except ValidationError as e:
        check.pydantic(e, (), _section_allowed)
        raise SuiteError(check.issues) from None
    suite = Suite(file=parsed, path=path.resolve(), text=text)
    if not parsed.models:
        check.add(("models",), "a suite needs at least one model")
    broken = _expand_sweeps(check, suite)
    _check_models(check, suite, broken)
    _check_compare(check, suite)
    _check_evaluators(check, suite)
    names = list(parsed.models)
    ref = parsed.suite.reference
    if ref is not None:
        _check_ref(check, ("suite", "reference"), ref, names, suite.sweeps)
    for loc, value in (
        (("suite", "cache_dir"), parsed.suite.cache_dir),
        (("report", "output_dir"), parsed.report.output_dir),
    ):
        if value and _is_file(suite.dir / value):
            check.add(loc, f"{value!r} is an existing file; name a directory (or a new one)")
    roots = [n for n, s in parsed.models.items() if s.source is not None]
    suite.reference = ref or (roots[0] if roots else names[0] if names else "")
    _check_gates(check, suite, within_run=not release)
    _check_scaling(check, suite)
    if check.issues:
        raise SuiteError(check.issues)
    return suite


def _is_file(path: Path) -> bool:
    try:
        return path.exists() and not path.is_dir()
    except (OSError, ValueError):
        return False


def load_suite(path: str | Path, *, release: bool = False) -> Suite:
    """Parse and validate a suite file (``release``: see :func:`validate`)."""
    p = Path(path)
    text, data = parse_toml(p)
    return validate(p, text, data, release=release)


def json_schema() -> dict[str, Any]:
    """The JSON schema of suite files, with each plug-in's parameters under ``$defs``."""
    schema = SuiteFile.model_json_schema(by_alias=True)
    defs = schema.setdefault("$defs", {})
    for kind, reg in (("intervention", registry.interventions), ("evaluator", registry.evaluators)):
        for name in reg.names():
            try:
                params = reg.get(name).Params
            except PluginError:
                continue
            defs[f"{kind}:{name}"] = params.model_json_schema()
    return schema
