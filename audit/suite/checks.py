"""Validation of a suite file: parse the TOML, expand sweeps, check every section, plug-in
parameter and reference, and report each problem with its file, line and key.

:func:`load_suite` parses and validates, and raises :class:`SuiteError` with every problem found.
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from audit import registry
from audit.errors import InputError
from audit.plugins import ModelRefMarker, Params, SuiteView, hook, placement, weights_needed
from audit.registry import PluginError, did_you_mean
from audit.suite.controls import expand_controls
from audit.suite.pairs import gate_pairs
from audit.suite.refs import as_list, data_refs, field_values
from audit.suite.schema import (
    ENDPOINT_KEYS,
    EVALUATOR_NAME,
    MAX_NAME_CHARS,
    NAME,
    SOURCE_SCHEMES,
    GateSpec,
    ModelSpec,
    ReportSpec,
    ScalingSpec,
    SuiteFile,
    SuiteMeta,
)
from audit.suite.seeds import expand_seeds
from audit.suite.suite import Suite
from audit.suite.sweeps import Sweep, expand_sweeps, format_value, match_models
from audit.suite.tomlpos import key_lines, line_of


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
    if spec.source is None:
        if spec.dtype is not None:
            check.add(
                (*loc, "dtype"),
                "`dtype` applies to a loaded model (`source`); a built model inherits its "
                "inputs' weights as loaded",
            )
        if spec.device_map is not None:
            check.add(
                (*loc, "device_map"),
                "`device_map` applies to a loaded model (`source`): an intervention runs on one "
                "device (--device, or the first of a --device list, which spreads every "
                "evaluated model); to train across several (DDP/FSDP), run `accelerate launch` "
                "yourself and audit the result as a path: checkpoint",
            )
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
    _check_endpoint_keys(check, loc, spec)


def _check_endpoint_keys(check: _Checker, loc: tuple[str | int, ...], spec: ModelSpec) -> None:
    """The endpoint keys on ``openai:`` sources only; the weight-loading keys never there."""
    if spec.has_weights:
        for key in ENDPOINT_KEYS:
            if getattr(spec, key) is not None:
                check.add(
                    (*loc, key),
                    f"`{key}` applies to an OpenAI-compatible endpoint (source = "
                    '"openai:MODEL@BASE_URL") only',
                )
        return
    for key in ("dtype", "device_map", "allow_pickle", "trust_remote_code"):
        if key in spec.model_fields_set:
            check.add(
                (*loc, key),
                f"`{key}` says how weights are loaded; a model served by an endpoint has none",
            )


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
    if scheme == "gguf":
        from audit.models.gguf import gguf_problem

        return gguf_problem(rest)
    if scheme == "openai":
        from audit.models.endpoint import endpoint_problem

        return endpoint_problem(rest)
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


def _check_data(
    check: _Checker, loc: tuple[str | int, ...], spec: str, shape: str, base: Path
) -> None:
    from audit.data.records import (
        DataError,
        PairRecord,
        PreferenceRecord,
        ProbeRecord,
        read_hf,
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

        def read(record: type[PairRecord | ProbeRecord | PreferenceRecord]) -> None:
            # an hf: spec is read (offline) and converted here too, so its syntax, a data set
            # missing from the local cache or a row that does not fit shows at the suite line
            if spec.startswith("hf:"):
                read_hf(spec, record, suite_dir=base)
            elif path is not None:
                read_jsonl(path, record)

        try:
            read(ProbeRecord if shape == "probe" else PairRecord)
        except DataError as pair_error:
            if shape != "safety":
                raise
            try:  # a preference file (prompt, chosen, rejected) is fine here too
                read(PreferenceRecord)
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
        if not NAME.match(table):
            check.add(("models", table), "model names use letters, digits, '_', '-' and '.'")
        elif len(table) > MAX_NAME_CHARS:
            check.add(("models", table), f"model names have at most {MAX_NAME_CHARS} characters")
        _check_sources(check, name, spec)
        for key, refs, listed in (
            ("from", as_list(spec.from_), isinstance(spec.from_, list)),
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
        try:
            placement(cls, params)
        except PluginError as e:
            check.add((*loc, "intervention"), str(e))
        suite.model_params[name] = params
        for fname, value, _ in field_values(params, ModelRefMarker):
            for ref in as_list(value):
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
        if not EVALUATOR_NAME.match(ename) or len(ename) > MAX_NAME_CHARS:
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
            params = _resolve_backend(params, suite.file.suite.backend)
            suite.evaluator_params[ename] = params
            for fname, spec_str, shape in data_refs(params):
                _check_data(check, (*loc, fname), spec_str, shape, suite.dir)
            _check_by_plugin(check, loc, cls, params, suite)


def _check_by_plugin(
    check: _Checker, loc: tuple[str | int, ...], cls: type, params: Params, suite: Suite
) -> None:
    """The evaluator's own suite check (its ``check_suite`` hook), if it declares one."""
    check_suite = hook(cls, "check_suite")
    if check_suite is None:
        return
    view = SuiteView(
        {n: list(spec.parents) for n, spec in suite.file.models.items()},
        replicas={n: list(r) for n, r in suite.replicas.items()},
    )
    for where, problem in check_suite(params, view):
        check.add((*loc, *where), problem)


