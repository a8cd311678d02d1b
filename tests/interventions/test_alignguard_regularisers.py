"""AlignGuard-LoRA's three regularisers act under the defaults (intervention version 2).

Version 1's defaults left two of them inert: the hard ``mask`` split made both collision terms
identically zero, the curvature gate η was ≈ 1 + β/2 for every realistic update, and the
per-module Fisher normalisation made every module equally important. Each test here pins one
of those down on the tiny model or on small synthetic Fishers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from audit.interventions.alignguard import AlignGuardIntervention, _Estimates, _guards
from audit.interventions.lora import LoraIntervention

from .test_alignguard import COMMON, UNSAFE, _run, root  # noqa: F401  (root: a fixture)
from .test_lora import same_weights, state

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.usefixtures("one_thread")

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _params(**kw: Any) -> AlignGuardIntervention.Params:
    return AlignGuardIntervention.Params(
        **{**COMMON, "dropout": 0.0}, safety_data="path:safety.jsonl", **kw
    )


@pytest.fixture(scope="module")
def trained_adapter(tiny_checkpoint: Path) -> Any:
    """The tiny model after 4 plain LoRA steps on the task data, and its safety Fisher."""
    from audit.data.records import PairRecord
    from audit.models.handle import ModelHandle
    from audit.plugins import RunContext
    from audit.training.fisher import fisher, linear_modules
    from audit.training.loop import encode_pairs, train, wrap_lora

    from .test_alignguard import SAFE

    handle = ModelHandle("base", "base-key", tiny_checkpoint)
    model, tokenizer = handle.model, handle.tokenizer

    def encode(pairs: list[tuple[str, str]]) -> list[Any]:
        records = [PairRecord(id=f"p{i}", prompt=p, response=r) for i, (p, r) in enumerate(pairs)]
        return encode_pairs(tokenizer, records, 128)

    names = sorted(linear_modules(model, MODULES))
    estimates = fisher(model, encode(UNSAFE), names, eigen_k=4)
    params = _params()
    peft = wrap_lora(model, params)
    ctx = RunContext(seed=0, suite_dir=Path("."), work_dir=Path("."))
    train(peft, encode(SAFE), params, 4, 0, ctx)
    return peft, _Estimates(names, estimates, None)


def _regulariser_grads(peft: Any, est: Any, params: Any) -> list[Any]:
    from audit.interventions.alignguard import _regularizer

    guards = _guards(est, params, "cpu")
    regularize = _regularizer(peft, guards, params)
    trainable = [q for q in peft.parameters() if q.requires_grad]
    total, _ = regularize()
    return list(torch.autograd.grad(total, trainable, allow_unused=True, materialize_grads=True))


@pytest.mark.parametrize("split", ["soft", "eigen"])
def test_collision_terms_have_a_gradient(trained_adapter: Any, split: str) -> None:
    peft, est = trained_adapter
    on = _params(lambda_a=0.0, lambda_t=0.0, lambda_nc=1.0, split=split, eigen_k=4)
    grads = _regulariser_grads(peft, est, on)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # λ_NC = 0: the regulariser adds an exact zero to every gradient, as plain LoRA has it.
    off = on.model_copy(update={"lambda_nc": 0.0})
    assert all(torch.equal(g, torch.zeros_like(g)) for g in _regulariser_grads(peft, est, off))
    # What the validator forbids: under a 0/1 mask the same λ_NC = 1 gives exactly nothing.
    masked = on.model_copy(update={"split": "mask"})  # model_copy skips validation
    assert all(torch.equal(g, torch.zeros_like(g)) for g in _regulariser_grads(peft, est, masked))


def test_collision_terms_change_training(tiny_checkpoint: Path, root: Path) -> None:  # noqa: F811
    lora, _ = _run(
        LoraIntervention,
        LoraIntervention.Params(**{**COMMON, "dropout": 0.0}),
        tiny_checkpoint,
        root,
        "lora",
    )
    zero = _params(lambda_a=0.0, lambda_t=0.0, lambda_nc=0.0)
    same, _ = _run(AlignGuardIntervention, zero, tiny_checkpoint, root, "zero")
    assert same_weights(state(same.model), state(lora.model))
    collision = zero.model_copy(update={"lambda_nc": 1.0})
    agl, _ = _run(AlignGuardIntervention, collision, tiny_checkpoint, root, "nc")
    assert not same_weights(state(agl.model), state(lora.model))


def _eta_spread(deltas: list[Any], **kw: Any) -> float:
    """Coefficient of variation (std / mean) of η over every coordinate of ``deltas``."""
    from audit.interventions.alignguard_terms import eta

    values = torch.cat([eta(d, **kw).reshape(-1) for d in deltas])
    return float(values.std() / values.mean())


def test_eta_varies_over_realistic_updates(trained_adapter: Any) -> None:
    peft, est = trained_adapter
    p = _params()
    deltas = []
    for guard in _guards(est, p, "cpu"):
        guard.layer = peft.base_model.model.get_submodule(guard.name)
        deltas.append(guard.delta().detach())
    assert max(float(d.abs().max()) for d in deltas) < 0.1  # a realistic, small update
    spread = _eta_spread(deltas, beta=p.beta, tau=p.tau, scale=p.eta_scale)
    print(f"eta spread: default {spread:.3f}")
    assert spread > 0.01
    # The paper's literal η = 1 + β σ(|ΔW| − τ) (version 1: τ = 0.01) is all but constant.
    literal = _eta_spread(deltas, beta=p.beta, tau=0.01, scale=1.0)
    assert literal < 0.01
    # The relative gate does not depend on the update's overall size.
    scaled = _eta_spread([d * 100 for d in deltas], beta=p.beta, tau=p.tau, scale=p.eta_scale)
    assert scaled == pytest.approx(spread, rel=1e-4)


def _penalties(fishers: dict[str, Any], delta: Any, **kw: Any) -> dict[str, float]:
    """λ_A's term ‖F^½ Δ_A‖² per module, for the same update in every module."""
    from audit.interventions.alignguard_terms import alignment_penalty, split_update
    from audit.training.fisher import ModuleFisher

    names = sorted(fishers)
    est = _Estimates(names, {n: ModuleFisher(diag=fishers[n]) for n in names}, None)
    out = {}
    for guard in _guards(
        est, AlignGuardIntervention.Params(data="x", safety_data="y", **kw), "cpu"
    ):
        critical, _ = split_update(delta, mask=guard.mask)
        out[guard.name] = float(alignment_penalty(critical, fisher_diag=guard.fisher_diag))
    return out


