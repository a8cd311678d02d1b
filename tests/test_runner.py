"""Where the runner runs an intervention: the device its ``devices`` hook asks for, the first
of a ``--device`` list, and a line in the run's log when a model would have been spread."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from audit import registry
from audit.api import run_suite
from audit.models.devices import DeviceError
from audit.plugins import Params, RunContext, TrainedModel
from audit.suite.checks import load_suite

SEEN: list[str] = []
"""The device each run of the recorder was given, in order."""


class RecorderParams(Params):
    where: str = "single"


class Recorder:
    """A stand-in intervention: records ``ctx.device`` and returns its parent, unchanged."""

    name: ClassVar[str] = "recorder"
    version: ClassVar[str] = "1"
    Params: ClassVar[type[RecorderParams]] = RecorderParams

    def __init__(self, params: RecorderParams) -> None:
        self.params = params

    @classmethod
    def devices(cls, params: RecorderParams) -> str:
        return params.where

    def apply(self, inputs: Mapping[str, Any], ctx: RunContext) -> TrainedModel:
        from audit.models.loading import load_checkpoint

        SEEN.append(ctx.device)
        (parent,) = inputs.values()
        return TrainedModel(*load_checkpoint(parent.path))


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The ``recorder`` intervention registered as a built-in; the devices it was given."""
    monkeypatch.setitem(registry.interventions._builtins, "recorder", f"{__name__}:Recorder")
    monkeypatch.setitem(registry.interventions._loaded, "recorder", Recorder)
    SEEN.clear()
    yield SEEN


def _suite(tmp_path: Path, tiny: Path, aligned: str = "") -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(
        textwrap.dedent(f"""
        [suite]
        name = "devices"

        [models.aligned]
        source = "path:{tiny}"
        {aligned}

        [models.tuned]
        from = "aligned"
        intervention = "recorder"

        [models.streamed]
        from = "aligned"
        intervention = "recorder"
        where = "cpu"
        """)
    )
    return path


def _run(tmp_path: Path, suite: Path, device: str) -> dict[str, Any]:
    record = run_suite(
        load_suite(suite), out=tmp_path / "out", cache=tmp_path / "cache", device=device
    )
    return record.results


def test_a_single_device_intervention_gets_the_first_of_a_list(
    recorder: list[str],
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # two GPUs, on paper
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    results = _run(tmp_path, _suite(tmp_path, tiny_checkpoint), "cuda:0,cuda:1")
    assert results["environment"]["device"] == "cuda:0,cuda:1"
    assert [s["status"] for s in results["steps"]] == ["ok", "ok", "ok"]
    assert recorder == ["cuda:0", "cpu"]  # tuned: the first GPU; streamed: the CPU it declares
    err = capsys.readouterr().err
    assert (
        "model 'tuned': recorder runs on one device, cuda:0 (the first of --device "
        "cuda:0,cuda:1, which spreads models for evaluation only). audit's interventions run "
        "on one device: to train across several (DDP/FSDP), run `accelerate launch` yourself "
        "and audit the result as a path: checkpoint"
    ) in " ".join(err.split())
    assert "model 'streamed'" not in err  # it runs on the CPU, as it declares


def test_a_parents_device_map_applies_to_evaluation_only(
    recorder: list[str],
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    suite = _suite(tmp_path, tiny_checkpoint, aligned='device_map = "auto"')
    results = _run(tmp_path, suite, "cpu")
    assert results["environment"]["device"] == "cpu"
    assert recorder == ["cpu", "cpu"]
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "model 'tuned': recorder runs on one device, cpu (the device_map of 'aligned' ('auto') "
        "applies to its evaluation only)"
    ) in err


def test_a_device_torch_does_not_see_stops_the_run_before_anything_is_written(
    recorder: list[str], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    suite = load_suite(_suite(tmp_path, tiny_checkpoint))
    with pytest.raises(DeviceError, match="--device 'cuda:99'"):
        run_suite(suite, out=tmp_path / "out", cache=tmp_path / "cache", device="cuda:99")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    assert not recorder
