"""Assemble a run's results (the contract in :mod:`audit.results`) and write its outputs."""

from __future__ import annotations

import json
import platform
import sys
import traceback
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from audit import __version__
from audit.analysis.baselines import all_comparisons
from audit.analysis.gates import evaluate_gates
from audit.analysis.pooled import pooled_comparisons, pooled_metrics
from audit.analysis.scaling import scaling_fits
from audit.analysis.tradeoffs import tradeoff_tables
from audit.faults import fault_point
from audit.files import atomic_write_text
from audit.plan import Plan, params_json
from audit.plugins import RunData, hook
from audit.results import (
    SCHEMA_VERSION,
    MetricRowT,
    ModelRowT,
    Results,
    SampleRowT,
    exit_code,
    verdict_of,
)
from audit.runner import RunOutcome

PACKAGES = ("torch", "transformers", "peft", "lm-eval", "pandas", "numpy", "scipy")


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def environment(seed: int, device: str, started: datetime) -> dict[str, Any]:
    """Versions and settings that produced a run."""
    return {
        "audit": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        **{dist.replace("-", "_"): _version(dist) for dist in PACKAGES},
        "seed": seed,
        "device": device,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _sweep_of(plan: Plan, name: str) -> dict[str, Any] | None:
    member = plan.suite.sweep_member(name)
    if member is None:
        return None
    sweep, value = member
    return {"base": sweep.base, "param": sweep.param, "value": value}


def _models(plan: Plan, outcome: RunOutcome) -> list[ModelRowT]:
    return [
        ModelRowT(
            name=s.name,
            key=s.key,
            parents=list(s.inputs),
            source=s.spec.source,
            intervention=s.spec.intervention,
            params=params_json(s.params),
            status=outcome.model_status.get(s.name, "skipped"),
            training=outcome.model_info.get(s.name),
            sweep=_sweep_of(plan, s.name),
        )
        for s in plan.models
    ]


def _evaluators(plan: Plan) -> list[dict[str, Any]]:
    out = []
    for name, spec in plan.suite.file.evaluators.items():
        cls = plan.evaluator_classes[spec.kind]
        out.append(
            {
                "name": name,
                "kind": spec.kind,
                "version": cls.version,
                "params": params_json(plan.suite.evaluator_params.get(name)),
                "metrics": [asdict(m) for m in cls.metrics],
            }
        )
    return out


def _metrics(plan: Plan, outcome: RunOutcome) -> list[MetricRowT]:
    rows: list[MetricRowT] = []
    for (model, ename), result in outcome.results.items():
        specs = {
            m.name: m
            for m in plan.evaluator_classes[plan.suite.file.evaluators[ename].kind].metrics
        }
        for m in result.metrics:
            spec = specs.get(m.metric)
            rows.append(
                MetricRowT(
                    model=model,
                    evaluator=ename,
                    metric=m.metric,
                    slice=m.slice,
                    value=m.value,
                    ci_low=m.ci_low,
                    ci_high=m.ci_high,
                    n=m.n,
                    higher_is_better=spec.higher_is_better if spec else True,
                )
            )
    return rows


def _samples(outcome: RunOutcome, run_id: str) -> list[SampleRowT]:
    """Every sample as a row; ``endpoint`` only where a model behind an endpoint answered."""
    rows = []
    for (model, ename), result in outcome.results.items():
        for s in result.samples:
            fields = {k: v for k, v in asdict(s).items() if k != "endpoint" or v is not None}
            rows.append(SampleRowT(run_id=run_id, model=model, evaluator=ename, **fields))  # type: ignore[typeddict-item]
    return rows


def _analyses(
    plan: Plan,
    models: list[ModelRowT],
    metrics: list[MetricRowT],
    samples: list[SampleRowT],
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Every evaluator kind's cross-model analysis (its ``analyze`` hook), run once per kind
    over that kind's evaluators: the tables by name, and a failure row per analysis that
    raised (the run then exits 3, its other outputs written)."""
    suite = plan.suite
    by_kind: dict[str, dict[str, Any]] = {}
    for name, spec in suite.file.evaluators.items():
        by_kind.setdefault(spec.kind, {})[name] = suite.evaluator_params.get(name)
    tables: dict[str, list[dict[str, Any]]] = {}
    failures: list[dict[str, Any]] = []
    for kind, evaluators in by_kind.items():
        analyze = hook(plan.evaluator_classes[kind], "analyze")
        if analyze is None:
            continue
        run = RunData(
            evaluators,
            models,
            metrics,
            samples,
            suite.seed,
            suite.reference,
            replicas={n: list(r) for n, r in suite.replicas.items()},
        )
        try:
            found = analyze(run)
        except Exception as e:
            step = f"analysis:{kind}"
            failures.append({"step": step, "error": f"{type(e).__name__}: {e}",
                             "traceback": traceback.format_exc()})  # fmt: skip
            continue
        for table, rows in found.items():
            tables.setdefault(table, []).extend(rows)
    return tables, failures


def assemble(
    plan: Plan, outcome: RunOutcome, started: datetime, device: str
) -> tuple[dict[str, Any], list[SampleRowT]]:
    """The results.json payload and the samples of a finished run."""
    suite = plan.suite
    metrics = _metrics(plan, outcome)
    comparisons = all_comparisons(plan, outcome.results)
    pooled: dict[str, list[dict[str, Any]]] = {"metrics": [], "comparisons": []}
    if suite.replicas:
        pooled = {
            "metrics": pooled_metrics(plan, outcome.results, metrics),
            "comparisons": pooled_comparisons(plan, outcome.results, comparisons),
        }
    gates = evaluate_gates(
        plan,
        metrics,
        comparisons,
        outcome.model_status,
        (pooled["metrics"], pooled["comparisons"]),
    )
    failures = [asdict(f) for f in outcome.failures]
    models = _models(plan, outcome)
    scaling = scaling_fits(
        suite.file.scaling,
        models,
        comparisons,
        {(m["evaluator"], m["metric"]): m["higher_is_better"] for m in metrics},
    )
    run_id = uuid.uuid4().hex  # written into both files; readers check they agree
    samples = _samples(outcome, run_id)
    analyses, broken = _analyses(plan, models, metrics, samples)
    failures += broken
    code = exit_code(gates, failures)
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "verdict": verdict_of(code),
        "exit_code": code,
        "suite": {
            "name": suite.name,
            "path": str(suite.path),
            "hash": suite.hash,
            "text": suite.text,
            "reference": suite.reference,
            "parsed": suite.file.model_dump(mode="json", by_alias=True, exclude_none=True),
            "title": suite.file.report.title or suite.name,
        },
        "environment": environment(suite.seed, device, started),
        "models": models,
        "evaluators": _evaluators(plan),
        "metrics": metrics,
        "comparisons": comparisons,
        "pooled": pooled,
        "tradeoffs": tradeoff_tables(suite, comparisons, pooled["comparisons"]),
        "scaling": scaling,
        "analyses": analyses,
        "gates": gates,
        "failures": failures,
        "steps": [asdict(s) for s in outcome.steps],
    }
    return results, samples


def write_outputs(
    out_dir: Path, results: Results | dict[str, Any], samples: list[SampleRowT]
) -> Path:
    """Write samples.jsonl, index.html and, last, results.json (each atomically)."""
    if isinstance(results, Results):
        results = results.model_dump(mode="json")
    from audit.report.render import render_report

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out_dir / "samples.jsonl",
        "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples),
    )
    fault_point("outputs.samples_written")
    render_report(results, samples, out_dir / "index.html")
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=1, ensure_ascii=False))
    return out_dir / "index.html"
