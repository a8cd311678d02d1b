"""Benchmark: a ~100M Llama forward pass at the evaluators' batch shapes, against the matmul rate.

    .venv/bin/python bench/forward.py --json OUT.json [--quick] [--threads 2,1] [--reps 3]
        [--variants] [--profile]

Goal (issue 18): the prompts' forward pass of a ~100M model runs at ≥ 50% of this machine's
fp32 matmul rate (:func:`organism_build.matmul_gflops`, a 1024 × 1024 × 1024 product on the
same torch threads), measured in the same run: matmul and forward repetitions alternate
(M, F, M, F, ..., M) and each forward is set against the mean of the two matmul measurements
around it. Model: a random ``LlamaForCausalLM`` of SmolLM2-135M's shape (hidden 576, 30
layers, 9 heads, 3 key/value heads, head 64, intermediate 1536, vocabulary 49,152, tied
embeddings), fp32, eval mode, ``torch.inference_mode()``, transformers' default attention
(``sdpa``, as :func:`audit.models.loading.load_checkpoint` gets it). Shapes, as the evaluators
run them (batch 32; driftcaps-mini's chat prompts are 36-59 SmolLM2 tokens):

- ``prefill``: 32 prompts of 52-64 tokens sorted longest first, left-padded to 64, with the
  position ids and mask of :func:`audit.models.scoring.score_prompts`, ``use_cache=False``,
  ``logits_to_keep=1``;
- ``full logits``: the same with every position's logits (``continuation_logprobs`` on a model
  that takes no ``logits_to_keep``);
- ``decode``: one greedy step of the 32 rows on the prompts' key/value cache (what
  ``generate`` runs per new token; the cache is cropped back after each step). Memory-bound
  at this size: reported, the goal is not applied.

FLOPs (useful work only, padding counts against the forward): per real token, 2 × the
layers' matmul weights (106.2M: q, k, v, o, gate, up, down) + causal attention 4 × heads ×
head_dim × context per layer (context = the token's position + 1, real tokens only) + the
output head (2 × hidden × vocabulary) only at positions whose logits are computed and real.
Norms, RoPE and SiLU are not counted. ``--threads`` (default ``2,1``): each thread count gets
its own rows, with its own matmul rate. ``--variants``: also time the prefill with eager
attention, in bfloat16, and without padding (every row 64 tokens, no mask: the ``is_causal``
path), on the first thread count. ``--profile``: torch.profiler's tables of one prefill and
one decode step by op, per thread count. ``--quick``: a tiny model (hidden 128, 4 layers,
vocabulary 4096), 1 repetition, short matmul measurements; its figures mean nothing. Results
are recorded in ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from organism_build import matmul_gflops  # noqa: E402
from shapes import SMOLLM2_135M  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

GOAL = 50.0
BATCH, WIDTH, SHORTEST = 32, 64, 52
SHAPES: dict[str, dict[str, int]] = {
    "smollm2-135m": SMOLLM2_135M,
    "tiny": dict(
        vocab_size=4096,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
    ),
}


def build_model(shape: str, attn: str = "sdpa") -> Any:
    """A random fp32 ``LlamaForCausalLM`` of ``shape`` in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    options: dict[str, Any] = {
        **SHAPES[shape],
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
        "attn_implementation": attn,
    }
    return LlamaForCausalLM(LlamaConfig(**options)).eval()


@dataclass
class Batch:
    """A left-padded batch as ``score_prompts`` builds it."""

    lengths: list[int]
    input_ids: Any
    attention_mask: Any
    position_ids: Any


