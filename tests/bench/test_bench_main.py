"""``python -m bench``: a quick run of the real benchmarks, and the runner's parts on fakes."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["forward", "generation", "scoring", "alignguard_step", "fisher", "merge_rss"]
"""Every registered benchmark, so none can rot unnoticed."""
ROW = {
    "measure": "fast vs slow | piped",
    "goal": "≥ 2×",
    "value": 2.5,
    "unit": "×",
    "spread": [2.0, 3.0],
    "reps": 3,
    "met": True,
    "detail": "one line",
}
README = """# Benchmarks

Intro.

<!-- bench:results:start -->
old table
<!-- bench:results:end -->

## Details

Kept as they are.
"""


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``bench/__main__.py`` as a module (the repository root is not on ``sys.path`` here)."""
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("bench.__main__")


def fake_benchmark(path: Path, body: str) -> Path:
    """A benchmark script at ``path``: parses ``--json PATH [--quick]``, then runs ``body``
    (which sees ``args``, ``json``, ``sys`` and ``ROW``)."""
    path.write_text(
        textwrap.dedent(
            """\
            import argparse, json, sys
            ROW = {row!r}
            parser = argparse.ArgumentParser()
            parser.add_argument("--json", required=True)
            parser.add_argument("--quick", action="store_true")
            args = parser.parse_args()
            """
        ).format(row=ROW)
        + textwrap.dedent(body)
    )
    return path


def test_quick_run_of_the_real_benchmarks(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    readme = (ROOT / "bench" / "README.md").read_bytes()
    command = ["-m", "bench", "--quick", "--out", str(out), "--no-readme"]
    run = subprocess.run(
        [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["ok"] and results["quick"]
    assert [r["name"] for r in results["benchmarks"]] == QUICK
    for record in results["benchmarks"]:
        assert record["status"] == "ok", record
        assert f"bench/{record['name']}.py --json " in record["command"]
        assert record["command"].endswith(" --quick")
        rows = record["result"]["summary"]
        assert rows and all(math.isfinite(row["value"]) for row in rows), rows
    machine = results["machine"]
    for key in ("cpu_count", "torch", "transformers", "peft", "python", "torch_threads"):
        assert machine[key], key
    assert len(machine["loadavg_before"]) == len(machine["loadavg_after"]) == 3
    assert machine["matmul_gflops_start"] > 0 and machine["matmul_gflops_end"] > 0
    assert results["git"] is None or len(results["git"]["revision"]) == 40
    assert (ROOT / "bench" / "README.md").read_bytes() == readme
    assert "| generation | batched generate" in run.stdout


def test_table_replaces_only_between_the_markers(runner: ModuleType) -> None:
    results: dict[str, Any] = {
        "command": "python -m bench",
        "date": "2026-12-04T00:00:00+00:00",
        "git": {"revision": "a" * 40, "dirty": False},
        "machine": {
            "cpu_count": 2,
            "loadavg_before": [1.0, 1.0, 1.0],
            "loadavg_after": [2.0, 1.5, 1.0],
            "python": "3.11.7",
            "torch": "2.13.0",
            "torch_threads": 2,
            "matmul_gflops_start": 150.0,
            "matmul_gflops_end": 140.0,
        },
        "benchmarks": [
            {"name": "good", "status": "ok", "result": {"benchmark": "good", "summary": [ROW]}},
            {"name": "gone", "status": "missing", "error": "bench/gone.py does not exist"},
        ],
    }
    table = runner.table(results)
    assert (
        "| good | fast vs slow \\| piped | ≥ 2× | **2.50×** [2.00, 3.00], 3 reps | yes |" in table
    )
    assert "| gone | missing: bench/gone.py does not exist | – | – | – |" in table
    assert "2 CPUs" in table and "150 / 140 GFLOP/s" in table and "`aaaaaaaaaaaa`" in table

    new = runner.replace_block(README, table)
    before, _, rest = README.partition(runner.START)
    _, _, after = rest.partition(runner.END)
    assert new == f"{before}{runner.START}\n{table}\n{runner.END}{after}"
    assert runner.replace_block(new, table) == new  # idempotent
    with pytest.raises(ValueError, match="markers"):
        runner.replace_block("# no markers\n", table)


def test_failures_are_recorded_and_the_others_still_run(
    runner: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write = 'json.dump({"benchmark": NAME, "summary": [ROW]}, open(args.json, "w"))\n'
    benchmarks = {
        "crash": fake_benchmark(tmp_path / "crash.py", 'sys.exit("boom: it broke")\n'),
        "good": fake_benchmark(tmp_path / "good.py", write.replace("NAME", '"good"')),
        "bad_row": fake_benchmark(
            tmp_path / "bad_row.py",
            'ROW["value"] = float("nan")\n' + write.replace("NAME", '"bad_row"'),
        ),
        "gone": tmp_path / "gone.py",
    }
    readme = tmp_path / "README.md"
    readme.write_text(README)
    out = tmp_path / "results.json"
    argv = ["--quick", "--out", str(out), "--readme"]

    assert runner.main(argv, benchmarks=benchmarks, readme=readme) == 1
    results = json.loads(out.read_text(encoding="utf-8"))
    records = {r["name"]: r for r in results["benchmarks"]}
    assert list(records) == list(benchmarks) and not results["ok"]
    assert records["crash"]["status"] == "failed" and records["crash"]["returncode"] == 1
    assert "boom: it broke" in records["crash"]["output_tail"]
    assert records["good"]["status"] == "ok"
    assert records["good"]["result"]["summary"] == [ROW]
    command = records["good"]["command"]
    assert command.startswith(f"{sys.executable} {tmp_path / 'good.py'} --json ")
    assert command.endswith("/good.json --quick")
    assert records["bad_row"]["status"] == "failed"
    assert "summary[0].value is not a finite number" in records["bad_row"]["error"]
    assert records["gone"]["status"] == "missing"
    assert results["command"] == "python -m bench " + " ".join(argv)
    text = readme.read_text()
    assert (
        "old table" not in text and "| good | fast vs slow" in text and "| crash | failed" in text
    )
    assert text.startswith("# Benchmarks\n\nIntro.\n\n") and text.endswith(
        "\n\n## Details\n\nKept as they are.\n"
    )
    assert "bench: crash failed" in capsys.readouterr().err

    # A missing script fails a run of the whole set, not one of chosen benchmarks (--only);
    # a run that is not whole writes nothing it is not asked to.
    readme.write_text(README)
    some = {name: benchmarks[name] for name in ("good", "gone")}
    assert runner.main(["--quick"], benchmarks=some, readme=readme) == 1
    assert runner.main(["--quick", "--only", "good", "gone"], benchmarks=some, readme=readme) == 0
    assert readme.read_text() == README


def test_default_set(runner: ModuleType) -> None:
    names = ["forward", "generation", "scoring", "alignguard_step", "fisher", "merge_rss"]
    assert list(runner.BENCHMARKS) == names
    assert all(path == ROOT / "bench" / f"{name}.py" for name, path in runner.BENCHMARKS.items())
