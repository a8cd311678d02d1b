"""Cost of an AlignGuard-LoRA optimiser step against a plain LoRA step, side by side.

Both run :func:`audit.training.loop.train` on the same model, data and batches; the only
difference is the AlignGuard regulariser added to each step's loss (the Fisher is computed
once beforehand and timed separately: it is cached in the store and shared by every run on the
same parent and safety data). Plain and regularised runs alternate, ``--reps`` times each, and
the medians are compared. Goal (issue 4): an AGL step costs ≤ 1.3× a LoRA step.

``--json`` writes the figures with the summary row of ``python -m bench`` (the ratio per
repetition); ``--quick`` is a smoke run (3m model, 16 examples, 2 steps, 2 reps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from fisher import SIZES, build_model, make_examples, matmul_gflops  # noqa: E402
from rows import summary_row  # noqa: E402

GOAL = 1.3


def _peft(size: str, params: Any) -> Any:
    from audit.training.loop import wrap_lora as _wrap

    return _wrap(build_model(size), params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="optimiser steps per repetition")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--size", choices=sorted(SIZES), default="23m", help="model size")
    parser.add_argument("--split", choices=["mask", "soft", "eigen"], default="soft")
    parser.add_argument("--quick", action="store_true", help="3m model, 2 steps, 2 reps")
    parser.add_argument("--json", dest="json_out", default=None, help="write the results here")
    args = parser.parse_args()
    if args.quick:
        args.size, args.steps, args.reps = "3m", 2, 2
    matmul_s = 0.25 if args.quick else 2.0

    import torch

    from audit.interventions.alignguard import (
        AlignGuardIntervention,
        _Estimates,
        _guards,
        _regularizer,
    )
    from audit.plugins import RunContext
    from audit.training.fisher import fisher, linear_modules
    from audit.training.loop import train as _train

    torch.set_num_threads(args.threads)
    params = AlignGuardIntervention.Params(
        data="unused",
        safety_data="unused",
        batch_size=16,
        lr=1e-3,
        split=args.split,
        # the collision terms are identically zero under a hard mask, and refused with it
        **({"lambda_nc": 0.0} if args.split == "mask" else {}),
    )
    examples = make_examples(16 if args.quick else 64)
    ctx = RunContext(seed=0, suite_dir=Path("."), work_dir=Path("."))
    base = build_model(args.size)
    names = sorted(linear_modules(base, ["q_proj", "k_proj", "v_proj", "o_proj"]))
    gflops_before = matmul_gflops(matmul_s)
    start = time.perf_counter()
    estimates = fisher(base, examples, names, eigen_k=8 if args.split == "eigen" else 0)
    fisher_s = time.perf_counter() - start
    n_params = sum(p.numel() for p in base.parameters())
    del base

    plain_model = _peft(args.size, params)
    agl_model = _peft(args.size, params)
    guards = _guards(_Estimates(names, estimates, None), params, "cpu")
    regularizer = _regularizer(agl_model, guards, params)
    times: dict[str, list[float]] = {"lora": [], "alignguard": []}
    _train(plain_model, examples, params, 1, 0, ctx)  # warm-up
    _train(agl_model, examples, params, 1, 0, ctx, regularizer=regularizer)
    for rep in range(args.reps):
        for kind in ("lora", "alignguard"):
            start = time.perf_counter()
            if kind == "lora":
                _train(plain_model, examples, params, args.steps, rep, ctx)
            else:
                _train(agl_model, examples, params, args.steps, rep, ctx, regularizer=regularizer)
            times[kind].append((time.perf_counter() - start) / args.steps)
    lora_s = statistics.median(times["lora"])
    agl_s = statistics.median(times["alignguard"])
    ratios = [agl / lora for lora, agl in zip(times["lora"], times["alignguard"], strict=True)]
    row = summary_row(
        f"AlignGuard step vs LoRA step ({args.size}, {args.split})",
        f"≤ {GOAL:g}×",
        ratios,
        passes=None if args.quick else lambda value: value <= GOAL,
        detail=(
            f"{n_params:,} params, LoRA r={params.r} on {len(names)} modules, batch "
            f"{params.batch_size} of {len(examples)} examples, {args.steps} steps a rep, "
            f"{args.threads} thread(s): AGL {agl_s:.3f} s vs LoRA {lora_s:.3f} s a step "
            f"(medians); Fisher once {fisher_s:.1f} s"
        ),
    )
    result = {
        "benchmark": "alignguard_step",
        "summary": [row],
        "size": args.size,
        "parameters": n_params,
        "adapted_modules": len(names),
        "split": args.split,
        "threads": args.threads,
        "steps": args.steps,
        "reps": args.reps,
        "lora_step_s": lora_s,
        "alignguard_step_s": agl_s,
        "ratio": agl_s / lora_s,
        "fisher_s": fisher_s,
        "all_times": times,
        "matmul_gflops": [gflops_before, matmul_gflops(matmul_s)],
    }
    print(json.dumps(result, indent=1, ensure_ascii=False))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