def make_batch(vocab: int, *, padded: bool = True, seed: int = 0) -> Batch:
    """``BATCH`` rows of ``SHORTEST``-``WIDTH`` random tokens (all ``WIDTH`` when not
    ``padded``), longest first, left-padded with position ids that follow the mask."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    if padded:
        drawn = torch.randint(SHORTEST, WIDTH + 1, (BATCH,), generator=generator).tolist()
        lengths = sorted([WIDTH, *drawn[1:]], reverse=True)
    else:
        lengths = [WIDTH] * BATCH
    input_ids = torch.full((BATCH, WIDTH), 2, dtype=torch.long)
    attention_mask = torch.zeros((BATCH, WIDTH), dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, WIDTH - length :] = torch.randint(3, vocab, (length,), generator=generator)
        attention_mask[row, WIDTH - length :] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(lengths, input_ids, attention_mask, position_ids)


def layer_weights(config: Any) -> int:
    """Matmul weights of the decoder layers (no embeddings, head or norms)."""
    h, d = config.hidden_size, config.head_dim
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    return config.num_hidden_layers * (h * (q + 2 * kv) + q * h + 3 * h * config.intermediate_size)


def forward_flops(config: Any, contexts: list[list[int]], head_positions: int) -> float:
    """Useful FLOPs of a forward pass: ``contexts[r]`` lists each real token's attended context
    length in row ``r``; ``head_positions`` counts the real positions whose logits are made."""
    tokens = sum(len(c) for c in contexts)
    attended = sum(sum(c) for c in contexts)
    attention = 4 * config.num_attention_heads * config.head_dim * config.num_hidden_layers
    head = 2 * config.hidden_size * config.vocab_size
    return 2.0 * layer_weights(config) * tokens + attention * attended + head * head_positions


def timed(fn: Callable[[], Any], min_seconds: float) -> float:
    """Seconds per call of ``fn``, called until ``min_seconds`` have passed (at least once)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def gemm_gflops(seconds: float, hidden: int, inter: int) -> float:
    """fp32 rate of the model's own largest product, ``(2048 × hidden) @ (hidden × inter)``."""
    import torch
    import torch.nn.functional as F

    x, w = torch.randn(BATCH * WIDTH, hidden), torch.randn(inter, hidden)
    with torch.inference_mode():
        per_call = timed(lambda: F.linear(x, w), seconds)
    return 2 * BATCH * WIDTH * hidden * inter / per_call / 1e9


@dataclass
class Case:
    """One timed shape: what runs, its useful FLOPs and the tokens it processes."""

    name: str
    run: Callable[[], Any]
    flops: float
    tokens: int
    goal: bool


def prefill_case(name: str, model: Any, batch: Batch, keep: int, goal: bool) -> Case:
    """The prompts' forward pass (``keep``: ``logits_to_keep``, 0 for all positions)."""
    import torch

    mask = batch.attention_mask if min(batch.lengths) < WIDTH else None
    kwargs = dict(
        input_ids=batch.input_ids,
        attention_mask=mask,
        position_ids=batch.position_ids,
        use_cache=False,
        logits_to_keep=keep,
    )

    def run() -> Any:
        with torch.inference_mode():
            return model(**kwargs).logits

    contexts = [list(range(1, n + 1)) for n in batch.lengths]
    heads = len(batch.lengths) if keep == 1 else sum(batch.lengths)
    return Case(name, run, forward_flops(model.config, contexts, heads), sum(batch.lengths), goal)


def decode_case(model: Any, batch: Batch) -> Case:
    """One decoding step of every row on the prompts' cache, cropped back after each step."""
    import torch

    with torch.inference_mode():
        out = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=True,
            logits_to_keep=1,
        )
    cache = getattr(out, "cache", None)
    if cache is None:  # transformers before the rename
        cache = out.past_key_values
    rows = len(batch.lengths)
    step = dict(
        input_ids=out.logits[:, -1].argmax(-1, keepdim=True),
        attention_mask=torch.cat(
            [batch.attention_mask, torch.ones((rows, 1), dtype=torch.long)], -1
        ),
        position_ids=batch.attention_mask.sum(-1, keepdim=True),
        use_cache=True,
        logits_to_keep=1,
    )
    accepted = inspect.signature(model.forward).parameters
    keyword = "cache" if "cache" in accepted else "past_key_values"

    def run() -> Any:
        with torch.inference_mode():
            logits = model(**step, **{keyword: cache}).logits
        cache.crop(-1)
        return logits

    contexts = [[n + 1] for n in batch.lengths]
    return Case("decode", run, forward_flops(model.config, contexts, rows), rows, False)


