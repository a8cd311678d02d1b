"""Shared-prefix log-likelihood scoring against lm-eval 0.4.13's HFLM on the same model and items.

Goal (issue 18): audit's scoring at least 1.5× faster than lm-eval's ``HFLM`` on the same
model and items, with identical log-likelihoods (to 1e-5, relative: see ``TOLERANCE``). Two
workloads:

- **multiple choice** (the forgetting evaluator's ``path:`` tasks): 12 items (``--items``),
  each a chat prompt of 20–60 words and 4 choices of 1–12 words; audit's
  :func:`audit.models.scoring.choice_logprobs` (each prompt once, its choices from the
  key/value cache) against ``HFLM._loglikelihood_tokens`` (one right-padded forward pass over
  context + choice per request, lm_eval/models/huggingface.py at lm-eval 0.4.13);
- **refusal margin** (the drift evaluator's): every prompt with the 3 refusal and 3
  compliance openings of :mod:`audit.models.scoring`, :func:`refusal_margins`' scoring
  against the same requests through HFLM.

Both sides get the same token ids (audit's convention: the chat-formatted prompt, each
continuation encoded on its own), batch 32, and alternate within each repetition (the order
flips every repetition). The per-pair way audit scored multiple choice before
(:func:`continuation_logprobs`) is timed once, for the record. Model: a random
``LlamaForCausalLM`` of SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads, 3 key/value
heads, intermediate 1536, vocabulary 49,152, tied embeddings), fp32, with a word-level
tokenizer of that vocabulary (no download: the times depend on token counts, not words).

    .venv/bin/python bench/scoring.py --json OUT.json [--quick] [--threads 1] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from organism_build import matmul_gflops  # noqa: E402
from rows import summary_row  # noqa: E402
from shapes import SMOLLM2_135M  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

GOAL, TOLERANCE = 1.5, 1e-5
"""Speed goal; agreement goal, relative: ``|Δ log p| / max(1, |log p|)`` (fp32 sums of up to 12
tokens' log-probabilities near -10 each round at about 1e-5 absolute; lm-eval's own batch 1 and
batch 32 differ that much, which the benchmark measures as the floor)."""
SHAPES: dict[str, dict[str, int]] = {
    "135m": SMOLLM2_135M,
    "tiny": dict(
        vocab_size=2000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
}


def build(shape: str) -> tuple[Any, Any]:
    """A random Llama of ``shape`` and a word-level tokenizer that fills its vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from audit.organism.tokenizer import SPECIAL_TOKENS, build_tokenizer

    size = SHAPES[shape]
    words = [f"w{i}" for i in range(size["vocab_size"] - len(SPECIAL_TOKENS) - 200)]
    tokenizer = build_tokenizer(words)
    tokenizer.model_max_length = 2048
    torch.manual_seed(0)
    config = LlamaConfig(
        **{**size, "vocab_size": len(tokenizer)},
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval(), tokenizer


def make_items(n: int, vocabulary: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """``n`` multiple-choice items: a prompt of 20–60 random words and 4 choices of 1–12."""
    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(f"w{rng.randrange(vocabulary)}" for _ in range(k))

    return [
        (words(rng.randint(20, 60)), [words(rng.randint(1, 12)) for _ in range(4)])
        for _ in range(n)
    ]


def hflm_requests(
    tokenizer: Any, prompts: Sequence[str], choices: Sequence[Sequence[str]]
) -> list[tuple[tuple[str, str], list[int], list[int]]]:
    """lm-eval's log-likelihood requests for the same tokens audit scores."""
    from audit.models.scoring import encode_prompts

    contexts = encode_prompts(tokenizer, prompts)
    return [
        ((prompt, choice), list(context), tokenizer(choice, add_special_tokens=False)["input_ids"])
        for prompt, context, row in zip(prompts, contexts, choices, strict=True)
        for choice in row
    ]


def interleaved(
    sides: dict[str, Callable[[], Any]], reps: int
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Time every side ``reps`` times, alternating (the order flips every repetition)."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    results: dict[str, Any] = {}
    names = list(sides)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            results[name] = sides[name]()
            times[name].append(time.perf_counter() - start)
            print(f"rep {rep + 1} {name:14s} {times[name][-1]:7.2f} s", file=sys.stderr, flush=True)
    return times, results


def max_diffs(ours: Sequence[float], theirs: Sequence[float]) -> tuple[float, float]:
    """The largest absolute and relative (to ``max(1, |log p|)``) difference."""
    pairs = list(zip(ours, theirs, strict=True))
    absolute = max(abs(a - b) for a, b in pairs)
    relative = max(abs(a - b) / max(1.0, abs(b)) for a, b in pairs)
    return absolute, relative


def ratio_row(
    measure: str,
    ours: list[float],
    theirs: list[float],
    diff: tuple[float, float],
    detail: str,
    judged: bool,
) -> dict[str, Any]:
    """The contract's summary row for ``theirs / ours`` per repetition (``met`` is ``None``
    unless ``judged``: a quick run's sizes say nothing about the goal)."""
    return summary_row(
        measure,
        f"≥ {GOAL:g}×, |Δ log p| ≤ {TOLERANCE:g} (relative)",
        [t / o for o, t in zip(ours, theirs, strict=True)],
        f"audit {statistics.median(ours):.2f} s vs HFLM {statistics.median(theirs):.2f} s "
        f"(medians); max |Δ log p| {diff[0]:.1e} (relative {diff[1]:.1e}); {detail}",
        passes=(lambda value: value >= GOAL and diff[1] <= TOLERANCE) if judged else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--items", type=int, default=12, help="multiple-choice items")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="135m")
    parser.add_argument("--quick", action="store_true", help="tiny model, 8 items, 1 rep")
    parser.add_argument("--json", dest="json_out", default=None, help="write the results here")
    args = parser.parse_args()
    if args.quick:
        args.shape, args.items, args.reps = "tiny", 8, 1

    import torch
    from lm_eval.models.huggingface import HFLM

    from audit.models.scoring import (
        DEFAULT_COMPLIANCES,
        DEFAULT_REFUSALS,
        choice_logprobs,
        continuation_logprobs,
        score_prompts,
    )

    torch.set_num_threads(args.threads)
    model, tokenizer = build(args.shape)
    n_params = sum(p.numel() for p in model.parameters())
    vocabulary = SHAPES[args.shape]["vocab_size"] - 300
    items = make_items(args.items, vocabulary)
    prompts, choices = [p for p, _ in items], [c for _, c in items]
    phrases = [*DEFAULT_REFUSALS, *DEFAULT_COMPLIANCES]
    mc_requests = hflm_requests(tokenizer, prompts, choices)
    margin_requests = hflm_requests(tokenizer, prompts, [phrases] * len(prompts))
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, device="cpu")
    bs = args.batch_size
    matmul_s = 0.5 if args.quick else 2.0
    gflops_before = matmul_gflops(matmul_s)

    def hflm(requests: Any) -> list[float]:
        return [s for s, _ in lm._loglikelihood_tokens(requests, disable_tqdm=True)]

    # Warm-up (first calls allocate and pick kernels), not timed.
    choice_logprobs(model, tokenizer, prompts[:2], choices[:2], batch_size=bs)
    hflm(mc_requests[:8])

    mc_times, mc = interleaved(
        {
            "audit": lambda: choice_logprobs(model, tokenizer, prompts, choices, batch_size=bs),
            "hflm": lambda: hflm(mc_requests),
        },
        args.reps,
    )
    # How audit scored multiple choice before (one pass per prompt + choice): once, for the record.
    per_pair_times, per_pair = interleaved(
        {
            "audit per pair": lambda: continuation_logprobs(
                model,
                tokenizer,
                [p for p, row in items for _ in row],
                [c for _, row in items for c in row],
                batch_size=bs,
            )
        },
        1,
    )

    def audit_margins() -> list[list[float]]:
        """The phrase scores :func:`refusal_margins` (and the drift evaluator) take margins of."""
        rows: list[list[float]] = [[] for _ in prompts]
        for batch in score_prompts(model, tokenizer, prompts, phrases=phrases, batch_size=bs):
            for i, row in zip(batch.indices, batch.phrases, strict=True):
                rows[i] = row
        return rows

    margin_times, margin = interleaved(
        {"audit": audit_margins, "hflm": lambda: hflm(margin_requests)}, args.reps
    )
    gflops_after = matmul_gflops(matmul_s)

    # The floor: lm-eval against itself, one request at a time (not timed; the first 4 items).
    lm_one = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, device="cpu")
    one = [s for s, _ in lm_one._loglikelihood_tokens(mc_requests[:16], disable_tqdm=True)]
    floor = max_diffs(one, mc["hflm"][:16])
    mc_flat = [v for row in mc["audit"] for v in row]
    mc_diff = max_diffs(mc_flat, mc["hflm"])
    pair_diff = max_diffs(mc_flat, per_pair["audit per pair"])
    margin_flat = [v for row in margin["audit"] for v in row]
    margin_diff = max_diffs(margin_flat, margin["hflm"])
    context_tokens = sum(len(r[1]) for r in mc_requests) // 4
    choice_tokens = sum(len(r[2]) for r in mc_requests)
    common = (
        f"{args.shape} random Llama ({n_params:,} params), fp32, batch {bs}, "
        f"{args.threads} thread(s)"
    )
    rows = [
        ratio_row(
            f"multiple-choice scoring vs lm-eval HFLM ({args.shape})",
            mc_times["audit"],
            mc_times["hflm"],
            mc_diff,
            f"{len(items)} items × 4 choices ({context_tokens} context + {choice_tokens} choice "
            f"tokens); HFLM batch 1 vs {bs}: {floor[0]:.1e} (relative {floor[1]:.1e}); "
            f"audit per pair {per_pair_times['audit per pair'][0]:.2f} s; " + common,
            not args.quick,
        ),
        ratio_row(
            f"refusal-margin scoring vs lm-eval HFLM ({args.shape})",
            margin_times["audit"],
            margin_times["hflm"],
            margin_diff,
            f"{len(prompts)} prompts × {len(phrases)} openings; " + common,
            not args.quick,
        ),
    ]
    for row in rows:
        print(f"{row['measure']}: {row['value']:.2f}× ({row['detail']})", flush=True)
    out = {
        "benchmark": "scoring",
        "summary": rows,
        "shape": args.shape,
        "parameters": n_params,
        "threads": args.threads,
        "times_s": {
            "multiple_choice": {**mc_times, **per_pair_times},
            "refusal_margin": margin_times,
        },
        "max_abs_diff": {
            "multiple_choice_vs_hflm": mc_diff,
            "multiple_choice_vs_per_pair": pair_diff,
            "refusal_margin_vs_hflm": margin_diff,
            "hflm_batch_1_vs_batch_n": floor,
        },
        "max_diff_convention": "[absolute, relative to max(1, |log p|)]",
        "matmul_gflops": [gflops_before, gflops_after],
    }
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
