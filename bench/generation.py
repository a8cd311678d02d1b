"""Benchmark: batched greedy generation against a per-prompt ``model.generate`` loop.

    .venv/bin/python bench/generation.py [--threads 1] [--prompts 48] [--new-tokens 48]
        [--batch-size N] [--reps 3] [--quick] [--json OUT]

Goal: :func:`audit.models.generation.generate` (left-padded batches, KV cache) produces new
tokens at least 5× as fast as calling ``model.generate`` on one prompt at a time. Model: a
random ``LlamaForCausalLM`` of SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads, 3
key/value heads, intermediate 1536, vocab 49152, tied embeddings), built from its config; the
tokenizer is word-level with one word ``t<ID>`` per id and no special tokens, so that every
generated id decodes to a word and back. The model has no end-of-sequence token, so both sides
generate exactly ``--new-tokens`` tokens for every prompt (checked). Prompts are ``--prompts``
random id sequences of 12-60 tokens; the batch size defaults to ``generate``'s own. The two
sides alternate ``--reps`` times in this process; the ratio of their times is reported per
repetition, with each side's new tokens a second, and how many prompts came out identical
token for token on both sides. ``--quick``: a tiny model, 6 prompts, 8 new tokens, 2 reps.
"""

from __future__ import annotations

import argparse
import inspect
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
from shapes import SMOLLM2_135M  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

GOAL = 5.0
SIZES: dict[str, dict[str, Any]] = {
    "smollm2-135m": SMOLLM2_135M,
    "tiny": dict(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
}


def build(size: str) -> tuple[Any, Any]:
    """A random Llama model of ``size`` that never stops early, and its word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    shape = SIZES[size]
    backend = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(shape["vocab_size"])}))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    torch.manual_seed(0)
    config = LlamaConfig(
        **shape,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return LlamaForCausalLM(config).eval(), tokenizer


def make_prompts(n: int, vocab: int, seed: int = 0) -> list[str]:
    """``n`` prompts of 12-60 random words of the word-level vocabulary."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    prompts = []
    for _ in range(n):
        length = int(torch.randint(12, 61, (), generator=generator))
        ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
        prompts.append(" ".join(f"t{i}" for i in ids))
    return prompts


def bf16_tflops(device: str, size: int = 8192, reps: int = 10) -> float:
    """A GPU's bf16 matrix-product rate: ``size``³ products, after 3 warm-ups."""
    import torch

    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * size**3 * reps / (time.perf_counter() - start) / 1e12


def per_prompt(model: Any, tokenizer: Any, prompts: list[str], new_tokens: int) -> list[list[int]]:
    """New token ids of each prompt, one ``model.generate`` call per prompt (greedy, cached)."""
    import torch

    out = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=model.device)
            generated = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=new_tokens,
                pad_token_id=0,
                use_cache=True,
            )
            out.append(generated[0, ids.shape[1] :].tolist())
    return out


def batched(
    model: Any, tokenizer: Any, prompts: list[str], new_tokens: int, batch_size: int
) -> list[list[int]]:
    """New token ids of each prompt from :func:`audit.models.generation.generate`."""
    from audit.models.generation import generate

    texts = generate(
        model, tokenizer, prompts, max_new_tokens=new_tokens, batch_size=batch_size, chat=False
    )
    return [[int(word[1:]) for word in text.split()] for text in texts]


