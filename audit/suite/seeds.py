"""Replicates over seeds: ``[suite] seeds = [0, 1, 2]``.

Every model built by an intervention becomes one replica per seed, ``NAME.seedS``, built and
evaluated with seed ``S``; loaded models (``source``) are shared. A replica's inputs are the
replicas of the same seed: ``from``, ``models``, ``compare`` and the intervention's model parameters
(``ModelRef`` fields such as a merge's ``base`` or a control's ``of``) naming a replicated model
are rewritten to ``NAME.seedS``. The name as written
selects every replica wherever models are matched (evaluators' and gates' ``models``), as a
sweep's base name does; comparisons are per seed, and :mod:`audit.analysis.pooled` pools each
comparison over the seeds, which is what gates decide on.
"""

from __future__ import annotations

from typing import Any, Protocol

from audit import registry
from audit.registry import PluginError
from audit.suite.refs import model_ref_keys
from audit.suite.schema import ModelSpec, SuiteFile
from audit.suite.sweeps import ExpansionChecker, Sweep


def replica_name(name: str, seed: int) -> str:
    """``NAME.seedS``, the replica of ``name`` built with ``seed``."""
    return f"{name}.seed{seed}"


class SeededSuite(Protocol):
    """What replication reads and rewrites of a suite (:class:`audit.suite.suite.Suite`)."""

    file: SuiteFile
    sweeps: dict[str, Sweep]
    controls: dict[str, str]
    seed_of: dict[str, int]
    replicas: dict[str, tuple[str, ...]]


def _rewrite(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return names.get(value, value)
    if isinstance(value, list):
        return [_rewrite(v, names) for v in value]
    return value


def _ref_keys(spec: ModelSpec) -> list[str]:
    """The keys of a model table that name other models: ``from``, ``models``, ``compare`` and
    the intervention's ``ModelRef`` parameters (none when the intervention is unknown: the
    model check reports that)."""
    keys = ["from", "models", "compare"]
    try:
        cls = registry.interventions.get(spec.intervention or "")
    except (PluginError, KeyError):
        return keys
    return keys + model_ref_keys(cls.Params)


def expand_seeds(check: ExpansionChecker, suite: SeededSuite) -> None:
    """Replace every intervention model by its replicas, one per seed of ``[suite] seeds``."""
    seeds = suite.file.suite.seeds
    if not seeds:
        return
    if suite.sweeps:
        check.add(
            ("suite", "seeds"),
            "seeds and sweeps cannot be combined yet: run the sweep at one seed per suite",
        )
        return
    if suite.file.scaling:
        check.add(("suite", "seeds"), "seeds and [[scaling]] cannot be combined yet")
        return
    replicated = [n for n, spec in suite.file.models.items() if spec.source is None]
    ref = suite.file.suite.reference
    if ref in replicated:
        check.add(
            ("suite", "reference"),
            "with seeds the reference is a loaded model (a `source`): every replica is "
            "compared with it",
        )
        return
    models: dict[str, ModelSpec] = {}
    for name, spec in suite.file.models.items():
        if name not in replicated:
            models[name] = spec
            continue
        data = spec.model_dump(by_alias=True, exclude_unset=True)
        refs = [k for k in _ref_keys(spec) if k in data]
        members = []
        for seed in seeds:
            names = {n: replica_name(n, seed) for n in replicated}
            replica = replica_name(name, seed)
            table = {**data, **{k: _rewrite(data[k], names) for k in refs}}
            models[replica] = ModelSpec.model_validate(table)
            suite.seed_of[replica] = seed
            check.members[replica] = check.members.get(name, (name, ""))
            members.append(replica)
            if name in suite.controls:
                suite.controls[replica] = replica_name(suite.controls[name], seed)
        suite.replicas[name] = tuple(members)
        suite.sweeps[name] = Sweep(name, "seed", tuple(seeds), tuple(members))
        suite.controls.pop(name, None)
    suite.file.models = models
