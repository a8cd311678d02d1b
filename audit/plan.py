"""Suite → plan: model steps and evaluation steps, each with a content key.

A step's key hashes its own configuration, its plug-in's code version, its inputs' keys and the
content of every data file its parameters name (:mod:`audit.fingerprint`); a loaded
checkpoint's key is the hash of its files (or, for the organism, of its build config and code
version; for a model served by an OpenAI-compatible endpoint, of its base URL and model name,
never of its API key). Two steps with the same key produce the same artifact, so the store can
reuse it.

Every checkpoint a suite loads is vetted (:func:`vet_sources`) before any of its files is read
or hashed: a symlink or shard-index entry leading out of it, pickle-only weights (without
``allow_pickle``), code (without ``trust_remote_code``) or an adapter base outside the suite's
roots is refused while planning, before anything is written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from audit import registry
from audit.fingerprint import data_fingerprints
from audit.plugins import Params
from audit.store.keys import step_key
from audit.suite.pairs import gate_pairs
from audit.suite.schema import ModelSpec
from audit.suite.seeds import replica_name
from audit.suite.suite import Suite
from audit.suite.sweeps import match_models


def params_json(params: Params | None) -> dict[str, Any]:
    """A plug-in's parameters as plain JSON values (defaults included)."""
    return {} if params is None else params.model_dump(mode="json")


@dataclass(frozen=True)
class ModelStep:
    """Load a checkpoint (``spec.source``) or apply an intervention to ``inputs``."""

    name: str
    key: str
    inputs: tuple[str, ...]
    spec: ModelSpec
    params: Params | None
    resolved: Path | None = None  # the checkpoint directory of an hf:/path: source, or GGUF file
    plugin: Any = field(default=None, compare=False)
    """The intervention class (resolved once, while planning); ``None`` for a loaded model."""
    checkpoint_key: str | None = None
    """The store key of the checkpoint itself, when ``key`` also names how it is loaded
    (``dtype`` / ``device_map``): the organism or a GGUF conversion is built once either way."""

    @property
    def id(self) -> str:
        return f"model:{self.name}"

    @property
    def store_key(self) -> str:
        """The key of the model's entry in the store."""
        return self.checkpoint_key or self.key

    @property
    def kind(self) -> str:
        if self.spec.source is None:
            return "intervene"
        scheme = self.spec.source.partition(":")[0]
        return scheme if scheme in ("organism", "gguf", "openai") else "load"


@dataclass(frozen=True)
class EvalStep:
    """Run evaluator ``evaluator`` (plug-in ``kind``) on model ``model``."""

    model: str
    evaluator: str
    kind: str
    key: str
    params: Params
    plugin: Any = field(default=None, compare=False)
    """The evaluator class (resolved once, while planning): its ``metrics`` and hooks."""

    @property
    def id(self) -> str:
        return f"eval:{self.evaluator}@{self.model}"


Relation = Literal["parent", "compare", "reference", "gate"]
"""Why a model is compared with a baseline: its parent, its ``compare`` key, the suite's
reference, or a gate's ``vs = NAME``."""


@dataclass(frozen=True)
class Pair:
    """A (model, baseline) comparison the analysis computes, and why."""

    model: str
    baseline: str
    relation: Relation


@dataclass(frozen=True)
class GateCheck:
    """One (model, baseline) a gate checks; ``baseline`` is ``None`` for ``min`` / ``max``."""

    gate: int
    """The gate's index in the suite's ``gates``."""
    model: str
    baseline: str | None


@dataclass(frozen=True)
class Plan:
    """Every step of a suite in an executable order, and every comparison and gate check the
    analysis after the run computes (resolved here, once)."""

    suite: Suite
    models: tuple[ModelStep, ...]
    evals: tuple[EvalStep, ...]
    pairs: tuple[Pair, ...] = ()
    gate_checks: tuple[GateCheck, ...] = ()
    evaluator_classes: Mapping[str, Any] = field(default_factory=dict)
    """Evaluator plug-in kind -> class, for every evaluator kind of the suite."""

    def baselines(self, model: str) -> list[tuple[str, Relation]]:
        """(baseline, relation) pairs ``model`` is compared with, in plan order."""
        return [(p.baseline, p.relation) for p in self.pairs if p.model == model]

    def model(self, name: str) -> ModelStep:
        return next(s for s in self.models if s.name == name)

    def evals_of(self, model: str) -> list[EvalStep]:
        return [e for e in self.evals if e.model == model]


def organism_key(name: str) -> str:
    """The store key of the built-in organism ``name`` (its build config and code version)."""
    from audit.organism.build import config_key
    from audit.organism.config import OrganismConfig

    return step_key("organism", name=name, config=config_key(OrganismConfig()))


