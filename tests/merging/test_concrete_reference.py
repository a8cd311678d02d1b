"""Golden test: audit's Concrete task arithmetic equals the authors' arithmetic.

The oracle was written from reading the reference, not copied from it: tanganke/fusion_bench,
commit 54c9e8c9d9621620c720452cd8533332a32d3689,
``fusion_bench/method/concrete_subspace/clip_concrete_task_arithmetic.py``
(``ConcreteTaskArithmeticAlgorithmForCLIP.train_mask`` and ``run``: sample a continuous mask,
divide every tensor by its mean, merge, Σ_task entropy, Adam; at the end one more continuous
sample, divided by its mean), ``fusion_bench/models/masks/mask_model.py`` (``MaskModel``: one
logit tensor per trainable state-dict entry, ``RelaxedBernoulli(logits, temperature)``),
``fusion_bench/models/wrappers/task_wise_fusion.py`` (``merge_weights``: base + Σ w m τ,
``functional_call(..., tie_weights=True)``), ``fusion_bench/method/adamerging/entropy_loss.py``
and ``config/method/concrete_subspace/clip_concrete_task_arithmetic.yaml``. It samples with
``torch.distributions.RelaxedBernoulli`` from the global generator seeded like audit's, and
runs the model as the reference does (``functional_call`` on a merged state dict). The CLIP
classifier's logits are replaced by the next-token logits at the first response position.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from audit.merging.concrete import (
    ConcreteOptions,
    MaskedMerge,
    PromptSampler,
    concrete_sample,
    generator_for,
    learn_concrete_mask,
    next_token_logits,
    rescaled,
    task_losses,
)

REFERENCE = (
    "tanganke/fusion_bench fusion_bench/method/concrete_subspace/"
    "clip_concrete_task_arithmetic.py @ 54c9e8c9d9621620c720452cd8533332a32d3689"
)
PROMPTS = [
    ["how do you make a cake", "please write a poem", "bake bread", "can you fix my bike"],
    ["what is two plus three", "hack my neighbour email", "write a story about sports"],
]
WEIGHTS = [1.0, 1.0]
SCALING = 0.3  # clip_concrete_task_arithmetic.yaml: scaling_factor
TEMPERATURE = 0.5
RTOL = 1e-5


def oracle_mask(base: Any, logits: dict[str, torch.Tensor], seed: int) -> dict[str, Any]:
    """``MaskModel.sample_mask("continuous")`` then ``m / mean(m)``, in state-dict order.

    The reference has a logit tensor for every trainable state-dict entry, the tied
    ``lm_head.weight`` alias included, but the alias's sample is never used (``merge_weights``
    walks ``named_parameters``, which lists a tied tensor once); the oracle skips it, which
    only keeps the random stream aligned with audit's (one mask per tensor).
    """
    torch.manual_seed(seed)
    canonical = {id(p): n for n, p in base.named_parameters()}
    masks = {}
    for name, param in base.state_dict(keep_vars=True).items():
        if not param.requires_grad or canonical[id(param)] != name:
            continue
        dist = torch.distributions.RelaxedBernoulli(
            logits=logits[canonical[id(param)]], temperature=TEMPERATURE
        )
        m = dist.rsample()
        masks[name] = m / torch.mean(m)
    return masks


def oracle_state(
    base: Any, deltas: dict[str, list[torch.Tensor]], masks: dict[str, Any]
) -> dict[str, Any]:
    """``merge_weights``: base + Σ_i λ (m ⊙ τ_i) over ``named_parameters`` (deduplicated)."""
    state = {n: p.detach() for n, p in base.named_parameters()}
    for name in list(state):
        for w, tau in zip(WEIGHTS, deltas[name], strict=True):
            state[name] = state[name] + tau * (SCALING * w * masks[name])
    return state


def oracle_logits(base: Any, state: dict[str, Any], batch: Any, embeds: Any = None) -> Any:
    """Next-token logits at each row's last prompt position (``functional_call``)."""
    kwargs: dict[str, Any] = {"attention_mask": batch.attention_mask, "use_cache": False}
    if embeds is None:
        kwargs["input_ids"] = batch.input_ids
    else:
        kwargs["inputs_embeds"] = embeds
    out = torch.func.functional_call(base, state, args=(), kwargs=kwargs, tie_weights=True)
    return out.logits[torch.arange(batch.input_ids.shape[0]), batch.last]


def oracle_entropy(logits: Any, eps: float = 1e-8) -> Any:
    """``entropy_loss``: ``-Σ p log(p + eps)``, batch mean."""
    probs = torch.softmax(logits, dim=-1)
    return -torch.sum(probs * torch.log(probs + eps), dim=-1).mean()


def oracle_loss(logits: Any, batch: Any) -> Any:
    """``total_loss``: the per-task entropies summed over tasks."""
    return sum(oracle_entropy(logits[batch.task == t]) for t in range(len(PROMPTS)))