def _resolve_backend(params: Params, default: str) -> Params:
    """``params`` with every generation-backend parameter left unset (``None``) set to the
    suite's ``[suite] backend``, so the step key names the backend that runs ("hf" is left out
    of the key: :data:`audit.models.vllm_backend.GenerationBackend`)."""
    from audit.models.vllm_backend import BackendMarker

    unset = {f: default for f, value, _ in field_values(params, BackendMarker) if value is None}
    return params.model_copy(update=unset) if unset else params


def _check_backends(check: _Checker, suite: Suite, *, here: bool = True) -> None:
    """``backend = "vllm"`` (an evaluator's, or the suite's default for it) needs vLLM and a
    CUDA GPU here (:func:`audit.models.vllm_backend.available`; not checked without ``here``:
    a suite read for its release rules runs nothing), and a model with weights: no silent
    fallback to transformers. Reported at the evaluator's key, or at ``[suite] backend`` when
    the value comes from there."""
    from audit.models import vllm_backend

    reason: str | None = None
    asked = False
    endpoints = {n for n, spec in suite.file.models.items() if not spec.has_weights}
    for ename, params in suite.evaluator_params.items():
        for fname, value, _ in field_values(params, vllm_backend.BackendMarker):
            if value != "vllm":
                continue
            own = fname in suite.file.evaluators[ename].params
            loc: tuple[str | int, ...] = (
                ("evaluators", ename, fname) if own else ("suite", "backend")
            )
            if here and not asked:
                reason, asked = vllm_backend.available(), True
            if reason is not None:
                check.add(
                    loc,
                    f'backend = "vllm" needs vLLM and a CUDA GPU: {reason}; use backend = "hf"',
                )
            served = [m for m in suite.evaluated_models(ename) if m in endpoints]
            if served:
                names = ", ".join(repr(m) for m in served)
                check.add(
                    loc,
                    f'backend = "vllm" runs the weights, and evaluator {ename!r} runs on '
                    f"{names}, served by an OpenAI-compatible endpoint (text only); restrict "
                    'its `models` to models with weights, or generate with backend = "hf" '
                    "(an endpoint model answers through its server)",
                )


