"""Peak memory of a streaming merge of three ~134M-parameter checkpoints onto a base.

Goal: peak RSS above the import baseline ≤ 1.5× one checkpoint's file size.

    .venv/bin/python bench/merge_rss.py --dir /tmp/merge_bench \
        [--methods task_arithmetic ties ties:tensor magnitude_prune dare_linear dare_ties] \
        [--impl both|blocked|reference|topk] [--reps 3] [--quick] [--json OUT]

Three steps, each in its own process so that nothing one leaves behind counts in another's peak:
``build`` writes a random Llama base (hidden 768, 12 layers, intermediate 2048, vocab 32000,
untied embeddings, fp32) and three contributors (base + N(0, 0.01²) noise) as safetensors;
``measure`` (one fresh process per method) runs the ``merge`` intervention exactly as the
runner does (``MergeIntervention.apply`` then ``save_pretrained``) while a thread polls
``/proc/self/status`` (RssAnon, RssFile) every 5 ms. Peaks are reported absolute and above the
RSS right after imports. A method is ``NAME`` or ``NAME:TRIM`` (``ties:tensor`` is peft's
per-tensor TIES; ``ties`` the intervention's default, global trim), always at density 0.5.

``--impl both`` (the default) measures each of ties, dare_* and magnitude_prune both ways, side
by side: ``reference`` (``tensor_methods.LOW_MEMORY = False``: peft's whole-tensor functions,
the whole-model gather of global TIES) then ``blocked`` (the default code); the merged files are
compared byte for byte. task_arithmetic has one implementation. The ``--reps`` repetitions
are interleaved (every method once, then again); the reference code runs in the first only (its
peak is what the change removed, measured in bench/README.md; once keeps a whole run short).

``--json`` writes every measurement with one summary row per method for ``python -m bench``:
the blocked code's ratio (median over repetitions; goal ≤ 1.5×), with the reference code's
ratio and the merge time reference ÷ blocked beside it. ``--quick`` is a smoke run: a tiny
model (hidden 128, 2 layers, vocab 1000) built into a temporary directory, ``ties`` and
``task_arithmetic``, blocked code only, one repetition.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from rows import summary_row  # noqa: E402

MIB = 1 << 20
GOAL = 1.5
CODE = {  # a measurement's impl, in words
    "blocked": "blocked code",
    "-": "its one implementation",
    "topk": "blocked code, every threshold by torch.topk",
    "reference": "reference code (whole tensors)",
}
METHODS = ["task_arithmetic", "ties", "ties:tensor", "magnitude_prune", "dare_linear", "dare_ties"]
SIZES: dict[str, dict[str, Any]] = {
    # The benchmark's model: 134M parameters, a 511.6 MiB fp32 checkpoint.
    "134m": dict(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
    ),
    # --quick's: 0.6M parameters, where the libraries' own allocations dominate the peak.
    "tiny": dict(
        vocab_size=1000,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
    ),
}


def built(root: Path, size: str) -> bool:
    """Whether ``root`` holds the checkpoints of ``size`` (from an earlier ``build``)."""
    config = root / "base" / "config.json"
    if not (root / "c2" / "model.safetensors").is_file() or not config.is_file():
        return False
    saved = json.loads(config.read_text())
    return all(saved.get(key) == value for key, value in SIZES[size].items())


def build(root: Path, size: str = "134m") -> None:
    """Write base/, c0/, c1/, c2/ of ``size`` under ``root``."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(**SIZES[size], max_position_embeddings=512, tie_word_embeddings=False)
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
    checkpoint_bytes = (root / "base" / "model.safetensors").stat().st_size
    print(json.dumps({"parameters": n, "checkpoint_bytes": checkpoint_bytes}))


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
        "merge_s": round(merged_s, 2),
        "merge_and_save_s": round(total_s, 2),
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


