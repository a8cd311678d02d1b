"""Golden test: audit's DAM equals the authors' defense-aware Concrete task arithmetic.

The oracle was written from reading the reference, not copied from it: tanganke/fusion_bench,
commit 54c9e8c9d9621620c720452cd8533332a32d3689,
``fusion_bench/method/concrete_subspace/clip_safe_concrete_adamerging.py``
(``ConcreteSafeTaskWiseAdaMergingForCLIP.train_mask`` steps (2) and (3) and ``run``; the inner
AdaMerging step (1) is absent in task arithmetic) with
``config/method/concrete_subspace/clip_safe_concrete_task_arithmetic.yaml`` (lr 1e-3, adv_lr
1e-4, adv_weight 0.1, scaling_factor 0.3), and the mask machinery of
``fusion_bench/models/masks/mask_model.py``. One step: a continuous mask divided by its mean;
Adam on the zero-initialised perturbation with loss Σ_t −CE(f(x + δ_t), argmax f(x)) at the
detached mask; on a fresh batch Adam on the logits with Σ_t H(f(x)) + 0.1 H(f(x + δ_t)). Images
are replaced by chat prompts and the perturbation is added to the input embeddings of the real
tokens (see :mod:`audit.merging.dam`).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from audit.merging.concrete import PromptSampler
from audit.merging.dam import DamOptions, learn_dam_masks
from tests.merging.test_concrete_reference import (
    PROMPTS,
    RTOL,
    SCALING,
    TEMPERATURE,
    WEIGHTS,
    oracle_entropy,
    oracle_logits,
    oracle_mask,
    oracle_state,
)

REFERENCE = (
    "tanganke/fusion_bench fusion_bench/method/concrete_subspace/"
    "clip_safe_concrete_adamerging.py @ 54c9e8c9d9621620c720452cd8533332a32d3689"
)
MAX_LENGTH = 48


def perturbed_logits(base: Any, state: dict[str, Any], batch: Any, delta: Any) -> Any:
    """Logits with ``δ_task`` added to the embeddings of each row's real tokens."""
    embed_name = next(
        n for n, p in base.named_parameters() if p is base.get_input_embeddings().weight
    )
    embeds = F.embedding(batch.input_ids, state[embed_name])
    width = batch.input_ids.shape[1]
    on = batch.attention_mask.unsqueeze(-1).float()
    return oracle_logits(base, state, batch, embeds + on * delta[batch.task, :width])


def per_task(batch: Any, fn: Any) -> Any:
    return sum(fn(batch.task == t) for t in range(len(PROMPTS)))


def test_one_step_trigger_mask_and_final_merge(setup: tuple[Any, Any, Any]) -> None:
    base, tokenizer, deltas = setup
    options = DamOptions(steps=1, batch_size=3, max_length=MAX_LENGTH)
    result = learn_dam_masks(base, tokenizer, deltas, WEIGHTS, PROMPTS, options, 2)

    logits = {n: torch.zeros(p.shape, requires_grad=True) for n, p in base.named_parameters()}
    hidden = base.get_input_embeddings().weight.shape[1]
    delta = torch.zeros((len(PROMPTS), MAX_LENGTH, hidden), requires_grad=True)
    optimizer = torch.optim.Adam(list(logits.values()), lr=1e-3)
    adv_optimizer = torch.optim.Adam([delta], lr=1e-4)
    sampler = PromptSampler(
        tokenizer, PROMPTS, batch_size=3, max_length=MAX_LENGTH, seed=2, device="cpu", per_task=3
    )
    masks = oracle_mask(base, logits, 2)

    # (2) the trigger, at the detached merged state dict
    detached = {k: v.detach() for k, v in oracle_state(base, deltas, masks).items()}
    batch = sampler.next()
    clean = oracle_logits(base, detached, batch)
    adv = perturbed_logits(base, detached, batch, delta)
    adv_loss = per_task(
        batch, lambda r: -F.cross_entropy(adv[r], torch.argmax(clean[r], dim=1).long())
    )
    adv_loss.backward()
    adv_optimizer.step()
    adv_optimizer.zero_grad()

    # (3) the mask: entropy of clean + adv_weight · entropy of perturbed inputs
    state = oracle_state(base, deltas, masks)
    batch = sampler.next()
    with torch.no_grad():
        trigger = delta.detach().clone()
    clean = oracle_logits(base, state, batch)
    adv = perturbed_logits(base, state, batch, trigger)
    loss = per_task(batch, lambda r: oracle_entropy(clean[r]) + 0.1 * oracle_entropy(adv[r]))
    loss.backward()
    optimizer.step()

    assert result.history["adversarial"][0] == pytest.approx(float(adv_loss.detach()), rel=RTOL)
    assert result.history["loss"][0] == pytest.approx(float(loss.detach()), rel=RTOL)
    assert result.delta is not None
    # Adam's first step is lr · g / (|g| + 1e-8): float noise in gradients of order 1e-8
    # moves it by up to ~1% of a step (lr 1e-4 for δ, 1e-3 for the logits)
    torch.testing.assert_close(result.delta, delta.detach(), rtol=RTOL, atol=1e-7)
    for name, t in logits.items():
        torch.testing.assert_close(result.logits[name], t.detach(), rtol=RTOL, atol=1e-5)

    with torch.no_grad():  # run(): a continuous eval mask divided by its mean, no threshold
        canonical = {id(p): n for n, p in base.named_parameters()}
        final = {}
        for name, param in base.state_dict(keep_vars=True).items():
            if param.requires_grad and canonical[id(param)] == name:  # no tied alias
                m = torch.distributions.RelaxedBernoulli(
                    logits=logits[canonical[id(param)]], temperature=TEMPERATURE
                ).sample()
                final[name] = m / torch.mean(m)
    for name in logits:
        plain = sum(SCALING * w * tau for w, tau in zip(WEIGHTS, deltas[name], strict=True))
        torch.testing.assert_close(
            result.task_vector[name], plain * final[name], rtol=RTOL, atol=1e-7
        )
