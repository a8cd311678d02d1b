"""Failures are contained: an evaluator that raises or runs out of memory on one model, or a
model that would not fit on the store's disk, fails that step only, with its cause; every
independent step still runs, the report shows the failure, and the run exits 3."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from audit import registry
from audit.cli import main

PLUGIN = '''
from __future__ import annotations

from audit.plugins import EvalResult, MetricSpec, Params, Sample, TrainedModel
from audit.stats import metric_rows_from_samples

CALLS: list[str] = []


class FlakyParams(Params):
    fail_on: str = ""
    error: str = "memory"


def _error(kind: str) -> BaseException:
    if kind == "memory":
        return MemoryError()
    if kind == "torch_oom":
        import torch

        return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    if kind == "runtime_oom":
        return RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                            "can't allocate memory: you tried to allocate 9 GB. Out of memory")
    return ValueError("the evaluator broke")


class Flaky:
    """Scores every model 1.0 without looking at it, except that it raises on ``fail_on``."""

    name = "flaky"
    version = "1"
    Params = FlakyParams
    metrics = (MetricSpec("score", higher_is_better=True, description="a score", kind="mean"),)

    def __init__(self, params):
        self.params = params

    def evaluate(self, model, ctx):
        CALLS.append(f"evaluate:{model.name}")
        if model.name == self.params.fail_on:
            raise _error(self.params.error)
        samples = [Sample("score", f"i{i}", "in", "out", 1.0) for i in range(3)]
        return EvalResult(metric_rows_from_samples(samples, self.metrics), samples)


class CopyParams(Params):
    fail: bool = False


class Copy:
    """The parent model, unchanged (a cheap intervention)."""

    name = "copy"
    version = "1"
    Params = CopyParams

    def __init__(self, params):
        self.params = params

    def apply(self, inputs, ctx):
        CALLS.append("apply")
        if self.params.fail:
            raise MemoryError()
        (parent,) = inputs.values()
        return TrainedModel(parent.model, parent.tokenizer, {"copied": parent.name})
'''


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Register the ``flaky`` evaluator and ``copy`` intervention through entry points (as a
    third-party package would); returns the list of calls the plug-ins record."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "containment_audit_plugin.py").write_text(PLUGIN)
    info = site / "containment_audit_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: containment-audit-plugin\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        "[audit.evaluators]\nflaky = containment_audit_plugin:Flaky\n\n"
        "[audit.interventions]\ncopy = containment_audit_plugin:Copy\n"
    )
    monkeypatch.syspath_prepend(str(site))
    registry.evaluators.get("flaky")
    registry.interventions.get("copy")
    calls: list[str] = sys.modules["containment_audit_plugin"].CALLS
    calls.clear()
    return calls


def _suite(tmp_path: Path, a: Path, b: Path, *, fail_on: str, error: str, fail_copy: bool) -> Path:
    suite = tmp_path / "suite.toml"
    suite.write_text(
        textwrap.dedent(f"""
        [suite]
        name = "contained"
        cache_dir = "cache"

        [models.a]
        source = "path:{a}"

        [models.b]
        source = "path:{b}"

        [models.c]
        from = "b"
        intervention = "copy"
        fail = {str(fail_copy).lower()}

        [evaluators.flaky]
        kind = "flaky"
        fail_on = "{fail_on}"
        error = "{error}"

        [evaluators.steady]
        kind = "flaky"

        [[gates]]
        metric = "steady.score"
        min = 0.5
        """)
    )
    return suite


def _run(suite: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    code = main(["run", str(suite), "--out", str(out), "--quiet"])
    results = json.loads((out / "results.json").read_text())
    return code, results, capsys.readouterr().out


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("memory", "out of memory (MemoryError)"),
        ("torch_oom", "OutOfMemoryError: CUDA out of memory"),
        ("runtime_oom", "RuntimeError: [enforce fail"),
        ("value", "ValueError: the evaluator broke"),
    ],
)
def test_evaluator_failure_on_one_model_is_contained(
    plugins: list[str],
    tiny_checkpoint: Path,
    tiny_checkpoint_factory: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    error: str,
    expected: str,
) -> None:
    b = tiny_checkpoint_factory(1)
    suite = _suite(tmp_path, tiny_checkpoint, b, fail_on="b", error=error, fail_copy=False)
    code, results, out = _run(suite, tmp_path / "out", capsys)

    assert code == 3 and results["verdict"] == "error" and results["exit_code"] == 3
    (failure,) = results["failures"]
    assert failure["step"] == "eval:flaky@b"
    assert failure["error"].startswith(expected), failure["error"]
    assert "Traceback" in failure["traceback"]
    status = {s["step"]: s["status"] for s in results["steps"]}
    assert status == {
        "model:a": "ok",
        "eval:flaky@a": "ok",
        "eval:steady@a": "ok",
        "model:b": "ok",
        "eval:flaky@b": "failed",
        "eval:steady@b": "ok",  # the same model, another evaluator
        "model:c": "ok",  # built from b after b's evaluation failed
        "eval:flaky@c": "ok",
        "eval:steady@c": "ok",
    }
    assert plugins.count("apply") == 1
    assert all(g["passed"] for g in results["gates"])  # the gates pass; the crash still counts
    scored = {(m["model"], m["evaluator"]) for m in results["metrics"] if m["slice"] == "all"}
    assert ("b", "flaky") not in scored and ("b", "steady") in scored and ("c", "flaky") in scored
    # the report and the console name the failed step and its cause
    html = (tmp_path / "out" / "index.html").read_text()
    assert "eval:flaky@b" in html and expected in html
    assert f"ERROR eval:flaky@b: {expected}" in out


def test_out_of_memory_building_a_model_skips_only_what_needs_it(
    plugins: list[str],
    tiny_checkpoint: Path,
    tiny_checkpoint_factory: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    b = tiny_checkpoint_factory(1)
    suite = _suite(tmp_path, tiny_checkpoint, b, fail_on="", error="memory", fail_copy=True)
    code, results, out = _run(suite, tmp_path / "out", capsys)
    assert code == 3
    assert [(f["step"], f["error"]) for f in results["failures"]] == [
        ("model:c", "out of memory (MemoryError)")
    ]
    status = {s["step"]: s["status"] for s in results["steps"]}
    assert status["model:c"] == "failed"
    assert status["eval:flaky@c"] == status["eval:steady@c"] == "skipped"
    assert all(status[f"eval:{e}@{m}"] == "ok" for e in ("flaky", "steady") for m in "ab")
    assert not list((tmp_path / "cache" / "tmp").iterdir())  # nothing half-written kept
    assert "model:c" in (tmp_path / "out" / "index.html").read_text()


class _Usage:
    """``shutil.disk_usage`` answers: ``free`` bytes for each call in turn (the last repeats)."""

    def __init__(self, *free: int):
        self.free = list(free)
        self.calls = 0

    def __call__(self, path: Any) -> Any:
        free = self.free[min(self.calls, len(self.free) - 1)]
        self.calls += 1
        return shutil._ntuple_diskusage(10 * 2**40, 10 * 2**40 - free, free)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_model_that_would_not_fit_fails_its_step_early(
    plugins: list[str],
    tiny_checkpoint: Path,
    tiny_checkpoint_factory: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    """Free disk is checked against the parent's weights before the intervention runs, and
    against the built model's parameter bytes before it is saved: a model that would not fit
    fails its step with a clear message, nothing is written, independent steps still run."""
    b = tiny_checkpoint_factory(1)
    usage = _Usage(1 * 2**20) if when == "before" else _Usage(2**40, 1 * 2**20)
    monkeypatch.setattr(shutil, "disk_usage", usage)
    suite = _suite(tmp_path, tiny_checkpoint, b, fail_on="", error="memory", fail_copy=False)
    code, results, out = _run(suite, tmp_path / "out", capsys)

    assert code == 3
    (failure,) = results["failures"]
    assert failure["step"] == "model:c"
    assert failure["error"].startswith("DiskSpaceError: not enough free disk to write model 'c'")
    assert "1.0 MiB free" in failure["error"] and "audit cache prune" in failure["error"]
    assert usage.calls == (1 if when == "before" else 2)
    assert plugins.count("apply") == (0 if when == "before" else 1)  # early: no training
    status = {s["step"]: s["status"] for s in results["steps"]}
    assert status["model:c"] == "failed" and status["eval:steady@c"] == "skipped"
    assert status["eval:steady@a"] == status["eval:steady@b"] == "ok"
    c_key = next(m["key"] for m in results["models"] if m["name"] == "c")
    assert not (tmp_path / "cache" / "entries" / c_key).exists()
    assert not list((tmp_path / "cache" / "tmp").iterdir())
    assert "DiskSpaceError" in (tmp_path / "out" / "index.html").read_text()


def test_model_bytes_counts_tied_weights_once(tiny_checkpoint: Path) -> None:
    from audit.models.loading import load_checkpoint
    from audit.resources import checkpoint_bytes, model_bytes

    model, _ = load_checkpoint(tiny_checkpoint, allow_pickle=False, trust_remote_code=False)
    params = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    assert model_bytes(model) == sum(params.values())
    # what save_pretrained wrote: the same bytes plus the safetensors header
    assert 0 < checkpoint_bytes(tiny_checkpoint) - model_bytes(model) < 64 * 2**10