def measure(
    cases: list[Case], reps: int, matmul_s: float, min_s: float
) -> dict[str, dict[str, list[float]]]:
    """Alternate matmul and each case's forward, ``reps`` times: M, F1, M, F2, ..., M.

    Returns per case the seconds per call, the matmul GFLOP/s around each call (mean of the
    measurements before and after) and the percent of it the forward reached."""
    for case in cases:  # warm-up: first calls allocate and pick kernels
        case.run()
    results: dict[str, dict[str, list[float]]] = {
        c.name: {"seconds": [], "matmul_gflops": [], "percent": []} for c in cases
    }
    before = matmul_gflops(matmul_s)
    for rep in range(reps):
        for case in cases:
            seconds = timed(case.run, min_s)
            after = matmul_gflops(matmul_s)
            rate = (before + after) / 2
            entry = results[case.name]
            entry["seconds"].append(seconds)
            entry["matmul_gflops"].append(rate)
            entry["percent"].append(100 * case.flops / seconds / 1e9 / rate)
            print(
                f"  rep {rep + 1} {case.name:12s} {seconds * 1e3:9.1f} ms  "
                f"{case.flops / seconds / 1e9:6.1f} GFLOP/s  matmul {rate:6.1f}  "
                f"{entry['percent'][-1]:5.1f}%",
                flush=True,
            )
            before = after
    return results