def main() -> None:
    from audit.models.generation import generate

    default_batch = inspect.signature(generate).parameters["batch_size"].default
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=default_batch)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--size", choices=sorted(SIZES), default="smollm2-135m")
    parser.add_argument("--device", default="cpu", help="e.g. cuda (bench/gpu.sh)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--quick", action="store_true", help="tiny model, 6 prompts, 8 tokens")
    parser.add_argument("--json", dest="json_out", default=None, help="write the results here")
    args = parser.parse_args()
    if args.quick:
        args.size, args.prompts, args.new_tokens, args.reps = "tiny", 6, 8, 2

    import torch

    torch.set_num_threads(args.threads)
    model, tokenizer = build(args.size)
    n_params = sum(p.numel() for p in model.parameters())
    model = model.to(device=args.device, dtype=getattr(torch, args.dtype))
    prompts = make_prompts(args.prompts, SIZES[args.size]["vocab_size"])
    prompt_tokens = sum(len(p.split()) for p in prompts)
    matmul_s = 0.25 if args.quick else 2.0
    gpu = args.device.startswith("cuda")
    gflops_before = bf16_tflops(args.device) * 1000 if gpu else matmul_gflops(matmul_s)

    # Warm-up (first calls allocate and pick kernels), not timed.
    per_prompt(model, tokenizer, prompts[:1], 2)
    batched(model, tokenizer, prompts[:2], 2, args.batch_size)

    times: dict[str, list[float]] = {"batched": [], "per_prompt": []}
    outputs: dict[str, list[list[int]]] = {}
    for rep in range(args.reps):
        for side in ("batched", "per_prompt"):
            start = time.perf_counter()
            if side == "batched":
                outputs[side] = batched(model, tokenizer, prompts, args.new_tokens, args.batch_size)
            else:
                outputs[side] = per_prompt(model, tokenizer, prompts, args.new_tokens)
            times[side].append(time.perf_counter() - start)
            print(f"rep {rep + 1} {side:10s} {times[side][-1]:7.2f} s", file=sys.stderr)
    gflops_after = bf16_tflops(args.device) * 1000 if gpu else matmul_gflops(matmul_s)

    for side, ids in outputs.items():
        lengths = {len(row) for row in ids}
        if lengths != {args.new_tokens}:
            raise SystemExit(f"{side}: generated {sorted(lengths)} tokens, not {args.new_tokens}")
    agree = sum(a == b for a, b in zip(outputs["batched"], outputs["per_prompt"], strict=True))
    if agree == 0:
        raise SystemExit("no prompt came out the same token for token on both sides")
    new_total = args.prompts * args.new_tokens
    ratios = [
        loop / batch for batch, loop in zip(times["batched"], times["per_prompt"], strict=True)
    ]
    rate = {side: new_total / statistics.median(t) for side, t in times.items()}
    detail = (
        f"{n_params:,}-parameter Llama ({args.size}), {args.prompts} prompts of "
        f"{prompt_tokens} tokens, {args.new_tokens} new tokens each, batch {args.batch_size}, "
        f"{args.dtype} on {args.device}, {args.threads} thread(s): batched "
        f"{rate['batched']:.0f} vs per-prompt "
        f"{rate['per_prompt']:.0f} new tokens/s; {agree}/{args.prompts} prompts identical"
    )
    result = {
        "benchmark": "generation",
        "summary": [
            summary_row(
                f"batched generate vs per-prompt model.generate ({args.size})",
                f"≥ {GOAL:g}×",
                ratios,
                detail,
                passes=(lambda value: value >= GOAL) if args.size == "smollm2-135m" else None,
            )
        ],
        "size": args.size,
        "parameters": n_params,
        "prompts": args.prompts,
        "prompt_tokens": prompt_tokens,
        "new_tokens": args.new_tokens,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "reps": args.reps,
        "times_s": times,
        "new_tokens_per_s": rate,
        "identical_prompts": agree,
        "device": args.device,
        "dtype": args.dtype,
        "matmul_gflops": [gflops_before, gflops_after],
        # 2 FLOPs a parameter a new token (the prompt's prefill not counted): the share of the
        # device's measured matmul rate (bf16 8192³ products on a GPU) that decoding used
        "decode_flop_share_of_matmul": {
            side: r * 2 * n_params / (min(gflops_before, gflops_after) * 1e9)
            for side, r in rate.items()
        },
    }
    print(detail)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