def _load_key(
    spec: ModelSpec, directory: Path | None, suite: Suite, hash_cache: Path
) -> tuple[str, str | None]:
    """(the model's key, its checkpoint's store key when that differs)."""
    key = _checkpoint_key(spec, directory, suite, hash_cache)
    # how the weights are loaded changes every number computed on them; without these keys a
    # model's key is what it was before they existed
    loading = {k: v for k in ("dtype", "device_map") if (v := getattr(spec, k)) is not None}
    return (step_key("loaded", checkpoint=key, **loading), key) if loading else (key, None)


def _checkpoint_key(spec: ModelSpec, directory: Path | None, suite: Suite, hash_cache: Path) -> str:
    source = spec.source or ""
    flags = {"allow_pickle": spec.allow_pickle, "trust_remote_code": spec.trust_remote_code}
    if source.startswith("openai:"):
        from audit.models.endpoint import parse_endpoint

        model, base_url = parse_endpoint(source[len("openai:") :])
        return step_key("openai", base_url=base_url, model=model)
    if directory is None:
        return organism_key(source[len("organism:") :])
    if source.startswith("gguf:"):
        from audit.models.gguf import CONVERTER_VERSION
        from audit.models.hashing import hash_file

        cache_file = hash_cache / f"{_path_digest(directory)}.json"
        digest = hash_file(directory, cache_file=cache_file)
        return step_key("gguf", content=digest, converter=CONVERTER_VERSION)
    content = content_hash(directory, suite.dir, hash_cache, within=_checkpoint_roots(suite))
    return step_key("load", content=content, **flags)


def vet_sources(suite: Suite) -> dict[str, Path]:
    """The checkpoint directory of every ``path:``/``hf:`` model, each vetted before any read,
    and the file of every ``gguf:`` model (with the ``gguf`` package checked for); an
    ``openai:`` model's ``api_key_env`` must name a variable that is set.

    Raises :class:`~audit.models.loading.UnsafeCheckpointError` or
    :class:`~audit.models.loading.CheckpointNotFoundError` for the first checkpoint (or adapter
    base, down the chain) that loading would refuse; only directory listings and small JSON
    configs are read, never weights or a link's target.
    """
    from audit.models.loading import resolve_source, vet_checkpoint

    within = _checkpoint_roots(suite)
    out: dict[str, Path] = {}
    for name in suite.topological_models():
        spec = suite.file.models[name]
        source = spec.source or ""
        if not source or source.startswith("organism:"):
            continue
        if source.startswith("openai:"):
            from audit.models.endpoint import require_key

            if spec.api_key_env is not None:
                require_key(spec.api_key_env, f"model {name!r}")
            continue
        if source.startswith("gguf:"):
            from audit.models.gguf import require_gguf, resolve_gguf

            out[name] = resolve_gguf(source[len("gguf:") :], suite_dir=suite.dir)
            require_gguf()
            continue
        directory = resolve_source(source, suite_dir=suite.dir)
        vet_checkpoint(
            directory,
            allow_pickle=spec.allow_pickle,
            trust_remote_code=spec.trust_remote_code,
            suite_dir=suite.dir,
            within=within,
        )
        out[name] = directory
    return out


def _checkpoint_roots(suite: Suite) -> tuple[Path, ...]:
    """Where the suite's adapters may find their base models: the suite's directory, the
    ``path:`` checkpoints it names and the Hugging Face cache (see ``adapter_base``)."""
    from audit.models.loading import CheckpointNotFoundError, resolve_source, suite_roots

    named = []
    for spec in suite.file.models.values():
        if (spec.source or "").startswith("path:"):
            try:
                named.append(resolve_source(spec.source or "", suite_dir=suite.dir))
            except (CheckpointNotFoundError, ValueError):
                continue  # reported when that model's own key is computed
    return suite_roots(suite.dir, named)


def content_hash(
    directory: Path, suite_dir: Path, hash_cache: Path, *, within: tuple[Path, ...] | None = None
) -> list[str]:
    """Hashes of a checkpoint's files; for a PEFT adapter, of its base's files too.

    ``within``: where an adapter's base may lie (an adapter whose base is elsewhere is refused
    with ``UnsafeCheckpointError`` before anything is read from it).
    """
    from audit.models.hashing import hash_directory
    from audit.models.loading import adapter_base, is_peft_adapter

    cache_file = hash_cache / f"{_path_digest(directory)}.json"
    hashes = [hash_directory(directory, cache_file=cache_file)]
    if is_peft_adapter(directory):
        base = adapter_base(directory, suite_dir, within=within)
        hashes += content_hash(base, suite_dir, hash_cache, within=within)
    return hashes


def _path_digest(path: Path) -> str:
    """A short file name for ``path``'s hash cache."""
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]


def _as_written(value: Any, suite: Suite) -> Any:
    """``value`` with every replica's name (``NAME.seedS``) replaced by ``NAME``."""
    if isinstance(value, str):
        return suite.base_of(value) if value in suite.seed_of else value
    if isinstance(value, list):
        return [_as_written(v, suite) for v in value]
    if isinstance(value, dict):
        return {k: _as_written(v, suite) for k, v in value.items()}
    return value


