"""Defense-Aware Merging (DAM): one Concrete mask that also lowers the entropy under a trigger.

Yang et al., "Mitigating the Backdoor Effect for Multi-Task Model Merging via Safety-Aware
Subspace" (Defense-Aware Merging, arXiv 2410.13910, ICLR 2025), task-arithmetic variant. The
defaults compute what the authors' code computes: tanganke/fusion_bench at commit
54c9e8c9d9621620c720452cd8533332a32d3689,
``fusion_bench/method/concrete_subspace/clip_safe_concrete_adamerging.py``
(``ConcreteSafeTaskWiseAdaMergingForCLIP.train_mask``, ``run``) with the hyperparameters of
``config/method/concrete_subspace/clip_safe_concrete_task_arithmetic.yaml`` (lr 1e-3,
scaling_factor 0.3, adv_lr 1e-4, adv_weight 0.1, max_steps 2000, temperature 0.5,
initial_logits 0, eval_mask_type continuous; ``trigger_norm`` 1000 is read nowhere) and the
mask machinery of :mod:`audit.merging.concrete` (``MaskModel``, ``entropy_loss``). Every step:

1. One mask: a continuous binary-Concrete sample of the logits over every trainable tensor,
   each tensor divided by its mean (a single mask -- the reference has no second,
   "backdoor" mask and multiplies nothing).
2. Trigger: with the mask detached, one Adam step (``adv_lr``) on a per-contributor additive
   input perturbation (initialised at zero, no norm bound) *maximising* the cross-entropy of
   the perturbed input's prediction against the clean prediction's argmax:
   loss ``Σ_t −CE(f(x_t + δ_t), argmax f(x_t))``.
3. Mask: on a fresh batch, with the trigger fixed, one Adam step (``lr``) on the mask logits
   minimising ``Σ_t [H(f(x_t)) + adv_weight · H(f(x_t + δ_t))]`` -- the entropy of the clean
   and of the perturbed inputs (the reference's "regu2").

At the end a continuous mask is sampled, divided by its mean, and the merged task vector is
``Σ_i λ w_i (m ⊙ τ_i)`` (``λ = scaling_factor``). The reference's inner AdaMerging step on the
task-wise weights (step "(1)" of ``train_mask``) belongs to its AdaMerging variant; in the task
arithmetic variant the coefficients are fixed, as in
``clip_concrete_task_arithmetic.py``'s "we do not need to perform inner optimization here".

Adaptation to causal LMs (the reference perturbs CLIP images): the classifier's logits are the
merged model's next-token logits at the assistant's first response position of the
chat-templated prompt, so the backdoor objective is the **next-token entropy of perturbed
inputs**; the perturbation ``δ_t`` (one per contributor, input-sized like the reference's
``[tasks, 3, 224, 224]``) is ``(max_length, hidden)``, added to the input embeddings of the
prompt's real tokens position by position (padding untouched). The reference's clamp of the
perturbed image to ``[0, 1]`` has no counterpart for embeddings and is dropped.

Named alternative (not the reference): ``objective="kl"`` replaces the perturbed-input entropy
by ``KL(p(·|x) ‖ p(·|x + δ))`` (invariance to the trigger). The mask options ``rescale``,
``mask``, ``cover``, ``granularity`` and ``scaling_factor`` are those of
:class:`audit.merging.concrete.ConcreteOptions`.

The base model is never modified (functional forwards on detached tensors; only the mask
logits and the perturbations receive gradients).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from audit.merging.concrete import (
    Cover,
    FinalMask,
    Granularity,
    MaskedMerge,
    Progress,
    PromptBatch,
    PromptSampler,
    concrete_sample,
    entropy_loss,
    final_masks,
    generator_for,
    next_token_logits,
    rescaled,
    scaled_weights,
    task_losses,
)

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "DamOptions",
    "DamResult",
    "adversarial_loss",
    "learn_dam_masks",
    "merge_dam",
    "sensitivity",
]

Objective = Literal["entropy", "kl"]


class DamOptions(BaseModel):
    """Options of :func:`merge_dam`; the defaults are the reference's (module docstring).

    ``temperature`` (0.5), ``init_logit`` (0); ``steps`` (2000) steps, each one trigger step
    (Adam, ``adv_lr`` 1e-4) and one mask step (Adam, ``lr`` 1e-3); ``adv_weight`` (0.1) weighs
    the perturbed-input term; ``objective`` ``"entropy"`` (reference) or ``"kl"``;
    ``batch_size`` (16) prompts per contributor per phase; ``scaling_factor`` (0.3),
    ``rescale`` (true), ``mask`` (``"continuous"``), ``cover`` (``"all"``), ``granularity``,
    ``max_length`` and ``seed`` as in :class:`audit.merging.concrete.ConcreteOptions`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(default=0.5, gt=0)
    init_logit: float = 0.0
    steps: int = Field(default=2000, ge=0)
    lr: float = Field(default=1e-3, gt=0)
    adv_lr: float = Field(default=1e-4, gt=0)
    adv_weight: float = Field(default=0.1, ge=0)
    objective: Objective = "entropy"
    batch_size: int = Field(default=16, gt=0)
    scaling_factor: float = 0.3
    rescale: bool = True
    mask: FinalMask = "continuous"
    cover: Cover = "all"
    granularity: Granularity = "element"
    max_length: int = Field(default=128, ge=2)
    seed: int | None = None


