"""Release gates: rules on metrics → verdict rows (the exit code: :func:`audit.results.exit_code`).

Every gate fails closed: a missing value, a missing comparison, a value that is not a finite
number, a ``significant`` gate without a paired test or a ``non_inferiority`` gate without an
interval all fail, saying why. A gate that checks nothing is a validation error
(:func:`audit.suite.pairs.gate_pairs` finds what it checks, the plan lists each check); should
one reach a run anyway, it fails.

Decision modes (``GateSpec.decision``), for ``max_drop`` / ``max_rise`` on a change Δ with
95% interval [lo, hi] and for ``min`` / ``max`` on a value with its interval:

- ``estimate``: the point estimate against the threshold;
- ``significant``: fires only when the change exceeds the threshold *and* the paired test's
  p-value (adjusted by the run's ``correction``, Holm or Benjamini-Hochberg, over every
  ``significant`` gate row of the run) is below ``alpha``;
- ``non_inferiority``: passes only when the worst end of the 95% interval is within the
  threshold (a one-sided test at 2.5%).

Each relative row's detail also gives the number of paired items the 95% interval would need to
fit within the margin, were the change and the per-item spread to stay as observed
(:func:`n_for_margin`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from audit.results import ComparisonRowT, GateRowT, MetricRowT
from audit.suite.schema import GateSpec

if TYPE_CHECKING:
    from audit.plan import Plan

_TOL = 1e-12
NOTHING = "(nothing)"
"""The ``model`` of the failing row a gate that checked nothing gets."""


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def gate_name(gate: GateSpec, index: int) -> str:
    """A gate's ``name``, else one made from its position, metric and rule."""
    rule, threshold = gate.rule
    return gate.name or f"gate {index + 1}: {gate.metric} {rule} {threshold:g}"


def _rule_text(gate: GateSpec, versus: str | None = None) -> str:
    rule, threshold = gate.rule
    text = f"{rule} {threshold:g}" + (f" vs {versus}" if versus else "")
    if gate.decision == "significant":
        text += f" (significant at α={gate.alpha:g})"
    elif gate.decision == "non_inferiority":
        text += " (non-inferiority: 95% interval within)"
    elif gate.decision == "superiority":
        text += " (superiority: 95% interval strictly within)"
    return text


def _row(gate: GateSpec, name: str, model: str, baseline: str | None, rule: str) -> GateRowT:
    return GateRowT(
        name=name,
        rule=rule,
        model=model,
        baseline=baseline,
        passed=False,
        observed=None,
        threshold=gate.rule[1],
        detail="",
        mode=gate.decision,
        p_value=None,
        p_adjusted=None,
        n_needed=None,
    )


def absolute_gate(
    gate: GateSpec,
    name: str,
    model: str,
    value: float | None,
    why: str,
    interval: tuple[float | None, float | None] = (None, None),
) -> GateRowT:
    """The row of a ``min`` / ``max`` rule on ``model``'s ``value`` (None: fails, with ``why``).

    ``interval`` is the value's 95% interval, which ``non_inferiority`` gates decide on.
    """
    rule, threshold = gate.rule
    out = _row(gate, name, model, None, _rule_text(gate))
    where = f"{gate.metric} [{gate.slice}]"
    if value is None:
        out["detail"] = f"no value for {where} on {model}: {why}"
        return out
    out["observed"] = value
    if not _finite(value):
        out["detail"] = f"{where} = {value} is not a finite number: the gate fails closed"
        return out
    low, high = interval
    if gate.decision in ("non_inferiority", "superiority"):
        worst = low if rule == "min" else high
        if worst is None or not _finite(worst):
            out["detail"] = (
                f"{where} = {_fmt(value)} has no 95% interval, which "
                f"{gate.decision.replace('_', '-')} needs: the gate fails closed"
            )
            return out
        if gate.decision == "superiority":
            passed = worst > threshold + _TOL if rule == "min" else worst < threshold - _TOL
        else:
            passed = worst >= threshold - _TOL if rule == "min" else worst <= threshold + _TOL
        if gate.decision == "superiority":
            op = (">" if rule == "min" else "<") if passed else ("≤" if rule == "min" else "≥")
        else:
            op = ("≥" if rule == "min" else "≤") if passed else ("<" if rule == "min" else ">")
        out["passed"] = passed
        out["detail"] = (
            f"{where} = {_fmt(value)} (95% CI [{_fmt(low)}, {_fmt(high)}]): worst end "
            f"{_fmt(worst)} {op} {rule} {threshold:g}"
        )
        return out
    passed = value >= threshold - _TOL if rule == "min" else value <= threshold + _TOL
    op = ("≥" if rule == "min" else "≤") if passed else ("<" if rule == "min" else ">")
    out["passed"] = passed
    out["detail"] = f"{where} = {_fmt(value)} {op} {rule} {threshold:g}"
    return out


