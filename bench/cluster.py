"""A suite through ``--executor ray`` against the local executor, side by side (issue 19).

Both run ``audit run SUITE --quiet`` (default ``suites/demo.toml``) from a store that holds
only the organism (built once beforehand), so every other step is computed: the local
executor one step at a time in one process (torch's default threads), the Ray executor with a
cluster it starts on this machine (one CPU per step, so as many steps at once as the machine
has CPUs; its start is timed too), and the local executor again with one torch thread
(``OMP_NUM_THREADS=1``), the thread count of a one-CPU Ray step. The three runs alternate,
``--reps`` times each; the ratio is local wall time over Ray wall time per repetition. The
Ray run's results.json is compared with each local run's as the executor tests compare them
(all but times and ``cached``): torch's thread count changes floating-point rounding, so only
the one-thread local run is expected to equal it to the last bit. No goal: the issue asks for
concurrency, not a speed-up; the figure says what it buys on this machine.

``--json`` writes the contract's summary row (``python -m bench``); ``--quick`` runs one
repetition.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from rows import summary_row  # noqa: E402

from audit.results import comparable as normalized  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def audit(*args: str, env: dict[str, str] | None = None) -> float:
    """Run ``audit ARGS`` and return its wall time; exit 0 or 1 (a gate) is success."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "audit", *args],
        capture_output=True,
        text=True,
        check=False,
        env=os.environ | (env or {}),
    )
    took = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"audit {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, default=ROOT / "suites" / "demo.toml")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    reps = 1 if args.quick else args.reps
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    scratch = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        seed = scratch / "organism-store"
        audit("organism", "build", "aligned", "--cache", str(seed), "--quiet")
        ratios, local_s, ray_s, one_s = [], [], [], []
        equal: dict[str, list[bool]] = {"local": [], "local-1-thread": []}
        runs = {
            "local": ("local", {}),
            "ray": ("ray", {}),
            "local-1-thread": ("local", {"OMP_NUM_THREADS": "1"}),
        }
        for rep in range(reps):
            walls: dict[str, float] = {}
            outs: dict[str, Path] = {}
            for name, (executor, env) in runs.items():
                store, out = scratch / f"{name}-{rep}", scratch / f"out-{name}-{rep}"
                shutil.copytree(seed, store)
                run = ["run", str(args.suite), "--cache", str(store), "--out", str(out)]
                walls[name] = audit(*run, "--quiet", "--executor", executor, env=env)
                outs[name] = out
                print(f"rep {rep + 1}: {name} {walls[name]:.1f} s", flush=True)
            results = {e: json.loads((o / "results.json").read_text()) for e, o in outs.items()}
            for name, flags in equal.items():
                flags.append(normalized(results[name]) == normalized(results["ray"]))
            local_s.append(walls["local"])
            ray_s.append(walls["ray"])
            one_s.append(walls["local-1-thread"])
            ratios.append(walls["local"] / walls["ray"])
        steps = len(results["local"]["steps"])
        same = equal["local-1-thread"]
        row = summary_row(
            f"{args.suite.name} through --executor ray vs local ({os.cpu_count()} CPUs)",
            "none (issue 19 asks for concurrency, not a speed-up)",
            ratios,
            f"{steps} steps; local {min(local_s):.0f}–{max(local_s):.0f} s, ray "
            f"{min(ray_s):.0f}–{max(ray_s):.0f} s (cluster start included), local on one "
            f"thread {min(one_s):.0f}–{max(one_s):.0f} s; results equal to the one-thread "
            f"local run's in {sum(same)} of {len(same)} pairs, to the default-threads run's "
            f"in {sum(equal['local'])} of {len(same)}",
            passes=None,
        )
        payload = {
            "benchmark": "cluster",
            "summary": [row],
            "local_s": local_s,
            "ray_s": ray_s,
            "local_one_thread_s": one_s,
            "results_equal_to_ray": equal,
        }
        print(json.dumps(payload, indent=1))
        if args.json:
            args.json.write_text(json.dumps(payload, indent=1) + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
