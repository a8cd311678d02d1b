"""control: matched controls of a masking defence, checked against hand-computed updates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from audit.interventions.control import ControlIntervention, update_stats
from audit.models.handle import ModelHandle
from audit.plugins import Intervention, RunContext

KEEP, SHRINK = 0.4, 0.5


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def handles(
    tiny_checkpoint_factory: Callable[[int], Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, ModelHandle]:
    """Contributors c1, c2, the base, and a 'defence' keeping 40% of the plain merge's
    coordinates at half their size."""
    from audit.models.loading import load_checkpoint

    paths = {n: tiny_checkpoint_factory(s) for n, s in (("c1", 41), ("c2", 42), ("base", 43))}
    model, tokenizer = load_checkpoint(paths["base"])
    base = {k: v.clone() for k, v in model.state_dict().items()}
    states = {n: _state(paths[n]) for n in ("c1", "c2")}
    generator = torch.Generator().manual_seed(0)
    defended = {}
    for name, value in base.items():
        if name == "lm_head.weight":
            continue  # tied to the embeddings (saved once)
        plain = sum(states[c][name] - value for c in ("c1", "c2"))
        mask = (torch.rand(value.shape, generator=generator) < KEEP).to(value.dtype)
        defended[name] = value + SHRINK * mask * plain
    defended["lm_head.weight"] = defended["model.embed_tokens.weight"]  # tied, as saved
    model.load_state_dict(defended)
    paths["dam"] = tmp_path_factory.mktemp("defended") / "model"
    model.save_pretrained(paths["dam"])
    tokenizer.save_pretrained(paths["dam"])
    order = ("c1", "c2", "dam", "base")  # the runner's order: models, then ModelRef params
    return {n: ModelHandle(n, f"key-{n}", paths[n]) for n in order}


def _apply(handles: dict[str, ModelHandle], tmp_path: Path, kind: str) -> Any:
    params = ControlIntervention.Params(of="dam", base="base", kind=kind)  # type: ignore[arg-type]
    ctx = RunContext(seed=0, suite_dir=tmp_path, work_dir=tmp_path / "work")
    return ControlIntervention(params).apply(handles, ctx)


def test_is_an_intervention() -> None:
    params = ControlIntervention.Params(of="d", base="b", kind="norm_matched")
    assert isinstance(ControlIntervention(params), Intervention)


def test_measures_the_defence_and_matches_its_norm(
    handles: dict[str, ModelHandle], tmp_path: Path
) -> None:
    out = _apply(handles, tmp_path, "norm_matched")
    info = out.info
    # 40% of the coordinates at half size: norm ratio ~ 0.5 * sqrt(0.4)
    assert info["of_keep_rate"] == pytest.approx(KEEP, abs=0.01)
    assert info["of_norm_ratio"] == pytest.approx(SHRINK * KEEP**0.5, rel=0.03)
    assert info["norm_ratio"] == pytest.approx(info["of_norm_ratio"], rel=1e-4)
    assert info["keep_rate"] == pytest.approx(1.0)
    base, c1, c2 = (_state(handles[n].path) for n in ("base", "c1", "c2"))
    name = "model.layers.0.mlp.up_proj.weight"
    plain = c1[name] - base[name] + c2[name] - base[name]
    expected = base[name] + info["of_norm_ratio"] * plain
    assert torch.allclose(out.model.state_dict()[name], expected, atol=1e-6)


def test_random_mask_keeps_as_many_coordinates(
    handles: dict[str, ModelHandle], tmp_path: Path
) -> None:
    out = _apply(handles, tmp_path, "random_mask")
    info = out.info
    assert info["keep_rate"] == pytest.approx(info["of_keep_rate"], abs=0.01)
    base, c1, c2 = (_state(handles[n].path) for n in ("base", "c1", "c2"))
    name = "model.layers.0.mlp.up_proj.weight"
    plain = c1[name] - base[name] + c2[name] - base[name]
    got = out.model.state_dict()[name] - base[name]
    kept = got.abs() > 0
    assert torch.allclose(got[kept], plain[kept], atol=1e-6)  # kept coordinates are whole
    assert float(kept.float().mean()) == pytest.approx(KEEP, abs=0.03)


def test_update_stats_by_hand() -> None:
    plain = {"w": torch.tensor([1.0, 2.0, 0.0, 2.0])}
    update = {"w": torch.tensor([0.5, 0.0, 3.0, 1.0])}  # a coordinate plain leaves alone: ignored
    keep, ratio = update_stats(update, plain)
    assert keep == pytest.approx(2 / 3)
    assert ratio == pytest.approx((0.25 + 9 + 1) ** 0.5 / 3)