def absolute_gate_on_row(
    gate: GateSpec, name: str, model: str, row: Mapping[str, Any] | None, why: str
) -> GateRowT:
    """:func:`absolute_gate` on a metric row (its value and interval); None: fails with ``why``."""
    if row is None:
        return absolute_gate(gate, name, model, None, why)
    value = row["value"]
    return absolute_gate(
        gate, name, model, None if value is None else float(value), why,
        (row.get("ci_low"), row.get("ci_high")),
    )  # fmt: skip


def n_for_margin(n: int, change: float, worst: float, margin: float) -> int | None:
    """Paired items the 95% interval would need for its worst end to reach ``margin``.

    Assumes the change and the per-item spread stay as observed, so the interval's half-width
    ``worst - change`` shrinks as 1/√n. ``None`` when no n suffices (the change itself is at or
    beyond the margin).
    """
    room = margin - change
    if room <= _TOL:
        return None
    half = max(0.0, worst - change)
    return max(1, math.ceil(n * (half / room) ** 2)) if half > 0 else n


def relative_gate(
    gate: GateSpec,
    name: str,
    model: str,
    baseline: str,
    row: ComparisonRowT | None,
    why: str,
    *,
    versus: str | None = None,
    p_adjusted: float | None = None,
    correction: str = "none",
) -> GateRowT:
    """The row of a ``max_drop`` / ``max_rise`` rule on the comparison ``row`` of ``model``
    with ``baseline`` (None: fails, with ``why``), decided by the gate's mode.

    ``versus`` names the baseline in the rule text (default: ``baseline``); ``p_adjusted`` is
    the row's p-value after the run's multiplicity ``correction`` (default: the raw p-value).
    """
    rule, threshold = gate.rule
    out = _row(gate, name, model, baseline, _rule_text(gate, versus or baseline))
    where = f"{gate.metric} [{gate.slice}]"
    if row is None:
        out["detail"] = f"no comparison of {where} with {baseline}: {why}"
        return out
    drop = rule == "max_drop"
    before, after, low, high = row["before"], row["after"], row["ci_low"], row["ci_high"]
    change = before - after if drop else after - before
    out["observed"] = change
    word = "drop" if drop else "rise"
    if not _finite(before, after, change):
        out["detail"] = (
            f"{where} {before} → {after}: the {word} is not a finite number; the gate fails closed"
        )
        return out
    worst = None
    if low is not None and high is not None and _finite(low, high):
        worst = -low if drop else high
    exceeds = change > threshold + _TOL
    p = row["p_value"]
    detail = (
        f"{where} {_fmt(before)} → {_fmt(after)}: {word} {_fmt(change)} "
        f"{'>' if exceeds else '≤'} {threshold:g} (95% CI of Δ [{_fmt(low)}, {_fmt(high)}], "
        f"p={_fmt(p)}, {row['test']}, n={row['n']})"
    )
    if worst is not None:
        needed = n_for_margin(row["n"], change, worst, threshold)
        out["n_needed"] = needed
        detail += (
            f"; the interval fits the margin at n≈{needed}"
            if needed is not None
            else "; no n fits the margin at this change"
        )
    passed = not exceeds
    if gate.decision == "significant":
        out["p_value"] = p if _finite(p) else None
        used = p_adjusted if p_adjusted is not None else p
        out["p_adjusted"] = used if _finite(used) else None
        label = "p" if correction == "none" else f"{_CORRECTION_NAMES[correction]}-adjusted p"
        if exceeds and not _finite(used):
            detail += "; no paired test (p-value) to decide on: the gate fails closed"
            passed = False
        elif exceeds:
            assert used is not None
            passed = not used < gate.alpha
            verdict = "significant" if not passed else "not significant, gate holds"
            detail += f"; {label}={_fmt(used)}: {verdict} at α={gate.alpha:g}"
    elif gate.decision in ("non_inferiority", "superiority"):
        strict = gate.decision == "superiority"
        if worst is None:
            what = gate.decision.replace("_", "-")
            detail += f"; no 95% interval, which {what} needs: the gate fails closed"
            passed = False
        else:
            passed = worst < threshold - _TOL if strict else worst <= threshold + _TOL
            op = ("<" if strict else "≤") if passed else ("≥" if strict else ">")
            detail += f"; worst {word} in the interval {_fmt(worst)} {op} margin {threshold:g}"
    out["passed"] = passed
    out["detail"] = detail
    return out


