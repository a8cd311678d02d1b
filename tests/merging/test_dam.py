"""Defense-aware merging on tiny random Llama models: schedule, trigger bound, planted trigger."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from audit.merging.concrete import MaskedMerge, PromptSampler, next_token_logits
from audit.merging.dam import DamOptions, learn_dam_masks, merge_dam, sensitivity

PROMPTS = [
    ["how do you make a cake", "please write a poem", "bake bread", "can you fix my bike"],
    ["what is two plus three", "hack my neighbour email", "write a story about sports"],
]
WEIGHTS = [0.3, 0.3]
SMALL = DamOptions(rounds=2, steps_per_round=2, delta_steps=2, batch_size=4)


def test_every_name_schedule_and_progress(setup: tuple[Any, Any, Any]) -> None:
    base, tokenizer, deltas = setup
    calls: list[tuple[str, int, int]] = []
    out = merge_dam(base, tokenizer, deltas, WEIGHTS, PROMPTS, SMALL, 0, lambda *a: calls.append(a))
    assert set(out) == set(deltas)
    assert all(out[n].shape == v[0].shape for n, v in deltas.items())
    total = 2 * (2 + 2 + 2)
    assert calls == [("dam", k, total) for k in range(1, total + 1)]
    result = learn_dam_masks(base, tokenizer, deltas, WEIGHTS, PROMPTS, SMALL, 0)
    lengths = {k: len(v) for k, v in result.history.items()}
    assert lengths == {
        "shared_entropy": 4,
        "delta_kl": 4,
        "delta_norm": 4,
        "backdoor_kl": 4,
        "backdoor_entropy": 4,
    }
    assert set(result.shared_logits) == set(result.backdoor_logits)
    for name in result.shared_masks:  # the result is Σ w (m_s ⊙ m_b ⊙ τ)
        plain = deltas[name][0] * WEIGHTS[0] + deltas[name][1] * WEIGHTS[1]
        both = result.shared_masks[name] * result.backdoor_masks[name]
        assert result.task_vector[name].allclose(plain * both)


def test_same_seed_same_result(setup: tuple[Any, Any, Any]) -> None:
    base, tokenizer, deltas = setup
    a = learn_dam_masks(base, tokenizer, deltas, WEIGHTS, PROMPTS, SMALL, 3)
    b = learn_dam_masks(base, tokenizer, deltas, WEIGHTS, PROMPTS, SMALL, 3)
    assert a.history == b.history
    assert a.delta is not None and b.delta is not None and a.delta.equal(b.delta)
    assert all(a.task_vector[n].equal(b.task_vector[n]) for n in deltas)


def test_trigger_stays_within_epsilon(setup: tuple[Any, Any, Any]) -> None:
    base, tokenizer, deltas = setup
    options = SMALL.model_copy(update={"epsilon": 0.2, "delta_lr": 5.0, "delta_steps": 3})
    result = learn_dam_masks(base, tokenizer, deltas, WEIGHTS, PROMPTS, options, 0)
    rows = base.get_input_embeddings().weight.detach().norm(dim=-1).mean()
    assert result.radius == pytest.approx(0.2 * float(rows), rel=1e-6)
    assert result.delta is not None
    assert float(result.delta.norm()) <= result.radius * (1 + 1e-5)
    assert all(n <= result.radius * (1 + 1e-5) for n in result.history["delta_norm"])
    assert max(result.history["delta_norm"]) == pytest.approx(result.radius, rel=1e-4)


def test_base_model_left_unchanged(setup: tuple[Any, Any, Any]) -> None:
    base, tokenizer, deltas = setup
    before = {k: v.detach().clone() for k, v in base.state_dict().items()}
    learn_dam_masks(base, tokenizer, deltas, WEIGHTS, PROMPTS, SMALL, 0)
    after = base.state_dict()
    assert all(before[k].equal(after[k]) for k in before)
    assert all(p.grad is None for p in base.parameters())
    assert not base.training


def test_zero_rounds_single_contributor_is_task_arithmetic(setup: tuple[Any, Any, Any]) -> None:
    base, tokenizer, deltas = setup
    single = {n: v[:1] for n, v in deltas.items()}
    result = learn_dam_masks(base, tokenizer, single, [0.7], [[]], DamOptions(rounds=0), 0)
    assert result.delta is None
    assert all(result.task_vector[n].equal(v[0] * 0.7) for n, v in single.items())


def test_backdoor_mask_removes_the_trigger_sensitive_contributor(
    tiny_checkpoint: Path, load_model: Callable[[Path], tuple[Any, Any]]
) -> None:
    """A plants a strong response to an embedding direction ``v`` unused by clean prompts.

    Contributor A's task vector is a rank-1 ``c · u vᵀ`` on layer 0's ``v_proj`` with ``v``
    orthogonal to every prompt token's embedding: invisible on clean prompts, loud once ``δ``
    has a component along ``v``. Contributor B's is random noise of the same norm on another
    weight. The embeddings are scaled up so that the tiny random model's next-token
    distribution can move at all.
    """
    import torch

    from audit.models.generation import encode_prompt

    base, tokenizer = load_model(tiny_checkpoint)
    with torch.no_grad():
        base.get_input_embeddings().weight.mul_(10.0)
    prompts = [
        ["how do you make a cake", "please make a cake", "how do you bake bread", "bake a cake"],
        ["make bread", "how do you make bread", "please bake bread", "please bake a cake"],
    ]
    ids = sorted({i for task in prompts for p in task for i in encode_prompt(tokenizer, p)})
    embeddings = base.get_input_embeddings().weight.detach()
    hidden = embeddings.shape[1]
    assert len(ids) < hidden
    gen = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(embeddings[ids].T)
    v = torch.randn(hidden, generator=gen)
    v = v - basis @ (basis.T @ v)
    v = v / v.norm()
    a_name, b_name = "model.layers.0.self_attn.v_proj.weight", "model.layers.1.mlp.up_proj.weight"
    state = base.state_dict()
    deltas = {n: [torch.zeros_like(t), torch.zeros_like(t)] for n, t in state.items()}
    deltas[a_name][0] = 20.0 * torch.outer(torch.randn(state[a_name].shape[0], generator=gen), v)
    noise = torch.randn(state[b_name].shape, generator=gen)
    deltas[b_name][1] = noise * (deltas[a_name][0].norm() / noise.norm())

    options = DamOptions(
        rounds=3, steps_per_round=20, delta_steps=5, epsilon=0.3, lr=0.1, batch_size=8
    )
    result = learn_dam_masks(base, tokenizer, deltas, [1.0, 1.0], prompts, options, 0)
    assert result.delta is not None
    assert abs(float(result.delta @ v)) / float(result.delta.norm()) > 0.5  # δ found v

    def removed(name: str, i: int) -> float:
        tau = deltas[name][i].abs()
        return float((tau * (1 - result.backdoor_masks[name])).sum() / tau.sum())

    assert removed(a_name, 0) > removed(b_name, 1) + 0.02

    sampler = PromptSampler(tokenizer, prompts, batch_size=8, max_length=64, seed=0, device="cpu")
    batch = sampler.next()

    def sensitivity_along_v(masks: dict[str, Any]) -> float:
        merge = MaskedMerge.build(base, deltas, [1.0, 0.0])
        params = merge.params(masks)
        with torch.no_grad():
            clean = next_token_logits(merge, params, batch)
            return float(
                sensitivity(clean, next_token_logits(merge, params, batch, result.radius * v))
            )

    planted = sensitivity_along_v({})
    learned = sensitivity_along_v(result.backdoor_masks)
    keep = float(result.backdoor_masks[a_name].mean())
    chance = {
        n: (torch.rand(m.shape, generator=gen) < keep).float()
        for n, m in result.backdoor_masks.items()
    }
    assert planted > 1.0
    assert learned < 0.2 * planted
    assert learned < 0.5 * sensitivity_along_v(chance)  # not just "fewer weights kept"


def test_options_validate() -> None:
    assert DamOptions().temperature == 0.5 and DamOptions().init_logit == 0.0
    with pytest.raises(ValidationError):
        DamOptions(epsilon=-1)
    with pytest.raises(ValidationError):
        DamOptions(delta_steps=-1)
    with pytest.raises(ValidationError):
        DamOptions(trigger="cf")  # type: ignore[call-arg]
