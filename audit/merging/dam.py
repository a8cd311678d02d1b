"""Defense-Aware Merging (DAM): a task-shared mask and a backdoor-detection mask, alternated.

Reconstructed (from memory of the method, no code or text at hand) from Yang et al.,
"Mitigating the Backdoor Effect for Multi-Task Model Merging via Safety-Aware Subspace"
(Defense-Aware Merging, arXiv 2410.13910, ICLR 2025), and adapted from CLIP image classifiers
with image triggers to chat causal LMs:

* Two binary Concrete masks (relaxed Bernoulli, temperature 0.5, logits initialised at 0 → keep
  probability 0.5), each shared by all task vectors; the merged model is
  ``θ = θ_base + m_s ⊙ m_b ⊙ Σ_i w_i τ_i``. Here both are *keep* masks (1 keeps): the paper's
  backdoor-detection mask marks parameters to remove, i.e. ``m_b`` is its complement.
* Task-shared mask ``m_s``: as in :mod:`audit.merging.concrete` -- Adam on the mean entropy of
  the merged model's next-token distribution at the assistant's first response position on the
  contributors' unlabeled chat-templated prompts (``m_b`` sampled and held fixed).
* Trigger: the paper needs a surrogate for an unknown image trigger; here it is a *universal
  adversarial perturbation in embedding space*, one vector ``δ`` added to the input embedding
  of every prompt token, with ``||δ||₂ <= epsilon · r`` where ``r`` is the mean L2 norm of the
  base model's input-embedding rows (so ``epsilon`` is model-independent). ``δ`` starts at a
  seeded random point on that sphere, is kept across rounds, and each round takes
  ``delta_steps`` normalised-gradient ascent steps (step ``delta_lr · epsilon · r``, then
  projection onto the ball) on the sensitivity ``KL(p(·|x) ‖ p(·|x + δ))`` of the first-response
  next-token distribution, with the masks fixed at their keep probabilities ``sigmoid(logit)``.
* Backdoor mask ``m_b``: Adam on ``lambda_sensitivity · KL(p(·|x) ‖ p(·|x + δ)) +
  lambda_entropy · H(p(·|x))`` (``m_s`` sampled and held fixed; gradients flow through both
  the clean and the perturbed forward), so it removes the parameters that make the merged model
  most sensitive to the trigger while keeping the task objective.
* Schedule: ``rounds`` × (``steps_per_round`` task-mask steps, ``delta_steps`` trigger steps,
  ``steps_per_round`` backdoor-mask steps). The paper's meta-learning (bi-level) update is
  replaced by this plain alternation; each mask keeps one Adam optimiser across rounds.
* Result: ``Σ_i w_i (m_s ⊙ m_b ⊙ τ_i)`` with the deterministic masks (keep iff
  ``logit >= 0``; ties keep, so zero rounds give plain task arithmetic). Masks cover 2-D
  weights only; 1-D tensors are merged as plain weighted sums.

Defaults (:class:`DamOptions`): temperature 0.5, init logit 0, 3 rounds of 12 task-mask steps,
4 trigger steps and 12 backdoor-mask steps (Adam, lr 0.05, 16 prompts a step), epsilon 0.5,
delta_lr 0.25, lambda_sensitivity 1, lambda_entropy 1, per-element masks -- ≈ 16 s on one idle
CPU thread for the built-in ≈1.7M-parameter organism with two contributors (≈ 50 s when the
core is shared three ways).

The base model is never modified (functional forwards on detached tensors; only the mask
logits and ``δ`` receive gradients).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from audit.merging.concrete import (
    Granularity,
    MaskedMerge,
    Progress,
    PromptSampler,
    generator_for,
    hard_mask,
    mean_entropy,
    next_token_logits,
    relaxed_bernoulli,
)

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["DamOptions", "DamResult", "learn_dam_masks", "merge_dam", "sensitivity"]


class DamOptions(BaseModel):
    """Options of :func:`merge_dam`.

    ``temperature`` 0.5 and ``init_logit`` 0 for both masks. ``rounds`` (3) alternations of
    ``steps_per_round`` (12) Adam steps (``lr`` 0.05) per mask and ``delta_steps`` (4) trigger
    steps of ``delta_lr`` (0.25) times the radius. ``epsilon`` (0.5): trigger radius as a
    fraction of the mean input-embedding row norm. ``lambda_sensitivity`` (1.0) and
    ``lambda_entropy`` (1.0) weigh the backdoor mask's objective. ``batch_size`` (16) prompts
    per step split evenly over contributors; ``granularity`` ``"element"`` or ``"row"``;
    ``max_length`` cuts prompts to their last tokens; ``seed`` ``None`` uses the merge's seed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(default=0.5, gt=0)
    init_logit: float = 0.0
    rounds: int = Field(default=3, ge=0)
    steps_per_round: int = Field(default=12, ge=0)
    lr: float = Field(default=0.05, gt=0)
    batch_size: int = Field(default=16, gt=0)
    epsilon: float = Field(default=0.5, ge=0)
    delta_steps: int = Field(default=4, ge=0)
    delta_lr: float = Field(default=0.25, gt=0)
    lambda_sensitivity: float = Field(default=1.0, ge=0)
    lambda_entropy: float = Field(default=1.0, ge=0)
    granularity: Granularity = "element"
    max_length: int = Field(default=128, ge=2)
    seed: int | None = None