@pytest.mark.parametrize("split", ["soft", "mask"])
def test_larger_fisher_mass_is_penalised_more(split: str) -> None:
    generator = torch.Generator().manual_seed(0)
    pattern = torch.rand(16, 16, generator=generator) + 0.01
    delta = torch.randn(16, 16, generator=generator) * 1e-2
    fishers = {"a.small": pattern * 1e-6, "b.large": pattern * 1e-5}  # 10× the Fisher mass
    nc = {"lambda_nc": 0.0} if split == "mask" else {}
    default = _penalties(fishers, delta, split=split, **nc)
    assert default["b.large"] > 5 * default["a.small"]
    # Per module, the scale is normalised away: both modules weigh the same.
    per_module = _penalties(fishers, delta, split=split, fisher_scope="module", **nc)
    assert per_module["b.large"] == pytest.approx(per_module["a.small"], rel=1e-5)


def test_global_ranking_gives_critical_coordinates_to_the_larger_module() -> None:
    from audit.interventions.alignguard_terms import critical_mask, critical_masks

    small, large = torch.full((4, 4), 1.0), torch.full((2, 8), 3.0)
    masks = critical_masks([small, large], 0.5)
    assert torch.equal(masks[0], torch.zeros(4, 4)) and torch.equal(masks[1], torch.ones(2, 8))
    soft = critical_masks([small, large], 0.5, soft=True)  # F_k = 3
    assert torch.allclose(soft[0], torch.full((4, 4), 0.25))
    assert torch.allclose(soft[1], torch.full((2, 8), 0.5))
    assert torch.equal(critical_masks([small], 0.25)[0], critical_mask(small, 0.25))


def test_eta_formula_and_scale() -> None:
    from audit.interventions.alignguard_terms import eta, riemannian_overlap

    delta = torch.tensor([[3.0, -4.0], [0.0, 0.0]])  # RMS = sqrt(25 / 4) = 2.5
    sig = torch.sigmoid
    expected = 1 + 4 * sig(torch.tensor([[3 / 2.5 - 1, 4 / 2.5 - 1], [-1.0, -1.0]]))
    assert torch.allclose(eta(delta, 4.0, 1.0, "rms"), expected)
    assert torch.allclose(eta(delta, 4.0, 0.5, 2.0), 1 + 4 * sig(delta.abs() / 2 - 0.5))
    # scale = 1: the paper's η = 1 + β σ(|ΔW| − τ), riemannian_overlap's default.
    a, t = delta * 0.5, delta * 0.5
    literal = (1 + 4 * sig(delta.abs() - 0.01)) * (a * t).abs()
    assert riemannian_overlap(a, t, delta, 4.0, 0.01).item() == pytest.approx(float(literal.mean()))
    # At the adapter's start (ΔW = 0): finite, and no gradient.
    zero = torch.zeros(2, 2, requires_grad=True)
    value = riemannian_overlap(zero * 0.5, zero * 0.5, zero, 4.0, 1.0, "rms")
    value.backward()
    assert value.item() == 0.0 and zero.grad is not None and torch.equal(zero.grad, zero * 0)
    with pytest.raises(ValueError, match="eta scale"):
        eta(delta, 4.0, 1.0, 0.0)


def test_collision_weight_with_a_hard_mask_is_refused() -> None:
    with pytest.raises(ValidationError, match="identically zero"):
        AlignGuardIntervention.Params(data="x", safety_data="y", split="mask")
    with pytest.raises(ValidationError, match="identically zero"):
        AlignGuardIntervention.Params(data="x", safety_data="y", split="mask", lambda_nc=0.5)
    ok = AlignGuardIntervention.Params(data="x", safety_data="y", split="mask", lambda_nc=0)
    assert ok.split == "mask" and ok.lambda_nc == 0
    eigen = AlignGuardIntervention.Params(data="x", safety_data="y", split="eigen")
    assert eigen.lambda_nc == 0.1  # C_rm acts under the eigen projection (C_geo does not)
    assert AlignGuardIntervention.Params(data="x", safety_data="y", eta_scale=1.0).eta_scale == 1
    with pytest.raises(ValidationError, match="eta_scale"):
        AlignGuardIntervention.Params(data="x", safety_data="y", eta_scale=0.0)
    with pytest.raises(ValidationError):
        AlignGuardIntervention.Params(data="x", safety_data="y", fisher_scope="layer")  # type: ignore[arg-type]


def test_defaults() -> None:
    p = AlignGuardIntervention.Params(data="x", safety_data="y")
    assert (p.split, p.fisher_scope, p.eta_scale, p.tau, p.lambda_nc) == (
        "soft",
        "global",
        "rms",
        1.0,
        0.1,
    )
    assert AlignGuardIntervention.version == "2"
