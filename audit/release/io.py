"""Inputs and outputs of ``audit compare`` (see :mod:`audit.release.compare`).

Inputs: a run's ``results.json`` and ``samples.jsonl``, checked enough to fail early and
clearly (:class:`CompareError`, exit code 2) on anything else, and the pieces of a run a
comparison uses. Outputs: ``comparison.json`` and its page ``index.html``.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from audit.errors import InputError
from audit.files import atomic_write_text
from audit.plugins import MetricRow, MetricSpec, Sample
from audit.results import Results, ResultsError, load_samples, parse_results, read_json_file
from audit.suite.sweeps import Sweep

KIND = "release_comparison"
"""``kind`` of a comparison.json, which is not a run's results."""
COMPARISON = "comparison.json"


class CompareError(InputError, ValueError):
    """An input that is not a run's results (exit code 2)."""


def validate_run(run: Any, label: str) -> Results:
    """``run`` read as a run's ``results.json`` (:func:`audit.results.parse_results`), else
    :class:`CompareError`."""
    if isinstance(run, Results):
        kind = (run.model_extra or {}).get("kind")
    else:
        kind = run.get("kind") if isinstance(run, Mapping) else None
    if kind == KIND:
        raise CompareError(f"{label} is a comparison.json; compare two runs' results.json files")
    try:
        return parse_results(run, label, written=True)
    except ResultsError as e:
        raise CompareError(str(e)) from None


def load_run(path: str | Path) -> tuple[Results, list[dict[str, Any]], Path]:
    """A run's results, its samples (none without ``samples.jsonl`` beside it) and the path read.

    ``path`` is a ``results.json`` or the directory holding one. Both files are read with
    :mod:`audit.results`' checked readers (a samples file of another run is refused). Raises
    :class:`CompareError`.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    try:
        run = validate_run(read_json_file(p, "results.json"), str(p))
        sp = p.with_name("samples.jsonl")
        present = sp.exists() or sp.is_symlink()
        samples = load_samples(sp, run.run_id) if present else []
    except ResultsError as e:
        raise CompareError(str(e)) from None
    return run, [dict(s) for s in samples], p


def run_models(run: Results) -> dict[str, str]:
    """Model name → status: the models table first, then models seen only in metric rows."""
    out: dict[str, str] = {m.name: m.status for m in run.models}
    for r in run.metrics:
        out.setdefault(r.model, "ok")
    return out


def run_sweeps(run: Results) -> dict[str, Sweep]:
    """The sweeps of a run, rebuilt from its models' ``sweep`` columns."""
    members: dict[str, tuple[str, list[Any], list[str]]] = {}
    for m in run.models:
        sweep = m.sweep
        if sweep is not None and "base" in sweep:
            entry = members.setdefault(str(sweep["base"]), (str(sweep.get("param")), [], []))
            entry[1].append(sweep.get("value"))
            entry[2].append(m.name)
    return {
        base: Sweep(base, param, tuple(values), tuple(names))
        for base, (param, values, names) in members.items()
    }


def run_info(run: Results, path: str | None) -> dict[str, Any]:
    """Who a run is: its suite, where it was read from, when it ran, and its own verdict."""
    suite = run.suite
    env = dict(run.environment)
    return {
        "name": suite.name,
        "title": suite.title or suite.name,
        "hash": suite.hash,
        "suite_path": suite.path,
        "path": path,
        "started_at": env.get("started_at"),
        "finished_at": env.get("finished_at"),
        "verdict": run.verdict,
        "exit_code": run.exit_code,
        "audit": env.get("audit"),
        "schema_version": run.schema_version,
        "models": len(run_models(run)),
        "failures": len(run.failures),
        "environment": env,
        "evaluators": [
            {"name": e.name, "kind": e.kind, "version": e.version, "params": e.params}
            for e in run.evaluators
        ],
    }


# --- the pieces of a run -------------------------------------------------------------------------


def metric_specs(run: Results) -> dict[tuple[str, str], MetricSpec]:
    """(evaluator, metric) → the metric's declared spec (``evaluators[].metrics``)."""
    out = {}
    for e in run.evaluators:
        for m in e.metrics:
            if m.kind in ("rate", "mean"):
                kind: Literal["rate", "mean"] = "mean" if m.kind == "mean" else "rate"
                spec = MetricSpec(m.name, m.higher_is_better, m.description, kind)
                out[(e.name, spec.name)] = spec
    return out


def metric_rows(run: Results) -> dict[tuple[str, str, str], dict[str, Mapping]]:
    """(model, evaluator, metric) → slice → metric row, in the run's order."""
    out: dict[tuple[str, str, str], dict[str, Mapping]] = defaultdict(dict)
    for r in run.rows("metrics"):
        out[(r["model"], r["evaluator"], r["metric"])][r["slice"]] = r
    return out


def run_samples(rows: Sequence[Mapping[str, Any]], label: str) -> dict[tuple, list[Sample]]:
    """(model, evaluator, metric) → its samples. Raises :class:`CompareError` on a bad row."""
    out: dict[tuple, list[Sample]] = defaultdict(list)
    for i, r in enumerate(rows):
        try:
            sample = Sample(
                metric=str(r["metric"]),
                item_id=str(r["item_id"]),
                input=str(r.get("input", "")),
                output=str(r.get("output", "")),
                value=float(r["value"]),
                slice=str(r.get("slice", "all")),
                judgment=r.get("judgment"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CompareError(f"{label} samples[{i}]: not a sample row ({e})") from e
        out[(str(r["model"]), str(r["evaluator"]), sample.metric)].append(sample)
    return out


def metric_row(metric: str, r: Mapping[str, Any]) -> MetricRow:
    """A metric row of results.json as :class:`audit.plugins.MetricRow` (no interval)."""
    return MetricRow(metric, float(r["value"]), None, None, int(r.get("n") or 0), str(r["slice"]))


def pair_models(
    old: Results, new: Results, pairs: Mapping[str, str] | None
) -> list[tuple[str, str]]:
    """(NEW name, OLD name) of every NEW model with an OLD counterpart, in the NEW run's order."""
    old_names, new_names = run_models(old), run_models(new)
    for n, o in (pairs or {}).items():
        if n not in new_names:
            raise CompareError(f"pair {n}={o}: the new run has no model {n!r}")
        if o not in old_names:
            raise CompareError(f"pair {n}={o}: the old run has no model {o!r}")
    return [(n, (pairs or {}).get(n, n)) for n in new_names if (pairs or {}).get(n, n) in old_names]


# --- outputs --------------------------------------------------------------------------------


def default_out_dir(result: Mapping[str, Any], root: Path = Path("reports")) -> Path:
    """``reports/compare-<old suite name>-vs-<new suite name>``, names made filesystem-safe."""

    def safe(info: Any) -> str:
        name = str(info.get("name") or "run") if isinstance(info, Mapping) else "run"
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).lstrip(".")[:80] or "run"

    return root / f"compare-{safe(result.get('old'))}-vs-{safe(result.get('new'))}"


def write_comparison(out_dir: Path, result: Mapping[str, Any]) -> Path:
    """Write ``index.html`` and, last, ``comparison.json`` (each atomically); the page's path."""
    from audit.report.release import render_comparison

    out_dir.mkdir(parents=True, exist_ok=True)
    page = render_comparison(result, out_dir / "index.html")
    text = json.dumps(result, indent=1, ensure_ascii=False)
    atomic_write_text(out_dir / COMPARISON, text)
    return page
