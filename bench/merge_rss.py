"""Peak memory of a streaming merge of three ~134M-parameter checkpoints onto a base.

Goal: peak RSS above the import baseline ≤ 1.5× one checkpoint's file size.

    .venv/bin/python bench/merge_rss.py --dir /tmp/merge_bench \
        --methods task_arithmetic ties ties:tensor magnitude_prune dare_linear dare_ties

Three steps, each in its own process so that nothing one leaves behind counts in another's peak:
``build`` writes a random Llama base (hidden 768, 12 layers, intermediate 2048, vocab 32000,
untied embeddings, fp32) and three contributors (base + N(0, 0.01²) noise) as safetensors;
``measure`` (one fresh process per method) runs the ``merge`` intervention exactly as the
runner does (``MergeIntervention.apply`` then ``save_pretrained``) while a thread polls
``/proc/self/status`` (RssAnon, RssFile) every 5 ms. Peaks are reported absolute and above the
RSS right after imports. A method is ``NAME`` or ``NAME:TRIM`` (``ties:tensor`` is peft's
per-tensor TIES; ``ties`` the intervention's default, global trim), always at density 0.5.

``--impl both`` (the default) measures each of ties, dare_* and magnitude_prune twice, side by
side: ``reference`` (``tensor_methods.LOW_MEMORY = False``: peft's whole-tensor functions, the
whole-model gather of global TIES) then ``blocked`` (the default code); the merged files are
compared byte for byte. task_arithmetic has one implementation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

MIB = 1 << 20


def build(root: Path) -> None:
    """Write base/, c0/, c1/, c2/ under ``root``."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    n = sum(p.numel() for p in model.parameters())
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>")),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    base = {k: v.clone() for k, v in model.state_dict().items()}
    for name in ("base", "c0", "c1", "c2"):
        if name != "base":
            with torch.no_grad():
                for k, p in model.state_dict().items():
                    p.copy_(base[k] + 0.01 * torch.randn_like(p))
        model.save_pretrained(root / name, safe_serialization=True)
        tok.save_pretrained(root / name)
    size = (root / "base" / "model.safetensors").stat().st_size
    print(json.dumps({"parameters": n, "checkpoint_bytes": size}))


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def measure(root: Path, spec: str, impl: str) -> None:
    """Merge c0..c2 onto base with ``spec`` (``NAME[:TRIM]``), save the result, print the memory
    figures; ``impl = "reference"`` runs the whole-tensor code (``LOW_MEMORY = False``)."""
    import torch

    from audit.interventions.merge import MergeIntervention
    from audit.merging import tensor_methods
    from audit.models.handle import ModelHandle
    from audit.plugins import RunContext

    torch.set_num_threads(1)
    tensor_methods.LOW_MEMORY = impl != "reference"
    method, _, trim = spec.partition(":")
    # how the blocked magnitude pruning decided each (tensor, contributor): a threshold, or
    # torch.topk's own mask where entries tied across the threshold
    decided = {"threshold": 0, "topk": 0}
    top_k = tensor_methods._top_k

    def counted(delta: Any, k: int, consumable: bool) -> Any:
        if impl == "topk":  # the worst case: every threshold tied (torch.topk's own mask)
            magnitudes = delta.abs_() if consumable else delta.abs()
            keep = torch.zeros(delta.numel(), dtype=torch.bool)
            keep[torch.topk(magnitudes, k=k, largest=True, sorted=False).indices] = True
            del magnitudes
        else:
            keep = top_k(delta, k, consumable)
        decided["threshold" if isinstance(keep, int) else "topk"] += 1
        return keep

    tensor_methods._top_k = counted  # type: ignore[assignment]
    # the modules a real run has imported before the merge starts
    import peft.utils.merge_utils  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    import audit.merging.stream  # noqa: F401

    baseline = _status()
    peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            s = _status()
            for k in peaks:
                peaks[k] = max(peaks[k], s[k])
            time.sleep(0.005)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    handles = {n: ModelHandle(n, n, root / n) for n in ("c0", "c1", "c2", "base")}
    work = root / f"work-{spec.replace(':', '-')}-{impl}"
    ctx = RunContext(seed=0, suite_dir=root, work_dir=work / "work")
    extra = {"trim": trim} if trim else {}
    params = MergeIntervention.Params(base="base", method=method, density=0.5, **extra)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    out = MergeIntervention(params).apply(handles, ctx)
    merged_s = time.perf_counter() - start
    out.model.save_pretrained(work / "model", safe_serialization=True)
    total_s = time.perf_counter() - start
    done.set()
    thread.join()
    size = (root / "base" / "model.safetensors").stat().st_size
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    digest = hashlib.sha256()
    with open(work / "model" / "model.safetensors", "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    result = {
        "method": spec,
        "impl": "-" if method == "task_arithmetic" else impl,
        "checkpoint_mib": round(size / MIB, 1),
        "baseline_rss_mib": round(baseline["VmRSS"] / MIB, 1),
        "peak_rss_mib": round(maxrss / MIB, 1),
        "peak_above_baseline_mib": round((maxrss - baseline["VmRSS"]) / MIB, 1),
        "ratio": round((maxrss - baseline["VmRSS"]) / size, 2),
        "peak_anon_above_baseline_mib": round((peaks["RssAnon"] - baseline["RssAnon"]) / MIB, 1),
        "peak_file_mib": round(peaks["RssFile"] / MIB, 1),
        "merge_s": round(merged_s, 1),
        "merge_and_save_s": round(total_s, 1),
        "load_before": round(load, 1),
        "load_after": round(os.getloadavg()[0], 1),
        "sha256": digest.hexdigest()[:16],
        "pruned_by_threshold": decided["threshold"],
        "pruned_by_topk": decided["topk"],
    }
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result), flush=True)