def summary(results: list[dict[str, Any]], size: str) -> list[dict[str, Any]]:
    """One row per method: the ratio of the code measured (blocked where both were), with the
    reference code's ratio and the merge time reference ÷ blocked beside it. The goal applies
    to the 134m model's checkpoints only."""
    rows = []
    for spec in dict.fromkeys(str(r["method"]) for r in results):
        mine = [r for r in results if r["method"] == spec]
        reference = [r for r in mine if r["impl"] == "reference"]
        measured = [r for r in mine if r["impl"] != "reference"] or reference
        row = summary_row(
            f"merge peak RSS ÷ checkpoint: {spec}",
            f"≤ {GOAL:g}×",
            [float(r["ratio"]) for r in measured],
            f"{size} Llama, {mine[0]['checkpoint_mib']} MiB checkpoint, base + 3 contributors, "
            "density 0.5, 1 thread, a fresh process per merge: peak RSS above the import "
            f"baseline ÷ checkpoint size, {CODE[str(measured[0]['impl'])]}",
            passes=(lambda value: value <= GOAL) if size == "134m" else None,
        )
        if reference and measured is not reference:  # reference once, before the first blocked
            pairs = zip(reference, measured, strict=False)
            times = [float(a["merge_s"]) / float(b["merge_s"]) for a, b in pairs if b["merge_s"]]
            row["reference_value"] = statistics.median(float(r["ratio"]) for r in reference)
            row["time_reference_over_blocked"] = statistics.median(times) if times else None
            row["detail"] += f"; reference code {row['reference_value']:.2f}×"
            if times:
                row["detail"] += f", merge time reference ÷ blocked {statistics.median(times):.2f}×"
        rows.append(row)
    return rows


def run_all(
    root: Path, size: str, methods: list[str], impl: str, reps: int, together: bool = False
) -> list[dict[str, Any]]:
    """Build ``root`` if needed, then measure every method and implementation in a fresh process,
    ``reps`` times interleaved (all at once when ``together``: for --quick, whose times are not
    compared); print each measurement and the table, return the measurements."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    me = [sys.executable, __file__, "--dir", str(root), "--size", size]
    if not built(root, size):
        subprocess.run([*me, "--step", "build"], check=True, env=env)
    impls = ["reference", "blocked"] if impl == "both" else [impl]
    commands = [
        [*me, "--step", "measure", "--method", spec, "--impl", one]
        for rep in range(reps)
        for spec in methods
        for one in (["blocked"] if spec.partition(":")[0] == "task_arithmetic" else impls)
        if one != "reference" or rep == 0 or impl == "reference"
    ]
    started = [_start(c, env) for c in commands] if together else []
    results = []
    for command in commands:
        run = started.pop(0) if together else _start(command, env)
        stdout, _ = run.communicate()
        if run.returncode:
            raise subprocess.CalledProcessError(run.returncode, command)
        print(stdout, end="", flush=True)
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    print(table(results))
    return results


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)


def write(path: Path | None, results: list[dict[str, Any]], size: str) -> None:
    """Write the measurements and their summary rows to ``path``, when given."""
    if path is not None:
        out = {
            "benchmark": "merge_rss",
            "summary": summary(results, size),
            "size": size,
            "measurements": results,
        }
        path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/merge_bench"))
    parser.add_argument("--size", choices=sorted(SIZES), default="134m", help="model size")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument(
        "--impl",
        choices=["both", "blocked", "reference", "topk"],
        default="both",
        help="topk: blocked, with every magnitude threshold taken from torch.topk (worst case)",
    )
    parser.add_argument("--step", choices=["all", "build", "measure"], default="all")
    parser.add_argument("--method", default="ties", help="for --step measure")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every measurement")
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 methods, blocked")
    parser.add_argument("--json", dest="json_out", type=Path, default=None)
    args = parser.parse_args()
    if args.step == "build":
        build(args.dir, args.size)
    elif args.step == "measure":
        measure(args.dir, args.method, "blocked" if args.impl == "both" else args.impl)
    elif args.quick:
        with tempfile.TemporaryDirectory(prefix="merge-bench-") as tmp:
            methods = ["ties", "task_arithmetic"]
            results = run_all(Path(tmp), "tiny", methods, "blocked", 1, together=True)
        write(args.json_out, results, "tiny")
    else:
        results = run_all(args.dir, args.size, args.methods, args.impl, args.reps)
        write(args.json_out, results, args.size)


if __name__ == "__main__":
    main()