@dataclass
class DamResult:
    """Merged task vector, final logits and mask (before rescaling), the trigger, history, stats.

    ``delta``: the per-contributor perturbations ``(contributors, max_length, hidden)`` (``None``
    without training). ``history`` keys, one value per step: ``adversarial`` (the trigger's
    loss ``Σ_t −CE``, before its update), ``loss`` (the mask's loss), ``clean_entropy`` and
    ``perturbed`` (its two terms summed over contributors; ``perturbed`` is the entropy or the
    KL). ``stats``: :func:`audit.merging.concrete.mask_stats` of the final mask.
    """

    task_vector: dict[str, Tensor]
    logits: dict[str, Tensor]
    masks: dict[str, Tensor]
    delta: Tensor | None
    history: dict[str, list[float]] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)


def sensitivity(clean: Tensor, perturbed: Tensor) -> Tensor:
    """Mean ``KL(softmax(clean) ‖ softmax(perturbed))`` over the batch (nats)."""
    import torch

    logp = torch.log_softmax(clean.float(), dim=-1)
    logq = torch.log_softmax(perturbed.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(dim=-1).mean()


def adversarial_loss(clean: Tensor, perturbed: Tensor) -> Tensor:
    """``−CE(perturbed, argmax clean)``, batch mean (the reference's trigger loss per task)."""
    import torch

    labels = clean.detach().argmax(dim=-1)
    return -torch.nn.functional.cross_entropy(perturbed.float(), labels)


def _per_row(delta: Tensor, batch: PromptBatch) -> Tensor:
    """Each row's contributor's perturbation, cut to the batch width."""
    assert batch.task is not None
    return delta[batch.task, : batch.input_ids.shape[1]]


def _split_sum(clean: Tensor, perturbed: Tensor, batch: PromptBatch, loss: Any) -> Tensor:
    """``Σ_t loss(clean rows of t, perturbed rows of t)``."""
    assert batch.task is not None
    total: Tensor | None = None
    for t in range(int(batch.task.max()) + 1):
        rows = batch.task == t
        part = loss(clean[rows], perturbed[rows])
        total = part if total is None else total + part
    assert total is not None
    return total


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
    """Learn the defense-aware mask (see the module docstring) and merge with it."""
    import torch

    seed = options.seed if options.seed is not None else seed
    weights = scaled_weights(weights, options.scaling_factor)
    merge = MaskedMerge.build(base_model, deltas, weights, options.cover)
    logits = merge.new_logits(options.init_logit, options.granularity)
    gen = generator_for(merge.device, seed)
    history: dict[str, list[float]] = {
        "adversarial": [],
        "loss": [],
        "clean_entropy": [],
        "perturbed": [],
    }
    delta: Tensor | None = None
    if options.steps and logits:
        if merge.embed_name is None:
            raise ValueError("DAM needs a base model with an input-embedding weight")
        sampler = PromptSampler(
            tokenizer,
            prompts,
            batch_size=options.batch_size,
            max_length=options.max_length,
            seed=seed,
            device=merge.device,
            per_task=options.batch_size,
        )
        hidden = merge.base[merge.embed_name].shape[-1]
        delta = torch.zeros(
            (len(sampler.tasks), options.max_length, hidden),
            dtype=torch.float32,
            device=merge.device,
            requires_grad=True,
        )
        leaves = list(logits.values())
        optimizer = torch.optim.Adam(leaves, lr=options.lr)
        adv_optimizer = torch.optim.Adam([delta], lr=options.adv_lr)
        perturbed_term = entropy_loss if options.objective == "entropy" else None
        for step in range(options.steps):
            masks = {n: concrete_sample(t, options.temperature, gen) for n, t in logits.items()}
            if options.rescale:
                masks = {n: rescaled(m) for n, m in masks.items()}

            # trigger: the mask detached, maximise the CE against the clean argmax
            fixed = merge.params({n: m.detach() for n, m in masks.items()})
            batch = sampler.next()
            with torch.no_grad():
                clean = next_token_logits(merge, fixed, batch)
            perturbed = next_token_logits(merge, fixed, batch, _per_row(delta, batch))
            adv = _split_sum(clean, perturbed, batch, adversarial_loss)
            adv_optimizer.zero_grad(set_to_none=True)
            adv.backward(inputs=[delta])
            adv_optimizer.step()

            # mask: entropy of clean inputs + adv_weight * entropy of perturbed inputs
            params = merge.params(masks)
            batch = sampler.next()
            trigger = _per_row(delta.detach(), batch)
            clean = next_token_logits(merge, params, batch)
            perturbed = next_token_logits(merge, params, batch, trigger)
            natural = task_losses(clean, batch)
            if perturbed_term is not None:
                regular = task_losses(perturbed, batch, perturbed_term)
            else:
                regular = _split_sum(clean, perturbed, batch, sensitivity)
            loss = natural + options.adv_weight * regular
            optimizer.zero_grad(set_to_none=True)
            loss.backward(inputs=leaves)
            optimizer.step()

            history["adversarial"].append(float(adv.detach()))
            history["loss"].append(float(loss.detach()))
            history["clean_entropy"].append(float(natural.detach()))
            history["perturbed"].append(float(regular.detach()))
            if progress is not None:
                progress("dam", step + 1, options.steps)
        delta = delta.detach()
    with torch.no_grad():
        final, applied, stats = final_masks(
            merge.tau, logits, options.mask, options.temperature, options.rescale, gen
        )
    return DamResult(
        task_vector=merge.task_vector(deltas, weights, applied),
        logits={n: t.detach() for n, t in logits.items()},
        masks=final,
        delta=delta,
        history=history,
        stats=stats,
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
    """Defense-aware merging: ``Σ_i λ w_i (m ⊙ τ_i)`` with the defense-aware mask ``m``.

    See the module docstring for the method and its adaptation, :class:`DamOptions` for the
    defaults. The mask statistics are on :func:`learn_dam_masks`' result (``stats``).
    """
    result = learn_dam_masks(
        base_model, tokenizer, deltas, weights, prompts, options, seed, progress
    )
    return result.task_vector
