"""Peak memory of a streaming merge of three ~134M-parameter checkpoints onto a base.

Goal: peak RSS above the import baseline ≤ 1.5× one checkpoint's file size.

    .venv/bin/python bench/merge_rss.py --dir /tmp/merge_bench --methods ties task_arithmetic

Three steps, each in its own process so that nothing one leaves behind counts in another's peak:
``build`` writes a random Llama base (hidden 768, 12 layers, intermediate 2048, vocab 32000,
untied embeddings, fp32) and three contributors (base + N(0, 0.01²) noise) as safetensors;
``measure`` (one fresh process per method) runs the ``merge`` intervention exactly as the
runner does (``MergeIntervention.apply`` then ``save_pretrained``) while a thread polls
``/proc/self/status`` (RssAnon, RssFile) every 5 ms. Peaks are reported absolute and above the
RSS right after imports.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

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


def measure(root: Path, method: str) -> None:
    """Merge c0..c2 onto base with ``method``, save the result, print the memory figures."""
    import torch

    from audit.interventions.merge import MergeIntervention
    from audit.models.handle import ModelHandle
    from audit.plugins import RunContext

    torch.set_num_threads(1)
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
    work = root / f"work-{method}"
    ctx = RunContext(seed=0, suite_dir=root, work_dir=work / "work")
    params = MergeIntervention.Params(base="base", method=method, density=0.5)
    start = time.perf_counter()
    out = MergeIntervention(params).apply(handles, ctx)
    merged_s = time.perf_counter() - start
    out.model.save_pretrained(work / "model", safe_serialization=True)
    total_s = time.perf_counter() - start
    done.set()
    thread.join()
    size = (root / "base" / "model.safetensors").stat().st_size
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {
        "method": method,
        "checkpoint_mib": round(size / MIB, 1),
        "baseline_rss_mib": round(baseline["VmRSS"] / MIB, 1),
        "peak_rss_mib": round(maxrss / MIB, 1),
        "peak_above_baseline_mib": round((maxrss - baseline["VmRSS"]) / MIB, 1),
        "ratio": round((maxrss - baseline["VmRSS"]) / size, 2),
        "peak_anon_above_baseline_mib": round((peaks["RssAnon"] - baseline["RssAnon"]) / MIB, 1),
        "peak_file_mib": round(peaks["RssFile"] / MIB, 1),
        "merge_s": round(merged_s, 1),
        "merge_and_save_s": round(total_s, 1),
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/merge_bench"))
    parser.add_argument("--methods", nargs="+", default=["ties", "task_arithmetic"])
    parser.add_argument("--step", choices=["all", "build", "measure"], default="all")
    parser.add_argument("--method", default="ties", help="for --step measure")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if args.step == "build":
        build(args.dir)
    elif args.step == "measure":
        measure(args.dir, args.method)
    else:
        me = [sys.executable, __file__, "--dir", str(args.dir)]
        if not (args.dir / "c2" / "model.safetensors").is_file():
            subprocess.run([*me, "--step", "build"], check=True, env=env)
        for method in args.methods:
            subprocess.run([*me, "--step", "measure", "--method", method], check=True, env=env)


if __name__ == "__main__":
    main()