def build_plan(suite: Suite, hash_cache: Path, *, vetted: dict[str, Path] | None = None) -> Plan:
    """Resolve every model's key (hashing loaded checkpoints) and list the steps.

    ``hash_cache`` is a directory of per-checkpoint file-hash caches, so an unchanged
    multi-gigabyte checkpoint is not re-read on every run. ``vetted``: what
    :func:`vet_sources` returned for this suite, when the caller vetted it already.
    """
    directories = vet_sources(suite) if vetted is None else vetted
    keys: dict[str, str] = {}
    models: list[ModelStep] = []
    for name in suite.topological_models():
        spec = suite.file.models[name]
        cls: Any = None
        params = suite.model_params.get(name)
        inputs = tuple(suite.dependencies(name))
        resolved = directories.get(name)
        checkpoint_key = None
        if spec.source is not None:
            key, checkpoint_key = _load_key(spec, resolved, suite, hash_cache)
        else:
            assert spec.intervention is not None
            cls = registry.interventions.get(spec.intervention)
            # a replica's key names its inputs as written (NAME, not NAME.seedS): with its seed
            # in the key, NAME.seed0 of `seeds = [0, …]` is the model NAME of `seed = 0`
            written = suite.base_of
            key = step_key(
                "intervene",
                plugin=spec.intervention,
                version=cls.version,
                params=_as_written(params_json(params), suite),
                inputs={written(n): keys[n] for n in inputs},
                order=[written(n) for n in inputs],
                seed=suite.model_seed(name),
                data=data_fingerprints(params, suite.dir, hash_cache),
            )
        keys[name] = key
        plugin = None if spec.source is not None else cls
        models.append(
            ModelStep(
                name,
                key,
                inputs,
                spec,
                params,
                resolved,
                plugin=plugin,
                checkpoint_key=checkpoint_key,
            )
        )
    classes = {e.kind: registry.evaluators.get(e.kind) for e in suite.file.evaluators.values()}
    evals: list[EvalStep] = []
    for step in models:
        for ename, espec in suite.file.evaluators.items():
            if step.name not in suite.evaluated_models(ename):
                continue
            cls = classes[espec.kind]
            params = suite.evaluator_params[ename]
            key = step_key(
                "eval",
                plugin=espec.kind,
                version=cls.version,
                params=params_json(params),
                model=step.key,
                reference=keys[suite.reference],
                seed=suite.model_seed(step.name),
                data=data_fingerprints(params, suite.dir, hash_cache),
            )
            evals.append(EvalStep(step.name, ename, espec.kind, key, params, plugin=cls))
    checks = tuple(
        GateCheck(i, model, baseline)
        for i, gate in enumerate(suite.file.gates)
        for model, baseline in gate_pairs(suite, gate)
    )
    return Plan(
        suite, tuple(models), tuple(evals), comparison_pairs(suite, checks), checks, classes
    )


def _tradeoff_baselines(suite: Suite) -> dict[str, list[str]]:
    """Model -> the baselines ``[[tradeoffs]]`` with ``vs = NAME`` compare it with (the same
    seed's replica of NAME when both are replicated)."""
    out: dict[str, list[str]] = {}
    names = list(suite.file.models)
    for spec in suite.file.tradeoffs:
        if spec.vs in ("parent", "reference"):
            continue
        for model in match_models(spec.models, names, suite.sweeps):
            seed = suite.seed_of.get(model)
            vs = (
                replica_name(spec.vs, seed)
                if seed is not None and spec.vs in suite.replicas
                else spec.vs
            )
            if vs != model:
                out.setdefault(model, []).append(vs)
    return out


def comparison_pairs(suite: Suite, checks: Sequence[GateCheck]) -> tuple[Pair, ...]:
    """Every (model, baseline, relation) of the suite, each baseline once per model: its parents
    ("parent"), the models of its ``compare`` key ("compare"), the reference ("reference"),
    the models gates compare it with (``vs = NAME``, "gate"), in gate order, then those
    ``[[tradeoffs]]`` place it against (``vs = NAME``, "compare")."""
    gates = suite.file.gates
    tradeoff_baselines = _tradeoff_baselines(suite)
    pairs: list[Pair] = []
    for model in suite.topological_models():
        out: dict[str, Relation] = {p: "parent" for p in suite.dependencies(model)}
        for name in suite.compare_with(model):
            out.setdefault(name, "compare")
        if suite.reference != model:
            out.setdefault(suite.reference, "reference")
        for check in checks:
            vs = gates[check.gate].vs
            relative = gates[check.gate].relative
            named = vs not in ("reference", "parent")
            if relative and named and check.model == model and check.baseline not in (None, model):
                # the check's baseline: `vs` resolved (to the same seed's replica, with seeds)
                out.setdefault(check.baseline, "gate")
        for baseline in tradeoff_baselines.get(model, []):
            out.setdefault(baseline, "compare")
        out.pop(model, None)
        pairs += [Pair(model, baseline, relation) for baseline, relation in out.items()]
    return tuple(pairs)
