"""resta: hand-checked safety-vector arithmetic on tiny checkpoints, scale 0, input checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from audit.interventions.resta import RestaIntervention
from audit.models.handle import ModelHandle
from audit.plugins import Intervention, RunContext
from audit.suite.checks import load_suite


@pytest.fixture(scope="module")
def handles(tiny_checkpoint_factory: Callable[[int], Path]) -> dict[str, ModelHandle]:
    """The input model, then aligned and unaligned, as the runner orders resta's inputs."""
    paths = {n: tiny_checkpoint_factory(s) for n, s in (("m", 31), ("al", 32), ("un", 33))}
    return {name: ModelHandle(name, f"key-{name}", path) for name, path in paths.items()}


def states(handles: dict[str, ModelHandle]) -> dict[str, dict[str, Any]]:
    from safetensors.torch import load_file

    return {n: load_file(str(h.path / "model.safetensors")) for n, h in handles.items()}


def apply(handles: dict[str, ModelHandle], tmp_path: Path, scale: float) -> Any:
    params = RestaIntervention.Params(aligned="al", unaligned="un", scale=scale)
    ctx = RunContext(seed=0, suite_dir=tmp_path, work_dir=tmp_path / "work")
    return RestaIntervention(params).apply(handles, ctx)


def test_is_an_intervention() -> None:
    params = RestaIntervention.Params(aligned="a", unaligned="u")
    assert isinstance(RestaIntervention(params), Intervention) and params.scale == 1.0


@pytest.mark.parametrize("scale", [1.0, 0.5, -2.0])
def test_adds_the_safety_vector(
    handles: dict[str, ModelHandle], tmp_path: Path, scale: float
) -> None:
    s = states(handles)
    out = apply(handles, tmp_path, scale)
    got = out.model.state_dict()
    for name, theta in s["m"].items():
        expected = theta + scale * (s["al"][name] - s["un"][name])
        assert got[name].allclose(expected, atol=1e-6), name
    # by hand, on one entry
    name = "model.layers.0.self_attn.q_proj.weight"
    m, a, u = (float(s[k][name][0, 0]) for k in ("m", "al", "un"))
    assert float(got[name][0, 0]) == pytest.approx(m + scale * (a - u), abs=1e-6)
    assert out.info["scale"] == scale and out.info["model"] == "m"
    assert out.info["tied"] == ["lm_head.weight"]
    assert out.model.lm_head.weight.data_ptr() == out.model.model.embed_tokens.weight.data_ptr()


def test_scale_zero_is_the_model(handles: dict[str, ModelHandle], tmp_path: Path) -> None:
    s = states(handles)["m"]
    got = apply(handles, tmp_path, 0.0).model.state_dict()
    assert all(got[name].equal(tensor) for name, tensor in s.items())


def test_inputs_are_checked(handles: dict[str, ModelHandle], tmp_path: Path) -> None:
    two = {n: handles[n] for n in ("al", "un")}
    with pytest.raises(ValueError, match="exactly one model"):
        apply(two, tmp_path, 1.0)
    with pytest.raises(ValueError, match="'un' is not among"):
        apply({n: handles[n] for n in ("m", "al")}, tmp_path, 1.0)


def test_suite_dependencies(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    path = tmp_path / "suite.toml"
    models = "".join(f'[models.{n}]\nsource = "path:./base"\n\n' for n in ("a", "u", "m"))
    path.write_text(
        f'[suite]\nname = "s"\n\n{models}[models.r]\nintervention = "resta"\nfrom = "m"\n'
        'aligned = "a"\nunaligned = "u"\nscale = 0.5\n'
    )
    assert load_suite(path).dependencies("r") == ["m", "a", "u"]