def table(results: list[dict[str, object]]) -> str:
    """The results as the markdown table of bench/README.md."""
    lines = [
        "| method | impl | peak RSS above baseline | ÷ checkpoint | anonymous above baseline "
        "| file-backed peak | merge | merge + save | load avg (before/after) | output sha256 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['method']} | {r['impl']} | {r['peak_above_baseline_mib']:,} MiB "
            f"| **{r['ratio']}×** | {r['peak_anon_above_baseline_mib']:,} MiB "
            f"| {r['peak_file_mib']:,} MiB | {r['merge_s']} s | {r['merge_and_save_s']} s "
            f"| {r['load_before']} / {r['load_after']} | `{str(r['sha256'])[:8]}` |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/merge_bench"))
    parser.add_argument("--methods", nargs="+", default=["ties", "task_arithmetic"])
    parser.add_argument(
        "--impl",
        choices=["both", "blocked", "reference", "topk"],
        default="both",
        help="topk: blocked, with every magnitude threshold taken from torch.topk (worst case)",
    )
    parser.add_argument("--step", choices=["all", "build", "measure"], default="all")
    parser.add_argument("--method", default="ties", help="for --step measure")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if args.step == "build":
        build(args.dir)
    elif args.step == "measure":
        measure(args.dir, args.method, "blocked" if args.impl == "both" else args.impl)
    else:
        me = [sys.executable, __file__, "--dir", str(args.dir)]
        if not (args.dir / "c2" / "model.safetensors").is_file():
            subprocess.run([*me, "--step", "build"], check=True, env=env)
        results = []
        for spec in args.methods:
            single = spec.partition(":")[0] == "task_arithmetic"
            impls = ["reference", "blocked"] if args.impl == "both" else [args.impl]
            for impl in ["blocked"] if single else impls:
                run = subprocess.run(
                    [*me, "--step", "measure", "--method", spec, "--impl", impl],
                    check=True,
                    env=env,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                print(run.stdout, end="", flush=True)
                results.append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(table(results))


if __name__ == "__main__":
    main()
