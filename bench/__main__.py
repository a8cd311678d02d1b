"""Run every ratio benchmark and collect its figures: ``python -m bench`` (from the repo root).

    python -m bench [--quick] [--only NAME ...] [--out PATH] [--readme | --no-readme]

Each benchmark of :data:`BENCHMARKS` runs in its own subprocess, in this order: ``forward``,
``generation``, ``scoring``, ``alignguard_step``, ``fisher``, ``merge_rss``. A whole run (no
``--quick``, no ``--only``) writes ``bench/results.json`` and regenerates the results table of
``bench/README.md`` between ``<!-- bench:results:start -->`` and ``<!-- bench:results:end -->``;
any other run writes only what ``--out`` and ``--readme`` ask for. The table is printed on
stdout and progress (each benchmark and its wall time) on stderr. A benchmark that fails is
recorded with its error and the tail of its output, the others still run, and the exit status
is 1; a registered script that does not exist is recorded as ``missing``, a failure only in a
whole run. ``--quick`` is a smoke run (tiny sizes, 1-2 repetitions): it shows that every
benchmark works; its figures mean nothing.

Not run here (long, or not ratios), each run by hand as its docstring says:
``bench/organism_build.py``, ``bench/drift_speed.py``, ``bench/judges.py``.

The contract every benchmark script follows: ``python bench/NAME.py --json PATH [--quick]``,
run from the repository root, exits 0 and writes to PATH a JSON object with at least::

    {"benchmark": NAME, "summary": [ROW, ...]}

where each ROW is::

    {
        "measure": str,          # what is compared, e.g. "AlignGuard step vs LoRA step (23m)"
        "goal": str,             # e.g. "≤ 1.3×"
        "value": float,          # the ratio, median over repetitions (62.0 for 62% with "%")
        "unit": "×" | "%",       # "%" for a share
        "spread": [min, max],    # of the ratio over repetitions
        "reps": int,
        "met": bool | None,      # None where the goal does not apply (e.g. --quick's sizes)
        "detail": str,           # one line: sizes, threads, what each side is
    }

Rows may carry more keys, and the object any other figures. A ratio is measured side by side:
the two sides' repetitions are interleaved (A, B, A, B, ...) in the same process, and a full
run takes at least 3 repetitions.

``results.json`` holds the command, date and git revision (``git rev-parse HEAD``, and whether
tracked files differ from it), the machine's facts (CPU count, load average before and after,
Python/torch/transformers/peft/lm-eval versions, torch threads, fp32 matmul GFLOP/s at start
and end), and for each benchmark its exact command, status, wall time and JSON.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results.json"
README = HERE / "README.md"
START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"
BENCHMARKS: dict[str, Path] = {
    name: HERE / f"{name}.py"
    for name in ("forward", "generation", "scoring", "alignguard_step", "fisher", "merge_rss")
}
PACKAGES = ("torch", "transformers", "peft", "lm-eval")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
STATUSES = ("ok", "failed", "missing")
TAIL = 4000  # characters of a failed benchmark's output kept


def contract_errors(name: str, data: Any) -> list[str]:
    """How ``data``, benchmark ``name``'s JSON, breaks the contract (empty when it does not)."""
    if not isinstance(data, dict):
        return ["not a JSON object"]
    errors = []
    if data.get("benchmark") != name:
        errors.append(f"benchmark is {data.get('benchmark')!r}, not {name!r}")
    rows = data.get("summary")
    if not isinstance(rows, list) or not rows:
        return [*errors, "summary is not a non-empty list"]
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            errors.append(f"summary[{i}] is not an object")
            continue
        for key in ("measure", "goal", "detail"):
            if not isinstance(row.get(key), str):
                errors.append(f"summary[{i}].{key} is not a string")
        value, spread = row.get("value"), row.get("spread")
        if not (_number(value) and math.isfinite(value)):
            errors.append(f"summary[{i}].value is not a finite number: {value!r}")
        if row.get("unit") not in ("×", "%"):
            errors.append(f"summary[{i}].unit is {row.get('unit')!r}, not '×' or '%'")
        if not (isinstance(spread, list) and len(spread) == 2 and all(map(_number, spread))):
            errors.append(f"summary[{i}].spread is not [min, max]: {spread!r}")
        reps = row.get("reps")
        if not isinstance(reps, int) or isinstance(reps, bool) or reps < 1:
            errors.append(f"summary[{i}].reps is not a positive integer: {reps!r}")
        if row.get("met", 0) not in (True, False, None):
            errors.append(f"summary[{i}].met is not true, false or null")
    return errors


def _number(x: Any) -> TypeGuard[float]:
    return isinstance(x, int | float) and not isinstance(x, bool)