_CORRECTION_NAMES = {"holm": "Holm", "bh": "BH", "none": ""}


def nothing_checked(gate: GateSpec, name: str, why: str) -> GateRowT:
    """The failing row of a gate that checked no (model, baseline) pair."""
    out = _row(gate, name, NOTHING, None, _rule_text(gate))
    out["detail"] = f"the gate checked nothing ({why}); a gate with no verdict is not a pass"
    return out


def corrected_p_values(
    gates: Sequence[GateSpec], rows: Sequence[ComparisonRowT | None], correction: str
) -> list[float | None]:
    """Each comparison's p-value after ``correction`` over the ``significant`` gates' rows.

    The family is every (gate, comparison) pair of a ``significant`` gate whose comparison has
    a finite p-value; others get ``None``.
    """
    family = [
        i
        for i, (gate, row) in enumerate(zip(gates, rows, strict=True))
        if gate.decision == "significant" and row is not None and _finite(row["p_value"])
    ]
    from audit.stats import adjust_p_values  # numpy and scipy: not at `audit validate`

    out: list[float | None] = [None] * len(rows)
    raw = [float(rows[i]["p_value"]) for i in family]  # type: ignore[index,arg-type]
    for i, p in zip(family, adjust_p_values(raw, correction), strict=True):
        out[i] = p
    return out


