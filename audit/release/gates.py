"""Release gates of ``audit compare`` (see :mod:`audit.release.compare`).

The gates are a suite's ``[[gates]]`` (by default the NEW run's). For a release comparison:

- relative rules (``max_drop`` / ``max_rise``) apply to each gated model's OLD → NEW change:
  the baseline is the same model (or its ``pairs`` partner) in the OLD run, whatever the gate's
  ``vs`` says; ``mode``, ``alpha`` and the suite's ``correction`` hold as in a run (an unpaired
  change has no p-value and no interval, so a ``significant`` or ``non_inferiority`` gate whose
  change exceeds its threshold fails closed on it);
- absolute rules (``min`` / ``max``) apply to the NEW run's values;
- a gate's ``models`` patterns are resolved (:func:`audit.suite.sweeps.match_models`,
  sweeps included)
  over the models its evaluator ran on in either run, OLD names translated to NEW ones by the
  pairs; a gated model missing from a run fails the gate with a detail that says so, and a gate
  that selects no model fails (a gate with no verdict is not a pass).

The row logic is :func:`audit.analysis.gates.absolute_gate` /
:func:`audit.analysis.gates.relative_gate`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from audit.analysis.gates import (
    absolute_gate_on_row,
    corrected_p_values,
    gate_name,
    metric_key,
    nothing_checked,
    relative_gate,
)
from audit.release.io import run_models
from audit.results import ComparisonRowT, GateRowT, Results
from audit.suite.schema import GateSpec
from audit.suite.sweeps import Sweep, match_models


def gates_of(run: Results) -> list[GateSpec]:
    """The gates of a run's suite (``suite.parsed.gates``). Raises ``ValueError`` if malformed."""
    raw = run.suite.parsed.get("gates")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError("suite.parsed.gates is not a list")
    return [GateSpec.model_validate(g) for g in raw]


def _evaluated(run: Results, evaluator: str, sweeps: Mapping[str, Sweep]) -> list[str]:
    """The models ``evaluator`` ran on in ``run``: its suite's ``models`` patterns, else the
    models with metric rows of it."""
    names = list(run_models(run))
    evaluators = run.suite.parsed.get("evaluators")
    spec = evaluators.get(evaluator) if isinstance(evaluators, Mapping) else None
    if isinstance(spec, Mapping):
        patterns = spec.get("models")
        return names if patterns is None else match_models(patterns, names, sweeps)
    seen = {r.model for r in run.metrics if r.evaluator == evaluator}
    return [n for n in names if n in seen]


def _why(status: str | None, side: str, model: str) -> str | None:
    if status is None:
        return f"{model} is not in the {side} run"
    return None if status == "ok" else f"the model step of {model} {status} in the {side} run"


def _gated(
    gate: GateSpec,
    evaluator: str,
    old: Results,
    new: Results,
    to_new: Mapping[str, str],
    sweeps: Mapping[str, Sweep],
) -> list[str]:
    """The NEW names of the models a gate checks: those its patterns select among the models
    ``evaluator`` ran on in either run (an OLD model selected by its OLD name counts as its NEW
    partner), then each plain name (no ``*`` or ``?``) that is in neither run, to fail."""
    new_eval, old_eval = _evaluated(new, evaluator, sweeps), _evaluated(old, evaluator, sweeps)
    candidates = list(dict.fromkeys([*new_eval, *(to_new.get(o, o) for o in old_eval)]))
    chosen = set(match_models(gate.models, candidates, sweeps))
    chosen |= {to_new.get(o, o) for o in match_models(gate.models, old_eval, sweeps)}
    known = {*run_models(new), *run_models(old), *sweeps}
    absent = [p for p in gate.models if not any(c in p for c in "*?") and p not in known]
    return [c for c in candidates if c in chosen] + [p for p in absent if p not in chosen]


def correction_of(run: Results) -> str:
    """The multiplicity correction of a run's suite (``suite.parsed.suite.correction``)."""
    meta = run.suite.parsed.get("suite")
    value = meta.get("correction") if isinstance(meta, Mapping) else None
    return value if value in ("holm", "bh", "none") else "none"


def release_gates(
    gates: Sequence[GateSpec],
    old: Results,
    new: Results,
    matched: Mapping[str, str],
    comparisons: Sequence[ComparisonRowT],
    sweeps: Mapping[str, Sweep],
    *,
    warnings: list[str],
    correction: str = "none",
) -> list[GateRowT]:
    """One row per gate × gated model (see :func:`_gated`). ``matched`` maps NEW model names
    to their OLD partners; a gate that selects no model fails, and adds to ``warnings``."""
    old_status, new_status = run_models(old), run_models(new)
    to_new = {o: n for n, o in matched.items()}
    rows_by_key = {(c["model"], c["evaluator"], c["metric"], c["slice"]): c for c in comparisons}
    values = {(r["model"], r["evaluator"], r["metric"], r["slice"]): r for r in new.rows("metrics")}
    todo = [
        (i, gate, model)
        for i, gate in enumerate(gates)
        for model in _gated(gate, gate.metric.partition(".")[0], old, new, to_new, sweeps)
    ]
    found = [
        rows_by_key.get((m, *metric_key(g))) if g.relative and m in matched else None
        for _, g, m in todo
    ]
    adjusted = corrected_p_values([g for _, g, _ in todo], found, correction)
    rows: list[GateRowT] = []
    for i, gate in enumerate(gates):
        name = gate_name(gate, i)
        ename = gate.metric.partition(".")[0]
        mine = [k for k, t in enumerate(todo) if t[0] == i]
        if not mine:
            why = f"it selects no model that {ename!r} ran on in either run"
            warnings.append(f"gate {name!r}: {why}")
            rows.append(nothing_checked(gate, name, why))
        for k in mine:
            model = todo[k][2]
            if not gate.relative:
                why = _why(new_status.get(model), "new", model) or (
                    f"no row for {gate.metric} [{gate.slice}] in the new run"
                )
                metric = values.get((model, *metric_key(gate)))
                rows.append(absolute_gate_on_row(gate, name, model, metric, why))
                continue
            baseline = matched.get(model, model)
            why = (
                _why(new_status.get(model), "new", model)
                or _why(old_status.get(baseline), "old", baseline)
                or "the metric or slice is missing from one of the runs"
            )
            versus = f"{baseline} in the old run"
            rows.append(
                relative_gate(
                    gate,
                    name,
                    model,
                    baseline,
                    found[k],
                    why,
                    versus=versus,
                    p_adjusted=adjusted[k],
                    correction=correction,
                )
            )
    return rows