def run_benchmark(name: str, script: Path, quick: bool, scratch: Path) -> dict[str, Any]:
    """Run one benchmark script in a subprocess; its record for ``results.json``."""
    out = scratch / f"{name}.json"
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    command = [sys.executable, str(shown), "--json", str(out), *(["--quick"] if quick else [])]
    record: dict[str, Any] = {"name": name, "command": shlex.join(command)}
    if not script.is_file():
        return {**record, "status": "missing", "error": f"{shown} does not exist"}
    env = {**OFFLINE, **os.environ}
    start = time.perf_counter()
    run = subprocess.run(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    record.update(wall_s=round(time.perf_counter() - start, 2), returncode=run.returncode)
    if run.returncode != 0:
        error = f"exited with status {run.returncode}"
        return {**record, "status": "failed", "error": error, "output_tail": run.stdout[-TAIL:]}
    try:
        data = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        error = f"no JSON results: {exc}"
        return {**record, "status": "failed", "error": error, "output_tail": run.stdout[-TAIL:]}
    errors = contract_errors(name, data)
    if errors:
        error = "breaks the contract: " + "; ".join(errors)
        return {**record, "status": "failed", "error": error, "result": data}
    return {**record, "status": "ok", "result": data}


def versions() -> dict[str, str | None]:
    """Python's and the libraries' versions (None where a library is not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def git_revision() -> dict[str, Any] | None:
    """HEAD's commit and whether tracked files differ from it (None outside a git checkout)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"revision": head, "dirty": bool(status.strip())}


def format_value(row: Mapping[str, Any]) -> str:
    """``row``'s value with its spread and repetitions, e.g. ``**1.15×** [1.05, 1.20], 3 reps``."""
    unit = row["unit"]
    digits = 1 if unit == "%" else 2
    low, high = row["spread"]
    reps = f"{row['reps']} rep{'s' if row['reps'] != 1 else ''}"
    return f"**{row['value']:.{digits}f}{unit}** [{low:.{digits}f}, {high:.{digits}f}], {reps}"


def table(results: Mapping[str, Any]) -> str:
    """The Markdown results table of ``results`` (a ``results.json`` object) and its facts."""
    lines = [
        "| benchmark | measure | goal | value (median [min, max]) | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    for record in results["benchmarks"]:
        name = record["name"]
        if record["status"] != "ok":
            error = f"{record['status']}: {record['error']}".replace("|", "\\|")
            lines.append(f"| {name} | {error} | – | – | – |")
            continue
        for row in record["result"]["summary"]:
            met = {True: "yes", False: "**no**", None: "–"}[row["met"]]
            cells = [name, row["measure"], row["goal"], format_value(row), met]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    m, git = results["machine"], results["git"]
    load = f"{m['loadavg_before'][0]:.1f} → {m['loadavg_after'][0]:.1f}"
    libraries = ", ".join(f"{k} {m[k]}" for k in ("python", *PACKAGES) if m.get(k))
    revision = "no git revision"
    if git:
        revision = f"revision `{git['revision'][:12]}`" + (
            " with local changes" if git["dirty"] else ""
        )
    lines += [
        "",
        f"{m['cpu_count']} CPUs, load average {load}, fp32 matmul "
        f"{m['matmul_gflops_start']:.0f} / {m['matmul_gflops_end']:.0f} GFLOP/s (start/end, "
        f"{m['torch_threads']} torch threads); {libraries}; {revision}; {results['date']}. "
        f"Command: `{results['command']}`.",
    ]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with what lies between the results markers replaced by ``block``."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {START} ... {END} are missing or out of order")
    return f"{text[: start + len(START)]}\n{block}\n{text[end:]}"


def parse_args(argv: Sequence[str] | None, names: Sequence[str]) -> argparse.Namespace:
    """The command line, with ``names`` the benchmarks ``--only`` may choose."""
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 1-2 reps")
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", help="these only")
    parser.add_argument(
        "--out", type=Path, help=f"results file (whole runs: {RESULTS.relative_to(ROOT)})"
    )
    parser.add_argument(
        "--readme",
        action=argparse.BooleanOptionalAction,
        help="regenerate bench/README.md's table (whole runs: yes)",
    )
    return parser.parse_args(argv)


def main(
    argv: Sequence[str] | None = None,
    benchmarks: Mapping[str, Path] = BENCHMARKS,
    readme: Path = README,
) -> int:
    """Run the benchmarks; 0 when every one chosen succeeded, else 1."""
    args = parse_args(argv, list(benchmarks))
    whole = not args.quick and not args.only
    out = args.out if args.out is not None else (RESULTS if whole else None)
    write_readme = args.readme if args.readme is not None else whole
    matmul_s = 0.25 if args.quick else 2.0
    names = args.only or list(benchmarks)
    if write_readme:  # missing markers fail now, not after the run
        replace_block(readme.read_text(encoding="utf-8"), "")

    import torch

    from bench.organism_build import matmul_gflops

    shown_argv = shlex.join(sys.argv[1:] if argv is None else argv)
    results: dict[str, Any] = {
        "command": f"python -m bench {shown_argv}".strip(),
        "python": sys.executable,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": git_revision(),
        "quick": args.quick,
        "machine": {
            "cpu_count": os.cpu_count(),
            "loadavg_before": list(os.getloadavg()),
            **versions(),
            "torch_threads": torch.get_num_threads(),
            "matmul_gflops_start": matmul_gflops(matmul_s),
        },
    }
    start = time.perf_counter()
    records = []
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        for i, name in enumerate(names, 1):
            print(f"bench: [{i}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
            record = run_benchmark(name, benchmarks[name], args.quick, Path(scratch))
            records.append(record)
            how = record["status"] + (f": {record['error']}" if record["status"] != "ok" else "")
            wall = f" in {record['wall_s']:.1f} s" if "wall_s" in record else ""
            print(f"bench: {name} {how}{wall}", file=sys.stderr, flush=True)
    results["machine"].update(
        matmul_gflops_end=matmul_gflops(matmul_s), loadavg_after=list(os.getloadavg())
    )
    results["wall_s"] = round(time.perf_counter() - start, 1)
    failed = [r["name"] for r in records if r["status"] == "failed"]
    failed += [r["name"] for r in records if r["status"] == "missing" and not args.only]
    results["ok"] = not failed
    results["benchmarks"] = records

    text = table(results)
    print(text)
    if out is not None:
        out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if write_readme:
        readme.write_text(replace_block(readme.read_text(encoding="utf-8"), text), "utf-8")
    counts = {status: sum(r["status"] == status for r in records) for status in STATUSES}
    done = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    print(f"bench: {done} in {results['wall_s']:.0f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
