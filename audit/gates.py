"""Release gates: rules on metrics → verdict rows, and the run's exit code."""

from __future__ import annotations

from collections.abc import Sequence

from audit.plan import Plan
from audit.results import ComparisonRowT, GateRowT, MetricRowT
from audit.suite import GateSpec, match_models

EXIT_OK, EXIT_GATE_FAILED, EXIT_INVALID, EXIT_CRASHED = 0, 1, 2, 3
_TOL = 1e-12


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


def gate_name(gate: GateSpec, index: int) -> str:
    """A gate's ``name``, else one made from its position, metric and rule."""
    rule, threshold = gate.rule
    return gate.name or f"gate {index + 1}: {gate.metric} {rule} {threshold:g}"


def absolute_gate(gate: GateSpec, name: str, model: str, value: float | None, why: str) -> GateRowT:
    """The row of a ``min`` / ``max`` rule on ``model``'s ``value`` (None: fails, with ``why``)."""
    rule, threshold = gate.rule
    if value is None:
        passed, detail = False, f"no value for {gate.metric} [{gate.slice}] on {model}: {why}"
    else:
        passed = value >= threshold - _TOL if rule == "min" else value <= threshold + _TOL
        op = ("≥" if rule == "min" else "≤") if passed else ("<" if rule == "min" else ">")
        detail = f"{gate.metric} [{gate.slice}] = {_fmt(value)} {op} {rule} {threshold:g}"
    return GateRowT(
        name=name,
        rule=f"{rule} {threshold:g}",
        model=model,
        baseline=None,
        passed=passed,
        observed=value,
        threshold=threshold,
        detail=detail,
    )


def relative_gate(
    gate: GateSpec,
    name: str,
    model: str,
    baseline: str,
    row: ComparisonRowT | None,
    why: str,
    *,
    versus: str | None = None,
) -> GateRowT:
    """The row of a ``max_drop`` / ``max_rise`` rule on the comparison ``row`` of ``model``
    with ``baseline`` (None: fails, with ``why``), respecting ``significant`` / ``alpha``.

    ``versus`` names the baseline in the rule text (default: ``baseline``).
    """
    rule, threshold = gate.rule
    rule_text = f"{rule} {threshold:g} vs {versus or baseline}" + (
        f" (significant at α={gate.alpha:g})" if gate.significant else ""
    )
    out = GateRowT(
        name=name,
        rule=rule_text,
        model=model,
        baseline=baseline,
        passed=False,
        observed=None,
        threshold=threshold,
        detail="",
    )
    if row is None:
        out["detail"] = f"no comparison of {gate.metric} [{gate.slice}] with {baseline}: {why}"
        return out
    change = row["before"] - row["after"] if rule == "max_drop" else row["after"] - row["before"]
    out["observed"] = change
    exceeds = change > threshold + _TOL
    p = row["p_value"]
    word = "drop" if rule == "max_drop" else "rise"
    detail = (
        f"{gate.metric} [{gate.slice}] {_fmt(row['before'])} → {_fmt(row['after'])}: "
        f"{word} {_fmt(change)} {'>' if exceeds else '≤'} {threshold:g}"
        f" (95% CI of Δ [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}], "
        f"p={_fmt(p)}, {row['test']}, n={row['n']})"
    )
    fires = exceeds
    if gate.significant and exceeds:
        fires = p is not None and p < gate.alpha
        detail += (
            f"; significant at α={gate.alpha:g}"
            if fires
            else f"; not significant at α={gate.alpha:g}, gate holds"
        )
    out["passed"] = not fires
    out["detail"] = detail
    return out


def _baselines_for(gate: GateSpec, plan: Plan, model: str) -> list[str]:
    if gate.vs == "reference":
        ref = plan.suite.reference
        return [] if ref == model else [ref]
    if gate.vs == "parent":
        return list(plan.model(model).inputs)
    return [] if gate.vs == model else [gate.vs]


def gated_models(plan: Plan, gate: GateSpec) -> list[str]:
    """The models a gate checks: those its ``models`` select that its evaluator runs on."""
    suite = plan.suite
    ename = gate.metric.partition(".")[0]
    return match_models(gate.models, suite.evaluated_models(ename), suite.sweeps)


def gate_baselines(plan: Plan, model: str) -> list[str]:
    """The models that gates naming a model in ``vs`` compare ``model`` with, in gate order."""
    out: list[str] = []
    for gate in plan.suite.file.gates:
        if not gate.relative or gate.vs in ("reference", "parent") or gate.vs == model:
            continue
        if gate.vs not in out and model in gated_models(plan, gate):
            out.append(gate.vs)
    return out


def evaluate_gates(
    plan: Plan,
    metrics: Sequence[MetricRowT],
    comparisons: Sequence[ComparisonRowT],
    model_status: dict[str, str],
) -> list[GateRowT]:
    """One row per gate × model (× baseline for relative rules)."""
    rows: list[GateRowT] = []
    suite = plan.suite
    for i, gate in enumerate(suite.file.gates):
        name = gate_name(gate, i)
        ename, _, metric = gate.metric.partition(".")
        models = gated_models(plan, gate)
        for model in models:
            status = model_status.get(model, "skipped")
            why = "the evaluation failed" if status == "ok" else f"model step {status}"
            if not gate.relative:
                value = next(
                    (
                        r["value"]
                        for r in metrics
                        if (r["model"], r["evaluator"], r["metric"], r["slice"])
                        == (model, ename, metric, gate.slice)
                    ),
                    None,
                )
                rows.append(absolute_gate(gate, name, model, value, why))
                continue
            for baseline in _baselines_for(gate, plan, model):
                row = next(
                    (
                        c
                        for c in comparisons
                        if (c["model"], c["baseline"], c["evaluator"], c["metric"], c["slice"])
                        == (model, baseline, ename, metric, gate.slice)
                    ),
                    None,
                )
                rows.append(relative_gate(gate, name, model, baseline, row, why))
    return rows


def exit_code(gates: Sequence[GateRowT], failures: Sequence[object]) -> int:
    """3 if a step crashed, else 1 if a gate failed, else 0."""
    if failures:
        return EXIT_CRASHED
    return EXIT_GATE_FAILED if any(not g["passed"] for g in gates) else EXIT_OK