def random_logits(base: Any, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=gen) * 1.5 for n, p in base.named_parameters()}


def batch_of(tokenizer: Any, seed: int = 0) -> Any:
    sampler = PromptSampler(
        tokenizer, PROMPTS, batch_size=3, max_length=64, seed=seed, device="cpu", per_task=3
    )
    return sampler.next()


def audit_masks(merge: MaskedMerge, logits: dict[str, Any], seed: int) -> dict[str, Any]:
    gen = generator_for("cpu", seed)
    return {n: rescaled(concrete_sample(logits[n], TEMPERATURE, gen)) for n in merge.masked}


def test_masked_rescaled_merge_and_entropy(setup: tuple[Any, Any, Any]) -> None:
    """For a given logit state: the masked, rescaled merged weights and the Σ-task entropy."""
    base, tokenizer, deltas = setup
    logits = random_logits(base, 5)
    merge = MaskedMerge.build(base, deltas, [SCALING * w for w in WEIGHTS], "all")
    assert merge.masked == [n for n, _ in base.named_parameters()]
    masks = audit_masks(merge, logits, 11)
    params = merge.params(masks)
    expected_masks = oracle_mask(base, logits, 11)
    expected = oracle_state(base, deltas, expected_masks)
    for name in expected:
        torch.testing.assert_close(masks[name], expected_masks[name], rtol=RTOL, atol=1e-7)
        torch.testing.assert_close(params[name], expected[name], rtol=RTOL, atol=1e-6)
    batch = batch_of(tokenizer)
    with torch.no_grad():
        got = task_losses(next_token_logits(merge, params, batch), batch)
        want = oracle_loss(oracle_logits(base, expected, batch), batch)
    assert float(got) == pytest.approx(float(want), rel=RTOL)


def test_gradient_on_the_mask_logits(setup: tuple[Any, Any, Any]) -> None:
    base, tokenizer, deltas = setup
    logits = random_logits(base, 6)
    merge = MaskedMerge.build(base, deltas, [SCALING * w for w in WEIGHTS], "all")
    batch = batch_of(tokenizer, 1)
    mine = {n: t.clone().requires_grad_(True) for n, t in logits.items()}
    loss = task_losses(
        next_token_logits(merge, merge.params(audit_masks(merge, mine, 3)), batch), batch
    )
    loss.backward()
    theirs = {n: t.clone().requires_grad_(True) for n, t in logits.items()}
    state = oracle_state(base, deltas, oracle_mask(base, theirs, 3))
    oracle_loss(oracle_logits(base, state, batch), batch).backward()
    for name in logits:
        g, h = mine[name].grad, theirs[name].grad
        assert g is not None and h is not None
        torch.testing.assert_close(g, h, rtol=RTOL, atol=1e-9)


def test_one_training_step_and_the_final_mask(setup: tuple[Any, Any, Any]) -> None:
    """``learn_concrete_mask`` with one step: Adam(lr 1e-3) on the logits, then the eval mask."""
    base, tokenizer, deltas = setup
    options = ConcreteOptions(steps=1, batch_size=3, max_length=64)
    result = learn_concrete_mask(base, tokenizer, deltas, WEIGHTS, PROMPTS, options, 4)

    logits = {n: torch.zeros(p.shape, requires_grad=True) for n, p in base.named_parameters()}
    optimizer = torch.optim.Adam(list(logits.values()), lr=1e-3)
    batch = PromptSampler(
        tokenizer, PROMPTS, batch_size=3, max_length=64, seed=4, device="cpu", per_task=3
    ).next()
    masks = oracle_mask(base, logits, 4)  # seeds the global generator; the stream continues
    loss = oracle_loss(oracle_logits(base, oracle_state(base, deltas, masks), batch), batch)
    loss.backward()
    optimizer.step()
    assert result.history[0] == pytest.approx(float(loss.detach()), rel=RTOL)
    for name, t in logits.items():
        # Adam's first step is lr · g / (|g| + 1e-8): float noise in gradients of order 1e-8
        # moves it by up to ~1e-3 of a step, hence the absolute tolerance (lr · 1e-3)
        torch.testing.assert_close(result.logits[name], t.detach(), rtol=RTOL, atol=1e-6)
    with torch.no_grad():  # run(): one more continuous sample, divided by its mean
        final = {}
        canonical = {id(p): n for n, p in base.named_parameters()}
        for name, param in base.state_dict(keep_vars=True).items():
            if param.requires_grad and canonical[id(param)] == name:
                m = torch.distributions.RelaxedBernoulli(
                    logits=logits[canonical[id(param)]], temperature=TEMPERATURE
                ).sample()
                final[name] = m / torch.mean(m)
    for name in logits:
        plain = sum(SCALING * w * tau for w, tau in zip(WEIGHTS, deltas[name], strict=True))
        torch.testing.assert_close(
            result.task_vector[name], plain * final[name], rtol=RTOL, atol=1e-7
        )
