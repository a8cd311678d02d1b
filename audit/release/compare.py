"""Release-to-release regression check: ``audit compare OLD NEW``.

:func:`compare_runs` compares a candidate release's run (NEW) with the last shipped one's (OLD):
two ``results.json`` dicts and their ``samples.jsonl`` rows. Models are matched by name, or by
``pairs`` (NEW name → OLD name). Each (model, evaluator, metric, slice) with a metric row in both
runs gets one comparison row (:class:`audit.results.ComparisonRowT`, ``relation = "release"``,
``model`` the NEW name, ``baseline`` the OLD name): paired on the items both runs judged when
both have samples of the metric (:func:`audit.stats.compare_samples`: McNemar for rates, paired
bootstrap for means; ``n`` counts shared items), else an unpaired difference of the metric rows
(:func:`audit.stats.compare_rows`). ``coverage`` records each metric's item counts, so a reader
can see when the two runs judged different items; ``warnings`` lists what makes the two runs
less comparable (evaluator versions or parameters, item sets, missing samples or models).

Gates (:mod:`audit.release.gates`) are those of the NEW run's suite unless given. The output
dict is what ``comparison.json`` holds; its ``exit_code`` follows the run's rules
(:func:`audit.results.exit_code`): 3 when the NEW run has failed steps, else 1 when a gate
failed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audit.plugins import MetricSpec, Sample
from audit.release.gates import correction_of, gates_of, release_gates
from audit.release.io import (
    KIND,
    CompareError,
    default_out_dir,
    load_run,
    metric_row,
    metric_rows,
    metric_specs,
    pair_models,
    run_info,
    run_models,
    run_samples,
    run_sweeps,
    validate_run,
    write_comparison,
)
from audit.results import SCHEMA_VERSION, ComparisonRowT, Results, exit_code, verdict_of
from audit.stats import ComparisonStats, compare_rows, compare_samples
from audit.suite.schema import GateSpec
from audit.suite.sweeps import Sweep

RELATION = "release"

__all__ = [
    "KIND",
    "CompareError",
    "compare_paths",
    "compare_runs",
    "default_out_dir",
    "load_run",
    "pair_models",
    "validate_run",
    "write_comparison",
]


# --- comparisons ----------------------------------------------------------------------------


def _paired(
    s_old: list[Sample], s_new: list[Sample], spec: MetricSpec | None, old_spec: MetricSpec | None
) -> tuple[dict[str, ComparisonStats], str | None]:
    """Paired stats per slice, or none and why not."""
    if not s_old or not s_new:
        where = "the new run" if s_old else "the old run" if s_new else "either run"
        return {}, f"no samples of the metric in {where}"
    if spec is None:
        return {}, "metric not declared by the new run's evaluator"
    if old_spec is not None and old_spec.kind != spec.kind:
        return {}, f"metric kind {old_spec.kind!r} in the old run, {spec.kind!r} in the new"
    try:
        return {st["slice"]: st for st in compare_samples(s_old, s_new, spec)}, None
    except ValueError as e:
        return {}, f"samples cannot be paired: {e}"


def _compare(
    old: Results,
    new: Results,
    matched: list[tuple[str, str]],
    old_samples: dict[tuple, list[Sample]],
    new_samples: dict[tuple, list[Sample]],
) -> tuple[list[ComparisonRowT], list[dict[str, Any]]]:
    old_rows, new_rows = metric_rows(old), metric_rows(new)
    specs, old_specs = metric_specs(new), metric_specs(old)
    comparisons: list[ComparisonRowT] = []
    coverage: list[dict[str, Any]] = []
    by_model: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for model, ename, metric in new_rows:
        by_model[model].append((ename, metric))
    for n, o in matched:
        for ename, metric in by_model[n]:
            after, before = new_rows[(n, ename, metric)], old_rows.get((o, ename, metric), {})
            slices = [s for s in after if s in before]
            if not slices:
                continue
            spec = specs.get((ename, metric))
            s_old = old_samples.get((o, ename, metric), [])
            s_new = new_samples.get((n, ename, metric), [])
            ids_old, ids_new = {s.item_id for s in s_old}, {s.item_id for s in s_new}
            paired, why = _paired(s_old, s_new, spec, old_specs.get((ename, metric)))
            if why is None and not paired:
                why = "no item judged in both runs"
            coverage.append(
                {
                    "model": n,
                    "baseline": o,
                    "evaluator": ename,
                    "metric": metric,
                    "items_old": len(ids_old) if s_old else None,
                    "items_new": len(ids_new) if s_new else None,
                    "items_shared": len(ids_old & ids_new) if s_old and s_new else None,
                    "paired": bool(paired),
                    "note": why or "",
                }
            )
            hib = (
                spec.higher_is_better
                if spec
                else bool(after[slices[0]].get("higher_is_better", True))
            )
            for sl in slices:
                stats = paired.get(sl) or compare_rows(
                    metric_row(metric, before[sl]), metric_row(metric, after[sl])
                )
                comparisons.append(
                    ComparisonRowT(
                        model=n,
                        baseline=o,
                        relation=RELATION,
                        evaluator=ename,
                        metric=metric,
                        higher_is_better=hib,
                        **stats,
                    )
                )
    return comparisons, coverage


# --- warnings -------------------------------------------------------------------------------


def _evaluator_warnings(old: Results, new: Results) -> list[str]:
    def index(run: Results) -> dict[str, Mapping[str, Any]]:
        return {e.name: e.model_dump() for e in run.evaluators}

    before, after, out = index(old), index(new), []
    for name, e in after.items():
        if name not in before:
            continue
        b = before[name]
        for key in ("kind", "version"):
            if b.get(key) != e.get(key):
                out.append(
                    f"evaluator {name!r}: {key} {b.get(key)!r} in the old run, {e.get(key)!r} "
                    "in the new run; its values may not be comparable"
                )
        p0, p1 = b.get("params") or {}, e.get("params") or {}
        changed = sorted(k for k in {*p0, *p1} if p0.get(k) != p1.get(k))
        if changed:
            detail = "; ".join(f"{k}: {p0.get(k)!r} → {p1.get(k)!r}" for k in changed)
            out.append(f"evaluator {name!r}: parameters differ between the runs ({detail})")
    return out


def _coverage_warnings(coverage: list[dict[str, Any]]) -> list[str]:
    differ: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    unpaired: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for c in coverage:
        key = (c["evaluator"], c["metric"])
        if not c["paired"]:
            unpaired[key].append(c)
        elif not c["items_old"] == c["items_new"] == c["items_shared"]:
            differ[key].append(c)
    out = []
    for (ename, metric), rows in differ.items():
        c = rows[0]
        out.append(
            f"{ename}.{metric}: the runs judged different items for {len(rows)} model(s); "
            f"paired on the shared items only (e.g. {c['model']}: {c['items_old']} old, "
            f"{c['items_new']} new, {c['items_shared']} shared)"
        )
    for (ename, metric), rows in unpaired.items():
        out.append(
            f"{ename}.{metric}: unpaired for {len(rows)} model(s) — no interval, no test, "
            f"and significant-only gates cannot fire (e.g. {rows[0]['model']}: {rows[0]['note']})"
        )
    return out


def _run_warnings(
    old: Results,
    new: Results,
    unmatched: Mapping[str, list[str]],
    samples: tuple[Sequence[Any], Sequence[Any]],
) -> list[str]:
    out = _evaluator_warnings(old, new)
    for label, run, rows in (("old", old, samples[0]), ("new", new, samples[1])):
        if run.metrics and not rows:
            out.append(f"the {label} run has no samples: its comparisons are unpaired")
    if old.schema_version != new.schema_version:
        out.append(
            f"the runs have results schemas {old.schema_version} (old) and "
            f"{new.schema_version} (new); both are read as {SCHEMA_VERSION}"
        )
    if old.failures:
        out.append(f"the old run had {len(old.failures)} failed step(s)")
    if new.verdict == "fail":
        out.append("the new run's own gates failed (see its report)")
    for side in ("old", "new"):
        if unmatched[side]:
            names = ", ".join(unmatched[side])
            out.append(f"models only in the {side} run (not compared): {names}")
    return out


# --- the comparison -------------------------------------------------------------------------


def compare_runs(
    old: Results | Mapping[str, Any],
    old_samples: Sequence[Mapping[str, Any]],
    new: Results | Mapping[str, Any],
    new_samples: Sequence[Mapping[str, Any]],
    *,
    pairs: Mapping[str, str] | None = None,
    gates: Sequence[GateSpec] | None = None,
    sweeps: Mapping[str, Sweep] | None = None,
    correction: str | None = None,
    old_path: str | None = None,
    new_path: str | None = None,
) -> dict[str, Any]:
    """The release comparison of run ``new`` with run ``old`` (the ``comparison.json`` dict).

    ``pairs`` maps NEW model names to OLD ones (others match by name). ``gates`` default to the
    NEW run's suite's; ``sweeps`` adds sweep definitions to those recorded in the runs' models,
    for gate patterns; ``correction`` (default: the NEW run's suite's) adjusts the p-values of
    ``significant`` gates for multiplicity. Raises :class:`CompareError` on input that is not a
    run's results.
    """
    old_run = validate_run(old, old_path or "old run")
    new_run = validate_run(new, new_path or "new run")
    return _comparison(
        old_run, old_samples, new_run, new_samples, pairs, gates, sweeps, correction,
        old_path, new_path,
    )  # fmt: skip


def _comparison(
    old: Results,
    old_samples: Sequence[Mapping[str, Any]],
    new: Results,
    new_samples: Sequence[Mapping[str, Any]],
    pairs: Mapping[str, str] | None,
    gates: Sequence[GateSpec] | None,
    sweeps: Mapping[str, Sweep] | None,
    correction: str | None,
    old_path: str | None,
    new_path: str | None,
) -> dict[str, Any]:
    matched = pair_models(old, new, pairs)
    comparisons, coverage = _compare(
        old, new, matched, run_samples(old_samples, "old"), run_samples(new_samples, "new")
    )
    partners = {o for _, o in matched}
    unmatched = {
        "old": [o for o in run_models(old) if o not in partners],
        "new": [n for n in run_models(new) if n not in dict(matched)],
    }
    warnings = _run_warnings(old, new, unmatched, (old_samples, new_samples))
    warnings += _coverage_warnings(coverage)
    try:
        specs = gates_of(new) if gates is None else list(gates)
    except ValueError as e:
        raise CompareError(f"{new_path or 'new run'}: its suite's gates are malformed ({e})") from e
    all_sweeps = {**run_sweeps(old), **run_sweeps(new), **(sweeps or {})}
    gate_rows = release_gates(
        specs,
        old,
        new,
        dict(matched),
        comparisons,
        all_sweeps,
        warnings=warnings,
        correction=correction_of(new) if correction is None else correction,
    )
    failures = new.rows("failures")
    code = exit_code(gate_rows, failures)
    suite = new.suite
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "verdict": verdict_of(code),
        "exit_code": code,
        "suite": {"name": suite.name, "title": suite.title or suite.name},
        "old": run_info(old, old_path),
        "new": run_info(new, new_path),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "gates_from": "the new run's suite" if gates is None else "given by the caller",
        "pairs": [{"new": n, "old": o} for n, o in matched],
        "unmatched": unmatched,
        "evaluators": new.rows("evaluators"),
        "comparisons": comparisons,
        "coverage": coverage,
        "gates": gate_rows,
        "failures": failures,
        "warnings": warnings,
    }


def compare_paths(
    old: str | Path,
    new: str | Path,
    *,
    pairs: Mapping[str, str] | None = None,
    suite: str | Path | None = None,
) -> dict[str, Any]:
    """:func:`compare_runs` on two runs on disk: each a ``results.json`` or its directory, with
    ``samples.jsonl`` read from beside it when present. ``suite``: take the gates (and sweeps)
    from this suite file instead of the NEW run's suite. Raises :class:`CompareError`, or
    :class:`audit.suite.checks.SuiteError` for an invalid suite file.
    """
    old_run, old_samples, old_path = load_run(old)
    new_run, new_samples, new_path = load_run(new)
    gates, sweeps, correction = None, None, None
    if suite is not None:
        from audit.suite.checks import load_suite

        loaded = load_suite(suite, release=True)
        gates, sweeps = list(loaded.file.gates), loaded.sweeps
        correction = loaded.file.suite.correction
    result = compare_runs(
        old_run,
        old_samples,
        new_run,
        new_samples,
        pairs=pairs,
        gates=gates,
        sweeps=sweeps,
        correction=correction,
        old_path=str(old_path),
        new_path=str(new_path),
    )
    if suite is not None:
        result["gates_from"] = f"suite file {suite}"
    return result