def _check_endpoints(check: _Checker, suite: Suite) -> None:
    """A model served by an endpoint (``openai:``) has text only: no intervention may take it
    as an input, and no evaluator that needs weights (:func:`audit.plugins.weights_needed`)
    may run on it."""
    endpoints = {n for n, spec in suite.file.models.items() if not spec.has_weights}
    if not endpoints:
        return
    for name, spec in suite.file.models.items():
        params = suite.model_params.get(name)
        if spec.intervention is None or params is None:
            continue
        for dep in suite.dependencies(name):
            if dep in endpoints:
                check.add(
                    ("models", name, _ref_key(spec, params, dep)),
                    f"{dep!r} is served by an OpenAI-compatible endpoint (text only, no "
                    f"weights), and the intervention {spec.intervention!r} needs the weights "
                    "of the models it is built from",
                )
    for ename, params in suite.evaluator_params.items():
        served = [m for m in suite.evaluated_models(ename) if m in endpoints]
        if not served:
            continue
        why = weights_needed(registry.evaluators.get(suite.file.evaluators[ename].kind), params)
        if why is not None:
            names = ", ".join(repr(m) for m in served)
            check.add(
                ("evaluators", ename),
                f"runs on {names}, served by an OpenAI-compatible endpoint (text only, no "
                f"weights), but {why}; restrict this evaluator's `models` to models with weights",
            )


def _ref_key(spec: ModelSpec, params: Params, ref: str) -> str:
    """The key of a model table that names ``ref``: ``from``, ``models`` or a parameter."""
    if ref in as_list(spec.from_):
        return "from"
    if ref in (spec.models or []):
        return "models"
    for fname, value, _ in field_values(params, ModelRefMarker):
        if ref in as_list(value):
            return fname
    return "from"


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
        if gate.relative and gate.vs not in ("reference", "parent", *suite.replicas):
            _check_ref(check, (*loc, "vs"), gate.vs, names, suite.sweeps)
        if within_run and len(check.issues) == known:  # else the cause is reported already
            _check_gate_checks_something(check, loc, gate, suite)


def _check_gate_checks_something(
    check: _Checker, loc: tuple[str | int, ...], gate: GateSpec, suite: Suite
) -> None:
    """A gate must check at least one (model, baseline) pair, each baseline evaluated too."""
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


def _check_tradeoffs(check: _Checker, suite: Suite) -> None:
    names = list(suite.file.models)
    for i, spec in enumerate(suite.file.tradeoffs):
        loc: tuple[str | int, ...] = ("tradeoffs", i)
        _check_metric(check, (*loc, "gain"), spec.gain, suite)
        _check_metric(check, (*loc, "cost"), spec.cost, suite)
        _check_patterns(check, (*loc, "models"), spec.models, names, suite.sweeps)
        if spec.vs not in ("parent", "reference", *suite.replicas):
            _check_ref(check, (*loc, "vs"), spec.vs, names, suite.sweeps)


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


def validate(
    path: Path,
    text: str,
    data: dict[str, Any],
    *,
    release: bool = False,
    runs_here: bool = True,
) -> Suite:
    """Validate parsed suite data; raises :class:`SuiteError` listing every problem.

    ``release``: the suite is read for ``audit compare --suite``, where relative gates compare
    each model with its old release, so a gate need not find a baseline within the suite.
    ``runs_here=False``: its steps run elsewhere (``--executor ray``), so what this machine
    lacks (vLLM, a GPU) is not held against it; a step then fails on a worker that lacks it.
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
    broken = expand_sweeps(check, suite)
    expand_controls(check, suite)
    expand_seeds(check, suite)
    _check_models(check, suite, broken)
    _check_compare(check, suite)
    _check_evaluators(check, suite)
    _check_endpoints(check, suite)
    _check_backends(check, suite, here=runs_here and not release)
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
    _check_tradeoffs(check, suite)
    if check.issues:
        raise SuiteError(check.issues)
    return suite


def _is_file(path: Path) -> bool:
    try:
        return path.exists() and not path.is_dir()
    except (OSError, ValueError):
        return False


def load_suite(path: str | Path, *, release: bool = False, runs_here: bool = True) -> Suite:
    """Parse and validate a suite file (``release``, ``runs_here``: see :func:`validate`)."""
    p = Path(path)
    text, data = parse_toml(p)
    return validate(p, text, data, release=release, runs_here=runs_here)
