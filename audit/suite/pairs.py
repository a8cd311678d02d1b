"""The (model, baseline) pairs a gate checks: a function of the validated suite alone."""

from __future__ import annotations

from audit.suite.schema import GateSpec
from audit.suite.seeds import replica_name
from audit.suite.suite import Suite
from audit.suite.sweeps import match_models


def gate_pairs(suite: Suite, gate: GateSpec) -> list[tuple[str, str | None]]:
    """(model, baseline) pairs a gate checks; the baseline is ``None`` for ``min`` / ``max``.

    Models: those the gate's ``models`` select among the models its evaluator runs on.
    Baselines: the reference (unless it is the model itself), the model's parents, or the
    model ``vs`` names (unless it is the model itself).
    """
    ename = gate.metric.partition(".")[0]
    if ename not in suite.file.evaluators:
        return []
    models = match_models(gate.models, suite.evaluated_models(ename), suite.sweeps)
    if not gate.relative:
        return [(m, None) for m in models]
    pairs: list[tuple[str, str | None]] = []
    for model in models:
        if gate.vs == "reference":
            baselines = [suite.reference]
        elif gate.vs == "parent":
            baselines = suite.dependencies(model)
        elif gate.vs in suite.replicas and model in suite.seed_of:
            baselines = [replica_name(gate.vs, suite.seed_of[model])]  # the same seed's
        else:
            baselines = [gate.vs]
        pairs += [(model, b) for b in baselines if b != model]
    return pairs