def profile_table(case: Case, rows: int = 12) -> dict[str, Any]:
    """torch.profiler's top ops of one call of ``case`` by self CPU time: by op, and by op and
    input shapes; with the wall time of the profiled call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        case.run()
        wall = time.perf_counter() - start
    tables: dict[str, Any] = {"wall_ms": round(wall * 1e3, 1)}
    for key, grouped in (("by_op", False), ("by_shape", True)):
        events = prof.key_averages(group_by_input_shape=grouped)
        total = sum(e.self_cpu_time_total for e in events)
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
        tables[key] = [
            {
                "op": e.key,
                "shapes": str(e.input_shapes)[:80] if grouped else "",
                "calls": e.count,
                "self_ms": round(e.self_cpu_time_total / 1e3, 1),
                "share": round(100 * e.self_cpu_time_total / total, 1),
            }
            for e in top
        ]
        print(f"  {case.name}, {key} (self CPU {total / 1e3:.0f} ms, wall {wall * 1e3:.0f} ms):")
        for r in tables[key]:
            share, ms, calls = r["share"], r["self_ms"], r["calls"]
            print(f"  {share:5.1f}% {ms:9.1f} ms {calls:4d}× {r['op']} {r['shapes']}")
    return tables


def variants(model: Any, shape: str) -> list[Case]:
    """Prefill alternatives: eager attention, bfloat16, no padding."""
    import copy

    import torch

    vocab = model.config.vocab_size
    eager = build_model(shape, attn="eager")
    half = copy.deepcopy(model).to(torch.bfloat16)
    batch = make_batch(vocab)
    full = make_batch(vocab, padded=False)
    return [
        prefill_case("eager", eager, batch, 1, False),
        prefill_case("bf16", half, batch, 1, False),
        prefill_case("no padding", model, full, 1, False),
    ]


def row(
    case: Case, result: dict[str, list[float]], threads: int, quick: bool, detail: str
) -> dict[str, Any]:
    """A summary row of the contract for ``case`` at ``threads``."""
    percent = result["percent"]
    seconds = statistics.median(result["seconds"])
    value = statistics.median(percent)
    what = {
        "prefill": "prefill forward (score_prompts), logits_to_keep=1",
        "full logits": "prefill forward, all logits (continuation_logprobs without keep)",
        "decode": "decode step with KV cache (memory-bound; reported only)",
    }[case.name]
    return {
        "measure": f"{what}, {threads} thread{'s' if threads > 1 else ''}",
        "goal": f"≥ {GOAL:.0f}%",
        "value": round(value, 1),
        "unit": "%",
        "spread": [round(min(percent), 1), round(max(percent), 1)],
        "reps": len(percent),
        "met": (value >= GOAL) if case.goal and not quick else None,
        "detail": (
            f"{detail}; {case.tokens} tokens, {case.flops / 1e9:.2f} GFLOP a call; "
            f"{case.tokens / seconds:.0f} tokens/s, {case.flops / seconds / 1e9:.1f} GFLOP/s "
            f"vs matmul {statistics.median(result['matmul_gflops']):.1f} GFLOP/s (medians)"
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 repetition")
    parser.add_argument("--threads", default="2,1", help="torch thread counts (default 2,1)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick 1)")
    parser.add_argument("--variants", action="store_true", help="also eager, bf16, no padding")
    parser.add_argument("--profile", action="store_true", help="profile prefill and decode by op")
    args = parser.parse_args(argv)

    import torch
    import transformers

    shape = "tiny" if args.quick else "smollm2-135m"
    reps = args.reps or (1 if args.quick else 3)
    matmul_s, min_s = (0.1, 0.05) if args.quick else (2.0, 1.0)
    thread_counts = [int(t) for t in args.threads.split(",")]
    load_before = os.getloadavg()
    model = build_model(shape)
    config = model.config
    n_params = sum(p.numel() for p in model.parameters())
    batch = make_batch(config.vocab_size)
    padding = 1 - sum(batch.lengths) / (BATCH * WIDTH)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}; {shape}: "
        f"{n_params:,} params ({layer_weights(config):,} layer weights), "
        f"attention {config._attn_implementation}; batch {BATCH} × {WIDTH}, "
        f"{sum(batch.lengths)} real tokens ({100 * padding:.1f}% padding)",
        flush=True,
    )
    cases = [
        prefill_case("prefill", model, batch, 1, True),
        prefill_case("full logits", model, batch, 0, False),
        decode_case(model, batch),
    ]
    summary: list[dict[str, Any]] = []
    runs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        print(f"{threads} thread(s)", flush=True)
        gemm = gemm_gflops(matmul_s, config.hidden_size, config.intermediate_size)
        results = measure(cases, reps, matmul_s, min_s)
        runs[str(threads)] = {"gemm_model_shape_gflops": gemm, **results}
        detail = (
            f"{shape} random Llama ({n_params / 1e6:.1f}M params), fp32, "
            f"{config._attn_implementation}, batch {BATCH} × {WIDTH} left-padded "
            f"({SHORTEST}-{WIDTH} tokens), {threads} thread(s); FLOPs = 2 × layer weights "
            f"per real token + causal attention + head at kept real positions"
        )
        summary.extend(row(c, results[c.name], threads, args.quick, detail) for c in cases)
        if args.variants and threads == thread_counts[0]:
            extra_cases = [cases[0], *variants(model, shape)]
            extra["variants"] = {"threads": threads, **measure(extra_cases, reps, matmul_s, min_s)}
        if args.profile:
            profiles = extra.setdefault("profile", {})
            profiles[str(threads)] = {c.name: profile_table(c) for c in (cases[0], cases[2])}
    for r in summary:
        print(f"{r['measure']}: {r['value']:.1f}% {r['spread']} ({r['detail']})", flush=True)
    out = {
        "benchmark": "forward",
        "summary": summary,
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "shape": shape,
        "parameters": n_params,
        "layer_weights": layer_weights(config),
        "lengths": batch.lengths,
        "padding": padding,
        "flops": {c.name: c.flops for c in cases},
        "runs": runs,
        **extra,
    }
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