def evaluate_gates(
    plan: Plan,
    metrics: Sequence[MetricRowT],
    comparisons: Sequence[ComparisonRowT],
    model_status: Mapping[str, str],
    pooled: tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]] | None = None,
) -> list[GateRowT]:
    """One row per gate × model (× baseline for relative rules).

    ``pooled``: (metrics, comparisons) pooled over seeds (:mod:`audit.analysis.pooled`). With
    replicated models a gate decides once per model as written (``helpful_lora``, not each
    ``helpful_lora.seedS``), on the pooled rows; its model step counts as ok when every
    replica's is.
    """
    suite = plan.suite
    correction = suite.file.suite.correction
    by_metric: dict[tuple[str, str, str, str], Any] = {
        (r["model"], r["evaluator"], r["metric"], r["slice"]): r for r in metrics
    }
    by_pair: dict[tuple[str, str, str, str, str], Any] = {
        (c["model"], c["baseline"], c["evaluator"], c["metric"], c["slice"]): c for c in comparisons
    }
    todo: list[tuple[int, GateSpec, str, str | None]] = [
        (c.gate, suite.file.gates[c.gate], c.model, c.baseline) for c in plan.gate_checks
    ]
    if suite.replicas:
        base = suite.base_of
        seen: dict[tuple[int, str, str | None], GateSpec] = {}
        for i, g, m, b in todo:
            seen.setdefault((i, base(m), None if b is None else base(b)), g)
        todo = [(i, g, m, b) for (i, m, b), g in seen.items()]
        pooled_metrics, pooled_comparisons = pooled or ((), ())
        by_metric.update(
            {(r["model"], r["evaluator"], r["metric"], r["slice"]): r for r in pooled_metrics}
        )
        by_pair.update(
            {
                (c["model"], c["baseline"], c["evaluator"], c["metric"], c["slice"]): c
                for c in pooled_comparisons
            }
        )
        statuses = dict(model_status)
        for name, members in suite.replicas.items():
            states = [model_status.get(m, "skipped") for m in members]
            statuses[name] = next((s for s in states if s != "ok"), "ok")
        model_status = statuses
    found = [by_pair.get((m, b, *metric_key(g))) if b is not None else None for _, g, m, b in todo]
    adjusted = corrected_p_values([g for _, g, _, _ in todo], found, correction)
    rows: list[GateRowT] = []
    for i, gate in enumerate(suite.file.gates):
        name = gate_name(gate, i)
        mine = [k for k, t in enumerate(todo) if t[0] == i]
        if not mine:
            rows.append(nothing_checked(gate, name, "no model with a baseline other than itself"))
        for k in mine:
            _, _, model, baseline = todo[k]
            status = model_status.get(model, "skipped")
            why = "the evaluation failed" if status == "ok" else f"model step {status}"
            if baseline is None:
                metric = by_metric.get((model, *metric_key(gate)))
                rows.append(absolute_gate_on_row(gate, name, model, metric, why))
                continue
            checked, versus = gate, None
            if gate.of_gain:  # the threshold in metric units, for this baseline
                scaled = gain_share_gate(gate, name, model, baseline, by_pair, suite.reference)
                if isinstance(scaled, dict):
                    rows.append(scaled)
                    continue
                checked, versus = scaled
            rows.append(
                relative_gate(
                    checked,
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


def gain_share_gate(
    gate: GateSpec,
    name: str,
    model: str,
    baseline: str,
    by_pair: Mapping[tuple[str, str, str, str, str], Any],
    reference: str,
) -> tuple[GateSpec, str] | GateRowT:
    """An ``of_gain`` gate with its threshold in metric units: the share times the baseline's
    own change against the ``reference`` model (in the metric's better direction); or the
    failing row when that comparison is missing or the baseline gained nothing."""
    ename, metric, slice_ = metric_key(gate)
    gained = by_pair.get((baseline, reference, ename, metric, slice_))
    rule, share = gate.rule
    out = _row(gate, name, model, baseline, f"{rule} ≤ {share:g} × the gain of {baseline}")
    if gained is None:
        out["detail"] = f"no comparison of {baseline} with {reference}: its gain is unknown"
        return out
    sign = 1.0 if gained.get("higher_is_better", True) else -1.0
    gain = sign * float(gained["delta"])
    if not math.isfinite(gain) or gain <= 0:
        out["detail"] = (
            f"{baseline} gained nothing on {gate.metric} [{slice_}] over {reference} "
            f"(change {_fmt(gained['delta'])}): no gain to keep a share of; the gate fails closed"
        )
        return out
    threshold = share * gain
    versus = f"{baseline} ({share:g} × its gain {_fmt(gain)} = {_fmt(threshold)})"
    return gate.model_copy(update={rule: threshold}), versus


def metric_key(gate: GateSpec) -> tuple[str, str, str]:
    """(evaluator, metric, slice) of the rows a gate reads."""
    ename, _, metric = gate.metric.partition(".")
    return ename, metric, gate.slice