@dataclass
class DamResult:
    """Merged task vector, final logits and masks of both kinds, the trigger and the history.

    ``history`` keys: ``shared_entropy`` (per task-mask step), ``delta_kl`` (per trigger step,
    before its update), ``backdoor_kl`` and ``backdoor_entropy`` (per backdoor-mask step),
    ``delta_norm`` (after every trigger step); ``radius`` is the bound on ``||δ||₂``.
    """

    task_vector: dict[str, Tensor]
    shared_logits: dict[str, Tensor]
    backdoor_logits: dict[str, Tensor]
    shared_masks: dict[str, Tensor]
    backdoor_masks: dict[str, Tensor]
    delta: Tensor | None
    radius: float
    history: dict[str, list[float]] = field(default_factory=dict)


def sensitivity(clean: Tensor, perturbed: Tensor) -> Tensor:
    """Mean ``KL(softmax(clean) ‖ softmax(perturbed))`` over the batch (nats)."""
    import torch

    logp = torch.log_softmax(clean.float(), dim=-1)
    logq = torch.log_softmax(perturbed.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(dim=-1).mean()


def _radius(merge: MaskedMerge, epsilon: float) -> float:
    """``epsilon`` times the mean L2 norm of the base input-embedding rows."""
    if merge.embed_name is None:
        raise ValueError("DAM needs a base model with an input-embedding weight")
    rows = merge.base[merge.embed_name].float()
    return float(epsilon * rows.norm(dim=-1).mean())


def learn_dam_masks(
    base_model: Any,
    tokenizer: Any,
    deltas: Mapping[str, Sequence[Tensor]],
    weights: Sequence[float],
    prompts: Sequence[Sequence[str]],
    options: DamOptions,
    seed: int,
    progress: Progress | None = None,
) -> DamResult:
    """Alternately learn the task-shared mask, the trigger and the backdoor mask (see module)."""
    import torch

    seed = options.seed if options.seed is not None else seed
    merge = MaskedMerge.build(base_model, deltas, weights)
    shared = merge.new_logits(options.init_logit, options.granularity)
    backdoor = merge.new_logits(options.init_logit, options.granularity)
    history: dict[str, list[float]] = {
        "shared_entropy": [],
        "delta_kl": [],
        "delta_norm": [],
        "backdoor_kl": [],
        "backdoor_entropy": [],
    }
    radius = 0.0
    delta: Tensor | None = None
    per_round = 2 * options.steps_per_round + options.delta_steps
    total = options.rounds * per_round
    if total and shared:
        sampler = PromptSampler(
            tokenizer,
            prompts,
            batch_size=options.batch_size,
            max_length=options.max_length,
            seed=seed,
            device=merge.device,
        )
        gen = generator_for(merge.device, seed)
        temperature = options.temperature
        shared_leaves = list(shared.values())
        backdoor_leaves = list(backdoor.values())
        shared_opt = torch.optim.Adam(shared_leaves, lr=options.lr)
        backdoor_opt = torch.optim.Adam(backdoor_leaves, lr=options.lr)
        radius = _radius(merge, options.epsilon)
        hidden = merge.base[str(merge.embed_name)].shape[-1]
        start = torch.randn(hidden, generator=gen, device=merge.device, dtype=torch.float32)
        delta = start * (radius / float(start.norm().clamp_min(1e-12)))
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress("dam", done, total)

        for _ in range(options.rounds):
            for _ in range(options.steps_per_round):  # task-shared mask: entropy
                batch = sampler.next()
                masks = {
                    n: relaxed_bernoulli(shared[n], temperature, gen)
                    * relaxed_bernoulli(backdoor[n].detach(), temperature, gen)
                    for n in shared
                }
                loss = mean_entropy(next_token_logits(merge, merge.params(masks), batch))
                shared_opt.zero_grad(set_to_none=True)
                loss.backward(inputs=shared_leaves)
                shared_opt.step()
                history["shared_entropy"].append(float(loss.detach()))
                tick()

            with torch.no_grad():  # trigger: maximise sensitivity at the expected masks
                expected = {
                    n: torch.sigmoid(shared[n]) * torch.sigmoid(backdoor[n]) for n in shared
                }
                fixed = merge.params(expected)
            for _ in range(options.delta_steps):
                batch = sampler.next()
                with torch.no_grad():
                    clean = next_token_logits(merge, fixed, batch)
                delta = delta.detach().requires_grad_(True)
                kl = sensitivity(clean, next_token_logits(merge, fixed, batch, delta))
                (grad,) = torch.autograd.grad(kl, [delta])
                with torch.no_grad():
                    step = grad / grad.norm().clamp_min(1e-12)
                    delta = delta + options.delta_lr * radius * step
                    norm = float(delta.norm())
                    if norm > radius:
                        delta = delta * (radius / norm)
                history["delta_kl"].append(float(kl.detach()))
                history["delta_norm"].append(float(delta.norm()))
                tick()
            delta = delta.detach()

            for _ in range(options.steps_per_round):  # backdoor mask: sensitivity + entropy
                batch = sampler.next()
                masks = {
                    n: relaxed_bernoulli(shared[n].detach(), temperature, gen)
                    * relaxed_bernoulli(backdoor[n], temperature, gen)
                    for n in shared
                }
                params = merge.params(masks)
                clean = next_token_logits(merge, params, batch)
                kl = sensitivity(clean, next_token_logits(merge, params, batch, delta))
                entropy = mean_entropy(clean)
                loss = options.lambda_sensitivity * kl + options.lambda_entropy * entropy
                backdoor_opt.zero_grad(set_to_none=True)
                loss.backward(inputs=backdoor_leaves)
                backdoor_opt.step()
                history["backdoor_kl"].append(float(kl.detach()))
                history["backdoor_entropy"].append(float(entropy.detach()))
                tick()

    shared_masks = {n: hard_mask(t.detach()) for n, t in shared.items()}
    backdoor_masks = {n: hard_mask(t.detach()) for n, t in backdoor.items()}
    final = {n: shared_masks[n] * backdoor_masks[n] for n in shared_masks}
    return DamResult(
        task_vector=merge.task_vector(deltas, weights, final),
        shared_logits={n: t.detach() for n, t in shared.items()},
        backdoor_logits={n: t.detach() for n, t in backdoor.items()},
        shared_masks=shared_masks,
        backdoor_masks=backdoor_masks,
        delta=delta,
        radius=radius,
        history=history,
    )


def merge_dam(
    base_model: Any,
    tokenizer: Any,
    deltas: dict[str, list[Tensor]],
    weights: list[float],
    prompts: list[list[str]],
    options: DamOptions,
    seed: int,
    progress: Progress,
) -> dict[str, Tensor]:
    """Defense-aware merging: ``Σ_i w_i (m_s ⊙ m_b ⊙ τ_i)`` with both masks learned.

    See the module docstring for the method and its adaptation, :class:`DamOptions` for the
    defaults.
    """
    result = learn_dam_masks(
        base_model, tokenizer, deltas, weights, prompts, options, seed, progress
    )
    return result.task_vector
