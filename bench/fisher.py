"""Benchmark: per-sample Fisher, batched hooks (`fisher`) against one backward per example.

    .venv/bin/python bench/fisher.py [--threads 1] [--examples 64] [--reps 3] [--batch-size 16]
                                     [--size 23m|3m] [--quick] [--json OUT]

Builds a random LlamaForCausalLM from a config (hidden 512, 6 layers, 8 heads, intermediate
1376, vocab 8000: about 23M parameters), makes ``--examples`` examples of 48-64 tokens with
the first half (the prompt) masked, and times :func:`audit.training.fisher.fisher` and
:func:`audit.training.fisher.fisher_loop` on the attention projections (q, k, v, o), alternating
the two ``--reps`` times so drift in machine load hits both alike. Reports the median seconds of
each, their ratio, and how far the two results are apart (max abs difference over max entry).
``--size 3m`` uses a 3.2M-parameter model instead (vocab 8000, hidden 192, 4 layers).
Shared machines are noisy, so the fp32 matmul throughput is measured before and after (an idle
2-core machine of the reference kind reaches 144-155 GFLOP/s on 2 threads). Results are
recorded in ``bench/README.md``. ``--json`` writes the figures with the summary row of
``python -m bench`` (goal: ≥ 3× at ≥ 20M parameters); ``--quick`` is a smoke run (3m model,
16 examples, 2 reps).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from organism_build import matmul_gflops  # noqa: E402
from rows import summary_row  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
GOAL, GOAL_PARAMETERS = 3.0, 20_000_000


SIZES: dict[str, dict[str, int]] = {
    # The benchmark's model: about 23M parameters.
    "23m": dict(
        vocab_size=8000,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=8,
    ),
    # The organism's size (FACTS.md): per-op overhead dominates, not arithmetic.
    "3m": dict(
        vocab_size=8000,
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
}


def build_model(size: str = "23m") -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**SIZES[size], max_position_embeddings=256, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def make_examples(n: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        length = int(torch.randint(48, 65, (), generator=generator))
        ids = torch.randint(1, 8000, (length,), generator=generator).tolist()
        prompt = length // 2
        examples.append((ids, [-100] * prompt + ids[prompt:]))
    return examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", choices=sorted(SIZES), default="23m", help="model size")
    parser.add_argument("--quick", action="store_true", help="3m model, 16 examples, 2 reps")
    parser.add_argument("--json", dest="json_out", default=None, help="write the results here")
    args = parser.parse_args()
    if args.quick:
        args.size, args.examples, args.reps = "3m", 16, 2
    matmul_s = 0.25 if args.quick else 2.0

    import torch

    from audit.training.fisher import fisher, fisher_loop, linear_modules

    torch.set_num_threads(args.threads)
    model = build_model(args.size)
    n_params = sum(p.numel() for p in model.parameters())
    names = list(linear_modules(model, TARGETS))
    n_fisher = sum(model.get_submodule(name).weight.numel() for name in names)
    examples = make_examples(args.examples)
    tokens = sum(len(ids) for ids, _ in examples)
    print(
        f"model: {n_params:,} parameters; Fisher over {len(names)} modules, {n_fisher:,} weights; "
        f"{len(examples)} examples, {tokens} tokens; {args.threads} thread(s), "
        f"batch size {args.batch_size}"
    )
    gflops_before = matmul_gflops(matmul_s)

    # Warm-up (first calls allocate and pick kernels), not timed.
    fisher(model, examples[:4], names, batch_size=args.batch_size)
    fisher_loop(model, examples[:2], names)

    times: dict[str, list[float]] = {"hooks": [], "loop": []}
    results: dict[str, Any] = {}
    for rep in range(args.reps):
        for label in ("hooks", "loop") if rep % 2 == 0 else ("loop", "hooks"):
            start = time.perf_counter()
            if label == "hooks":
                results[label] = fisher(model, examples, names, batch_size=args.batch_size)
            else:
                results[label] = fisher_loop(model, examples, names)
            times[label].append(time.perf_counter() - start)
            print(f"rep {rep + 1} {label:5s} {times[label][-1]:7.2f} s", flush=True)
    gflops_after = matmul_gflops(matmul_s)

    diff = max(
        float((results["hooks"][n].diag - results["loop"][n].diag).abs().max()) for n in names
    )
    scale = max(float(results["loop"][n].diag.abs().max()) for n in names)
    hooks_s, loop_s = statistics.median(times["hooks"]), statistics.median(times["loop"])
    ratios = [loop / hooks for hooks, loop in zip(times["hooks"], times["loop"], strict=True)]
    row = summary_row(
        f"per-sample Fisher: hooks vs per-example loop ({args.size})",
        f"≥ {GOAL:g}× at ≥ {GOAL_PARAMETERS // 1_000_000}M params",
        ratios,
        passes=(lambda value: value >= GOAL) if n_params >= GOAL_PARAMETERS else None,
        detail=(
            f"{n_params:,} params, {len(names)} modules ({n_fisher:,} weights), "
            f"{len(examples)} examples ({tokens} tokens), batch {args.batch_size}, "
            f"{args.threads} thread(s): hooks {hooks_s:.2f} s vs loop {loop_s:.2f} s (medians); "
            f"max |diff| / max {diff / scale:.1e}"
        ),
    )
    result = {
        "benchmark": "fisher",
        "summary": [row],
        "size": args.size,
        "parameters": n_params,
        "fisher_weights": n_fisher,
        "examples": len(examples),
        "tokens": tokens,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "reps": args.reps,
        "hooks_s": times["hooks"],
        "loop_s": times["loop"],
        "hooks_median_s": hooks_s,
        "loop_median_s": loop_s,
        "speedup": loop_s / hooks_s,
        "max_abs_diff_over_max": diff / scale,
        "matmul_gflops_before": gflops_before,
        "matmul_gflops_after": gflops_after,
    }
    print(
        f"hooks {hooks_s:.2f} s, loop {loop_s:.2f} s (medians of {args.reps}): "
        f"{loop_s / hooks_s:.2f}x; max |diff| / max = {diff / scale:.1e}; "
        f"matmul {gflops_before:.0f} / {gflops_after:.0f} GFLOP/s (before/after)"
    )
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2, ensure_ascii=False)


if __name__ == "__main__":
    main()
