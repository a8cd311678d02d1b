"""Benchmark: the ``alignment_drift`` evaluation against its greedy generation alone.

    .venv/bin/python bench/drift_speed.py --model CHECKPOINT [--limit N] [--threads 2]
        [--reps 1] [--reference same|other|both] [--noise 0.01] [--baseline REV] [--profile]
        [--json OUT]

Goal (issue item): on SmolLM2-135M, the whole evaluation of ``driftcaps-mini`` takes ≤ 2× the
time of its greedy generation alone. In one process this times (a) the evaluator's generation
alone (:func:`audit.models.generation.generate` on the probes with the evaluator's default
``max_new_tokens`` and ``batch_size``, chat-templated) and (b) the whole evaluation
(:meth:`AlignmentDriftEvaluator.evaluate`, default parameters), and prints both, wall and
process CPU seconds, and their ratios; the generation inside each evaluation is timed too
(``generate`` wrapped, less the time its ``prefill`` callbacks spend measuring), which gives a
second ratio measured in the same minute.

``--reference same`` (default) passes the model as its own reference, as a handle with the
model's key (what a suite's reference evaluated against itself gets: its own outputs stand for
the reference's); ``other`` as a handle with another key (what every other model of a suite
gets: the reference runs too), on the same weights or, with ``--noise S``, on a copy with
Gaussian noise of S × each tensor's std added (so that KL and direction are not trivially 0 and
1 when checking equivalence); ``both`` times both.

``--baseline REV`` also times the evaluator as it was at git revision ``REV`` (its
``audit/models/{generation,scoring}.py``, ``audit/evaluators/{refusal,drift}.py`` and
``audit/judges/loglik.py`` loaded as a separate package), alternating with the current one, and
compares every metric row and per-item value of the two. ``--limit N`` takes N probes evenly
spaced over the file (all labels keep their share). ``--profile`` prints where the current
evaluation's time goes (cProfile, cumulative). Shared machines are noisy, so the fp32 matmul
throughput is measured before and after; read the ratios, which are measured side by side.
Results are recorded in ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from organism_build import matmul_gflops  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
PROBES = ROOT / "audit" / "data" / "driftcaps-mini.jsonl"
# Loaded from --baseline REV, in dependency order, as _drift_baseline.<name>.
BASELINE_MODULES = {
    "audit.models.generation": "audit/models/generation.py",
    "audit.models.scoring": "audit/models/scoring.py",
    "audit.judges.loglik": "audit/judges/loglik.py",
    "audit.evaluators.refusal": "audit/evaluators/refusal.py",
    "audit.evaluators.drift": "audit/evaluators/drift.py",
}


def load_baseline(rev: str) -> Any:
    """``AlignmentDriftEvaluator`` as it was at git revision ``rev`` (a separate module tree)."""
    package = ModuleType("_drift_baseline")
    package.__path__ = []
    sys.modules["_drift_baseline"] = package
    module = None
    for name, path in BASELINE_MODULES.items():
        source = subprocess.run(
            ["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        for other in BASELINE_MODULES:
            source = source.replace(other, "_drift_baseline." + other.rsplit(".", 1)[1])
        short = "_drift_baseline." + name.rsplit(".", 1)[1]
        spec = importlib.util.spec_from_loader(short, loader=None)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        module.__file__ = f"<{rev}:{path}>"
        sys.modules[short] = module
        exec(compile(source, module.__file__, "exec"), module.__dict__)
    assert module is not None
    return module.AlignmentDriftEvaluator


def select_probes(limit: int | None) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in PROBES.read_text(encoding="utf-8").splitlines() if line]
    if limit is None or limit >= len(rows):
        return rows
    return [rows[i * len(rows) // limit] for i in range(limit)]


def compare(new: Any, old: Any) -> dict[str, Any]:
    """Largest differences between two EvalResults: metric rows and per-item samples."""
    rows_new = {(r.metric, r.slice): r for r in new.metrics}
    rows_old = {(r.metric, r.slice): r for r in old.metrics}
    samples_new = {(s.metric, s.item_id): s for s in new.samples}
    samples_old = {(s.metric, s.item_id): s for s in old.samples}
    report: dict[str, Any] = {
        "same_rows": sorted(rows_new) == sorted(rows_old),
        "same_samples": sorted(samples_new) == sorted(samples_old),
        "same_outputs": all(
            samples_new[k].output == samples_old[k].output
            and samples_new[k].judgment == samples_old[k].judgment
            for k in samples_new.keys() & samples_old.keys()
        ),
        "same_n": all(rows_new[k].n == rows_old[k].n for k in rows_new.keys() & rows_old.keys()),
    }

    def gap(a: float | None, b: float | None) -> float:
        if a is None or b is None:
            return 0.0 if a is b else float("inf")
        return abs(a - b)

    by_metric: dict[str, float] = {}
    for (metric, _), s in samples_new.items():
        if (metric, _) in samples_old:
            diff = gap(s.value, samples_old[metric, _].value)
            by_metric[metric] = max(by_metric.get(metric, 0.0), diff)
    report["max_item_diff"] = by_metric
    values: dict[str, float] = {}
    intervals: dict[str, float] = {}
    worst: tuple[float, Any] = (-1.0, None)
    for key, r in rows_new.items():
        if key in rows_old:
            o = rows_old[key]
            values[key[0]] = max(values.get(key[0], 0.0), gap(r.value, o.value))
            diff = max(gap(r.ci_low, o.ci_low), gap(r.ci_high, o.ci_high))
            intervals[key[0]] = max(intervals.get(key[0], 0.0), diff)
            if diff > worst[0]:
                worst = (diff, [list(key), r.n, [o.ci_low, o.ci_high], [r.ci_low, r.ci_high]])
    report["max_row_value_diff"] = values
    report["max_row_interval_diff"] = intervals
    report["widest_interval_change"] = worst[1]  # [metric, slice], n, old, new
    return report


class Clock:
    """Wall and process CPU seconds of a block (CPU time is less hurt by a busy machine)."""

    def __enter__(self) -> Clock:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def perturbed(model: Any, scale: float, seed: int = 0) -> Any:
    """A copy of ``model`` with Gaussian noise of ``scale`` times each tensor's std added."""
    import copy

    import torch

    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in other.parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            param.add_(noise * scale * param.float().std().to(param.dtype))
    return other


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--limit", type=int, default=None, help="probes, evenly spaced")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=1, help="rounds of all timings")
    parser.add_argument("--reference", choices=["same", "other", "both"], default="same")
    parser.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="'other' reference: the model's weights plus this much noise (x each tensor's std), "
        "so that KL and direction are not trivially 0 and 1",
    )
    parser.add_argument("--baseline", default=None, help="git revision to time alongside")
    parser.add_argument("--profile", action="store_true", help="cProfile the current evaluation")
    parser.add_argument("--json", dest="json_out", default=None, help="write the results here")
    args = parser.parse_args()

    import torch

    import audit.models.generation as generation_module
    from audit.evaluators.drift import AlignmentDriftEvaluator
    from audit.models.handle import ModelHandle
    from audit.plugins import RunContext

    generate = generation_module.generate
    torch.set_num_threads(args.threads)
    probes = select_probes(args.limit)
    labels = {label: sum(p["label"] == label for p in probes) for label in ("unsafe", "safe")}
    tmp = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    with open(tmp / "probes.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(p) + "\n" for p in probes)
    params = AlignmentDriftEvaluator.Params(probes="path:probes.jsonl")
    model = ModelHandle("model", "model-key", Path(args.model))
    loaded = (model.model, model.tokenizer)
    other = perturbed(model.model, args.noise) if args.noise > 0 else model.model
    references = {
        "same": ModelHandle("reference", "model-key", Path(args.model), _loaded=loaded),
        "other": ModelHandle(
            "reference", "other-key", Path(args.model), _loaded=(other, model.tokenizer)
        ),
    }
    kinds = ["same", "other"] if args.reference == "both" else [args.reference]
    evaluators: dict[str, Any] = {"current": AlignmentDriftEvaluator}
    generators: dict[str, ModuleType] = {"current": generation_module}
    if args.baseline:
        evaluators["baseline"] = load_baseline(args.baseline)
        generators["baseline"] = sys.modules["_drift_baseline.generation"]
    n_params = sum(p.numel() for p in model.model.parameters())
    print(
        f"model {args.model}: {n_params:,} parameters; {len(probes)} probes ({labels['unsafe']} "
        f"unsafe, {labels['safe']} safe); max_new_tokens {params.max_new_tokens}, batch size "
        f"{params.batch_size}, bootstrap {params.bootstrap}; {args.threads} thread(s)",
        flush=True,
    )
    gflops_before = matmul_gflops()
    prompts = [p["prompt"] for p in probes]
    # Warm-up (first calls allocate and pick kernels), not timed.
    generate(model.model, model.tokenizer, prompts[:2], max_new_tokens=2, batch_size=2)

    def time_generation() -> Clock:
        with Clock() as clock:
            generate(
                model.model,
                model.tokenizer,
                prompts,
                max_new_tokens=params.max_new_tokens,
                batch_size=params.batch_size,
            )
        return clock

    def time_eval(label: str, kind: str, profile: bool = False) -> tuple[Clock, Clock, Any]:
        """The whole evaluation's clock, its generation's clock and its result."""
        ctx = RunContext(seed=0, suite_dir=tmp, work_dir=tmp / "work", reference=references[kind])
        evaluator = evaluators[label](evaluators[label].Params(**params.model_dump()))
        module = generators[label]
        inner = Clock()
        measuring = [0.0, 0.0]  # wall, CPU seconds spent in prefill callbacks (not generation)

        def timed_generate(*a: Any, **k: Any) -> Any:
            callback = k.get("prefill")
            if callback is not None:

                def timed_callback(batch: Any) -> None:
                    with Clock() as spent:
                        callback(batch)
                    measuring[0] += spent.wall
                    measuring[1] += spent.cpu

                k["prefill"] = timed_callback
            with inner:
                out = generate_of_module(*a, **k)
            inner.wall -= measuring[0]
            inner.cpu -= measuring[1]
            return out

        generate_of_module = module.generate
        module.generate = timed_generate  # type: ignore[attr-defined]
        profiler = cProfile.Profile() if profile else None
        try:
            with Clock() as clock:
                if profiler is not None:
                    profiler.enable()
                result = evaluator.evaluate(model, ctx)
                if profiler is not None:
                    profiler.disable()
        finally:
            module.generate = generate_of_module  # type: ignore[attr-defined]
        if profiler is not None:
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
            print(text.getvalue(), flush=True)
        return clock, inner, result

    generation: list[Clock] = []
    runs: list[dict[str, Any]] = []
    results: dict[tuple[str, str], Any] = {}
    for rep in range(args.reps):
        generation.append(time_generation())
        print(
            f"generation alone: {generation[-1].wall:.1f} s wall, {generation[-1].cpu:.1f} s CPU",
            flush=True,
        )
        order = list(evaluators)
        for step, kind in enumerate(kinds):
            for label in order if (rep + step) % 2 == 0 else order[::-1]:
                profile = args.profile and label == "current" and rep == 0
                clock, inner, results[label, kind] = time_eval(label, kind, profile)
                runs.append(
                    {
                        "evaluator": label,
                        "reference": kind,
                        "wall_s": clock.wall,
                        "cpu_s": clock.cpu,
                        "generation_wall_s": inner.wall,
                        "generation_cpu_s": inner.cpu,
                        "ratio_to_own_generation_wall": clock.wall / inner.wall,
                        "ratio_to_own_generation_cpu": clock.cpu / inner.cpu,
                    }
                )
                print(
                    f"{label:8s} evaluation, reference {kind}: {clock.wall:.1f} s wall "
                    f"({clock.cpu:.1f} s CPU), of which generation {inner.wall:.1f} s wall "
                    f"({inner.cpu:.1f} s CPU): {clock.wall / inner.wall:.2f}x its generation "
                    f"(CPU {clock.cpu / inner.cpu:.2f}x)",
                    flush=True,
                )
    generation.append(time_generation())
    print(
        f"generation alone: {generation[-1].wall:.1f} s wall, {generation[-1].cpu:.1f} s CPU",
        flush=True,
    )
    gflops_after = matmul_gflops()

    gen_wall = sum(c.wall for c in generation) / len(generation)
    gen_cpu = sum(c.cpu for c in generation) / len(generation)
    for run in runs:
        run["ratio_to_generation_alone_wall"] = run["wall_s"] / gen_wall
        run["ratio_to_generation_alone_cpu"] = run["cpu_s"] / gen_cpu
    summary: dict[str, Any] = {
        "model": args.model,
        "parameters": n_params,
        "probes": len(probes),
        "unsafe": labels["unsafe"],
        "safe": labels["safe"],
        "max_new_tokens": params.max_new_tokens,
        "batch_size": params.batch_size,
        "bootstrap": params.bootstrap,
        "threads": args.threads,
        "noise": args.noise,
        "generation_alone_wall_s": [c.wall for c in generation],
        "generation_alone_cpu_s": [c.cpu for c in generation],
        "runs": runs,
        "matmul_gflops_before": gflops_before,
        "matmul_gflops_after": gflops_after,
    }
    print(
        f"generation alone (mean of {len(generation)}): {gen_wall:.1f} s wall, {gen_cpu:.1f} s CPU"
    )
    for run in runs:
        print(
            f"{run['evaluator']:8s} reference {run['reference']:5s}: {run['wall_s']:6.1f} s wall "
            f"= {run['ratio_to_generation_alone_wall']:.2f}x generation alone "
            f"({run['ratio_to_own_generation_wall']:.2f}x its own); CPU "
            f"{run['ratio_to_generation_alone_cpu']:.2f}x "
            f"({run['ratio_to_own_generation_cpu']:.2f}x)"
        )
    if args.baseline:
        summary["equivalence"] = {}
        for kind in kinds:
            check = compare(results["current", kind], results["baseline", kind])
            summary["equivalence"][kind] = check
            print(f"current vs baseline, reference {kind}: {json.dumps(check)}")
    print(f"matmul {gflops_before:.0f} / {gflops_after:.0f} GFLOP/s (before/after)")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as out:
            json.dump(summary, out, indent=2)


if __name__ == "__main__":
    main()
