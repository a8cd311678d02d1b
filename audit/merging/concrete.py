"""Concrete subspace task arithmetic: one shared mask over task vectors, learned without labels.

Tang et al., "Concrete Subspace Learning based Interference Elimination for Multi-task Model
Fusion" (arXiv 2312.06173), Concrete Task Arithmetic. The defaults compute what the authors'
code computes: tanganke/fusion_bench at commit 54c9e8c9d9621620c720452cd8533332a32d3689,
``fusion_bench/method/concrete_subspace/clip_concrete_task_arithmetic.py``
(``ConcreteTaskArithmeticAlgorithmForCLIP``), ``config/method/concrete_subspace/
clip_concrete_task_arithmetic.yaml``, ``fusion_bench/models/masks/mask_model.py``
(``MaskModel``), ``fusion_bench/models/wrappers/task_wise_fusion.py`` (``TaskWiseMergedModel``)
and ``fusion_bench/method/adamerging/entropy_loss.py``:

* One mask ``m`` of logits (initialised at ``init_logit`` 0) over **every** trainable tensor
  (``MaskModel(pretrained, ignore_untrained_params=True, parameter_type="logits")``: weights,
  biases, norms, embeddings), shared by all task vectors:
  ``θ = θ_base + Σ_i λ w_i (m ⊙ τ_i)`` with ``λ = scaling_factor`` 0.3 (the reference's
  ``get_task_wise_weights(init_values=scaling_factor)``) times the caller's weight ``w_i``.
* Each of ``steps`` (2000) Adam steps (``lr`` 1e-3) samples a continuous binary-Concrete mask
  (``torch.distributions.RelaxedBernoulli(logits, temperature=0.5).rsample()``, reproduced by
  :func:`concrete_sample` with a seeded generator), **divides every mask tensor by its mean**
  and minimises ``Σ_t entropy_loss(logits_t)`` -- one batch of ``batch_size`` (16) prompts per
  contributor ``t``, the entropy ``-Σ p log(p + 1e-8)`` averaged over the batch.
* At the end one more mask is drawn (``eval_mask_type: continuous``: a relaxed sample, not a
  threshold), divided by its mean, and the merged task vector is ``Σ_i λ w_i (m ⊙ τ_i)``.

Adaptation to causal LMs (the reference classifies CLIP images): "the logits" are the merged
model's next-token logits at the assistant's *first* response position (the last token of the
chat-templated prompt, formatted by :func:`audit.models.generation.encode_prompt`), on the
contributors' unlabeled prompts -- the next-token distribution stands in for the class
distribution. Tied tensors (``lm_head.weight`` tied to the input embedding) share one mask;
the reference's ``MaskModel`` also makes (and samples, then never uses) a mask for the alias.

Named alternatives (not the reference): ``rescale=False`` (masks not divided by their mean),
``mask="threshold"`` (final mask ``logit >= 0``) or ``"discrete"`` (a Bernoulli sample, the
reference's other ``eval_mask_type``), ``cover="matrices"`` (2-D tensors only; the rest merged
as plain weighted sums), ``granularity="row"`` (one logit per output row),
``scaling_factor=1`` (the caller's weights as they are).

The base model is never modified: the merged model is evaluated with
:func:`torch.func.functional_call` on detached base tensors, and gradients flow only into the
mask logits. Memory is one copy of ``Σ_i λ w_i τ_i`` plus a logit tensor and its two Adam
moments per masked tensor.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "ConcreteOptions",
    "ConcreteResult",
    "MaskedMerge",
    "PromptBatch",
    "PromptSampler",
    "concrete_sample",
    "entropy_loss",
    "final_mask",
    "final_masks",
    "hard_mask",
    "learn_concrete_mask",
    "mask_stats",
    "mean_entropy",
    "merge_concrete",
    "next_token_logits",
    "relaxed_bernoulli",
]

Progress = Callable[[str, int, int], None]
Granularity = Literal["element", "row"]
Cover = Literal["all", "matrices"]
FinalMask = Literal["continuous", "discrete", "threshold"]


def _no_progress(name: str, step: int, total: int) -> None:
    """A progress callback that does nothing."""


class ConcreteOptions(BaseModel):
    """Options of :func:`merge_concrete`; the defaults are the reference's (module docstring).

    ``temperature`` (0.5) and ``init_logit`` (0) of the Concrete mask; ``steps`` (2000) Adam
    steps of learning rate ``lr`` (1e-3); ``batch_size`` (16) prompts per contributor per step;
    ``scaling_factor`` (0.3) multiplies every contributor's weight; ``rescale`` (true) divides
    every mask tensor by its mean, in training and at the end; ``mask`` the final mask
    (``"continuous"`` relaxed sample, ``"discrete"`` Bernoulli sample, ``"threshold"``
    ``logit >= 0``); ``cover`` which tensors get a mask (``"all"`` trainable tensors or
    ``"matrices"``, 2-D only); ``granularity`` one logit per element or per output row;
    ``max_length`` cuts prompts to their last tokens; ``seed`` ``None`` uses the merge's seed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(default=0.5, gt=0)
    init_logit: float = 0.0
    steps: int = Field(default=2000, ge=0)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=16, gt=0)
    scaling_factor: float = 0.3
    rescale: bool = True
    mask: FinalMask = "continuous"
    cover: Cover = "all"
    granularity: Granularity = "element"
    max_length: int = Field(default=128, ge=2)
    seed: int | None = None


# --------------------------------------------------------------------------------------------
# Shared machinery (also used by :mod:`audit.merging.dam`)


def hard_mask(logits: Tensor) -> Tensor:
    """The deterministic mask of Concrete logits: 1 where ``logit >= 0`` (ties keep), else 0."""
    return (logits >= 0).to(logits.dtype)


def relaxed_bernoulli(logits: Tensor, temperature: float, generator: Any) -> Tensor:
    """A binary Concrete sample ``sigmoid((logit + log u - log(1 - u)) / temperature)``."""
    import torch

    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    noise = torch.logit(u, eps=1e-6)  # log u - log(1 - u), u clamped to [1e-6, 1 - 1e-6]
    return torch.sigmoid((logits + noise) / temperature)


def mean_entropy(logits: Tensor) -> Tensor:
    """Mean Shannon entropy (nats) of the distributions ``softmax(logits)`` over the last dim."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1).mean()


def rescaled(mask: Tensor) -> Tensor:
    """``mask / mean(mask)`` (all zeros stay zeros)."""
    return mask / mask.mean().clamp_min(1e-12)


def concrete_sample(logits: Tensor, temperature: float, generator: Any) -> Tensor:
    """``RelaxedBernoulli(logits=logits, temperature).rsample()`` drawn from ``generator``.

    The arithmetic of ``torch.distributions.RelaxedBernoulli`` (torch's ``clamp_probs`` of the
    probabilities and the uniforms, the clipped sigmoid), which the reference's
    ``MaskModel.sample_mask(mask_type="continuous")`` calls, with the uniforms taken from a
    seeded generator instead of the global one.
    """
    import torch

    eps = torch.finfo(logits.dtype).eps
    probs = torch.sigmoid(logits).clamp(min=eps, max=1 - eps)
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    u = u.clamp(min=eps, max=1 - eps)
    x = (u.log() - (-u).log1p() + probs.log() - (-probs).log1p()) / temperature
    return torch.sigmoid(x).clamp(min=torch.finfo(x.dtype).tiny, max=1 - eps)


def entropy_loss(logits: Tensor, eps: float = 1e-8) -> Tensor:
    """The reference's ``entropy_loss``: ``-Σ p log(p + eps)`` over the last dim, batch mean."""
    import torch

    probs = torch.softmax(logits.float(), dim=-1)
    return -(probs * torch.log(probs + eps)).sum(dim=-1).mean()


def final_mask(logits: Tensor, kind: FinalMask, temperature: float, gen: Any) -> Tensor:
    """The mask the merge keeps: a relaxed sample, a Bernoulli sample or ``logit >= 0``."""
    import torch

    if kind == "continuous":
        return concrete_sample(logits, temperature, gen)
    if kind == "discrete":
        return torch.bernoulli(torch.sigmoid(logits), generator=gen)
    return hard_mask(logits)


def final_masks(
    tau: Mapping[str, Tensor],
    logits: Mapping[str, Tensor],
    kind: FinalMask,
    temperature: float,
    rescale: bool,
    gen: Any,
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, float]]:
    """The masks a trained mask model ends with: ``(final, applied, stats)`` — each logit
    tensor's :func:`final_mask`, the same rescaled by its mean where ``rescale`` (as multiplied
    into the update), and their :func:`mask_stats` against ``tau``. DAM and Concrete both end
    this way (the reference's ``merge_and_unload`` with ``mask_model.sample_mask`` and the
    mean rescale)."""
    final = {n: final_mask(t.detach(), kind, temperature, gen) for n, t in logits.items()}
    applied = {n: rescaled(m) for n, m in final.items()} if rescale else final
    return final, applied, mask_stats(tau, final, applied)


def mask_stats(
    tau: Mapping[str, Tensor], masks: Mapping[str, Tensor], applied: Mapping[str, Tensor]
) -> dict[str, float]:
    """How much of the update a mask keeps.

    ``masks``: the final masks before rescaling; ``applied``: the masks as multiplied into the
    update (rescaled where the method rescales). ``keep_rate``: the mask mass over the masked
    coordinates (``Σ m / N``); ``kept_coordinates``: the share of masked coordinates with
    ``m >= 0.5``; ``norm_ratio``: ``‖applied ⊙ Σ w τ‖ / ‖Σ w τ‖`` over every tensor of ``tau``
    (unmasked tensors count whole).
    """
    count = sum(m.numel() for m in masks.values())
    mass = sum(float(m.float().sum()) for m in masks.values())
    kept = sum(float((m >= 0.5).float().sum()) for m in masks.values())
    masked = whole = 0.0
    for name, t in tau.items():
        size = float(t.float().pow(2).sum())
        whole += size
        m = applied.get(name)
        masked += float((t * m.to(t.device)).float().pow(2).sum()) if m is not None else size
    return {
        "keep_rate": mass / count if count else 1.0,
        "kept_coordinates": kept / count if count else 1.0,
        "norm_ratio": (masked / whole) ** 0.5 if whole > 0 else 1.0,
    }


@dataclass
class PromptBatch:
    """Right-padded token ids of chat-templated prompts and each row's last real position.

    ``task`` (when given) is the contributor of every row; rows are grouped by contributor,
    ``per_task`` rows each, in contributor order.
    """

    input_ids: Tensor
    attention_mask: Tensor
    last: Tensor
    task: Tensor | None = None


class PromptSampler:
    """Seeded batches that draw the same number of prompts from every contributor.

    Prompts are chat-formatted exactly as generation formats them, cut to their last
    ``max_length`` tokens; each contributor's prompts are cycled through in a fresh seeded
    shuffle per pass. Each batch holds ``per_task`` prompts of every contributor with prompts:
    ``ceil(batch_size / contributors)`` unless ``per_task`` is given.
    """

    def __init__(
        self,
        tokenizer: Any,
        prompts: Sequence[Sequence[str]],
        *,
        batch_size: int,
        max_length: int,
        seed: int,
        device: Any,
        per_task: int | None = None,
    ) -> None:
        from audit.models.generation import encode_prompt, pad_token_id

        bos = getattr(tokenizer, "bos_token_id", None)
        self.tasks: list[list[list[int]]] = []
        for task in prompts:
            encoded = []
            for prompt in task:
                ids = encode_prompt(tokenizer, prompt)[-max_length:]
                if not ids and bos is not None:
                    ids = [int(bos)]
                if ids:
                    encoded.append(ids)
            if encoded:
                self.tasks.append(encoded)
        if not self.tasks:
            raise ValueError("a data-driven merge needs at least one non-empty prompt")
        self.per_task = per_task or max(1, math.ceil(batch_size / len(self.tasks)))
        self.rng = random.Random(seed)
        self.orders: list[list[int]] = [[] for _ in self.tasks]
        self.pad_id = pad_token_id(tokenizer)
        self.device = device

    def _take(self, t: int) -> list[int]:
        out: list[int] = []
        while len(out) < self.per_task:
            if not self.orders[t]:
                order = list(range(len(self.tasks[t])))
                self.rng.shuffle(order)
                self.orders[t] = order
            out.append(self.orders[t].pop())
        return out

    def next(self) -> PromptBatch:
        """The next batch: ``per_task`` prompts of every contributor, right-padded."""
        import torch

        rows = [self.tasks[t][i] for t in range(len(self.tasks)) for i in self._take(t)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for k, row in enumerate(rows):
            ids[k, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention[k, : len(row)] = 1
        last = torch.tensor([len(r) - 1 for r in rows], dtype=torch.long)
        task = torch.arange(len(self.tasks)).repeat_interleave(self.per_task)
        return PromptBatch(
            ids.to(self.device),
            attention.to(self.device),
            last.to(self.device),
            task.to(self.device),
        )


@dataclass
class MaskedMerge:
    """The base model's tensors and ``Σ_i w_i τ_i`` per parameter, ready for masked forwards.

    ``canonical`` maps every name of ``deltas`` to the parameter it names (tied weights such as
    ``lm_head.weight`` map to ``model.embed_tokens.weight``); buffers are left out and merged as
    plain weighted sums. ``masked`` lists the canonical parameters that get mask logits: the
    2-D ones (``cover="matrices"``, in the order of ``deltas``) or all of them (``cover="all"``,
    in the model's parameter order -- the order the reference's ``MaskModel`` samples in).
    """

    model: Any
    base: dict[str, Tensor]
    tau: dict[str, Tensor]
    canonical: dict[str, str]
    masked: list[str]
    embed_name: str | None
    device: Any

    @classmethod
    def build(
        cls,
        model: Any,
        deltas: Mapping[str, Sequence[Tensor]],
        weights: Sequence[float],
        cover: Cover = "matrices",
    ) -> MaskedMerge:
        """Check ``deltas`` against ``model`` and sum the weighted task vectors per parameter."""
        import torch

        groups: dict[int, str] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            groups.setdefault(id(param), name)
        by_name = dict(model.named_parameters(remove_duplicate=False))
        base = {n: p.detach() for n, p in model.named_parameters()}
        buffers = {n for n, _ in model.named_buffers()}
        canonical: dict[str, str] = {}
        tau: dict[str, Tensor] = {}
        for name, vectors in deltas.items():
            if len(vectors) != len(weights):
                raise ValueError(
                    f"delta {name!r} has {len(vectors)} task vectors for {len(weights)} weights"
                )
            if name in buffers:
                continue  # merged as a plain weighted sum, never in the masked forward
            if name not in by_name:
                raise ValueError(f"delta {name!r} names no parameter or buffer of the base model")
            target = groups[id(by_name[name])]
            canonical[name] = target
            if target in tau:
                continue  # a tied alias: the first name given for the tensor wins
            ref = base[target]
            total = torch.zeros(ref.shape, dtype=torch.float32, device=ref.device)
            for w, vec in zip(weights, vectors, strict=True):
                if tuple(vec.shape) != tuple(ref.shape):
                    raise ValueError(
                        f"delta {name!r} has shape {tuple(vec.shape)}, "
                        f"the parameter {tuple(ref.shape)}"
                    )
                total.add_(vec.to(device=ref.device, dtype=torch.float32), alpha=float(w))
            tau[target] = total
        if cover == "all":
            masked = [n for n in base if n in tau]
        else:
            masked = [n for n in tau if tau[n].dim() == 2]
        embed = model.get_input_embeddings()
        embed_weight = getattr(embed, "weight", None)
        embed_name = groups.get(id(embed_weight)) if embed_weight is not None else None
        device = next(iter(base.values())).device
        return cls(model, base, tau, canonical, masked, embed_name, device)

    def new_logits(self, init: float, granularity: Granularity) -> dict[str, Tensor]:
        """Fresh trainable logits, one tensor per masked parameter (per element or per row)."""
        import torch

        out = {}
        for name in self.masked:
            full = tuple(self.tau[name].shape)
            shape = full if granularity == "element" else full[:1] + (1,) * (len(full) - 1)
            out[name] = torch.full(
                shape, float(init), dtype=torch.float32, device=self.device, requires_grad=True
            )
        return out

    def params(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Merged parameters ``base + m ⊙ Σ w τ`` (unmasked names: ``base + Σ w τ``)."""
        params = dict(self.base)
        for name, tau in self.tau.items():
            ref = self.base[name]
            update = masks[name] * tau if name in masks else tau
            params[name] = (ref.float() + update).to(ref.dtype)
        return params

    def task_vector(
        self,
        deltas: Mapping[str, Sequence[Tensor]],
        weights: Sequence[float],
        masks: Mapping[str, Tensor],
    ) -> dict[str, Tensor]:
        """``Σ_i w_i (m ⊙ τ_i)`` for every name of ``deltas`` (aliases share their mask)."""
        import torch

        out: dict[str, Tensor] = {}
        for name, vectors in deltas.items():
            ref = vectors[0]
            total = torch.zeros(ref.shape, dtype=torch.float32, device=ref.device)
            for w, vec in zip(weights, vectors, strict=True):
                total.add_(vec.to(torch.float32), alpha=float(w))
            mask = masks.get(self.canonical.get(name, ""))
            out[name] = total * mask.to(total.device) if mask is not None else total
        return out


def next_token_logits(
    merge: MaskedMerge,
    params: Mapping[str, Tensor],
    batch: PromptBatch,
    delta: Tensor | None = None,
) -> Tensor:
    """Logits ``(batch, vocab)`` at the first response position, ``delta`` added to embeddings.

    ``delta`` -- a ``hidden``-sized vector, or one per row and position ``(batch, >= width,
    hidden)`` -- is added to the input embedding of every prompt token (padding excluded); the
    model runs functionally on ``params``.
    """
    import torch
    from torch.func import functional_call

    kwargs: dict[str, Any] = {"attention_mask": batch.attention_mask, "use_cache": False}
    if delta is None:
        kwargs["input_ids"] = batch.input_ids
    else:
        if merge.embed_name is None:
            raise ValueError("the base model exposes no input-embedding weight")
        embeds = torch.nn.functional.embedding(batch.input_ids, params[merge.embed_name])
        on = batch.attention_mask.unsqueeze(-1).to(embeds.dtype)
        if delta.dim() == 3:
            delta = delta[:, : embeds.shape[1]]
        kwargs["inputs_embeds"] = embeds + on * delta.to(embeds.dtype)
    out = functional_call(merge.model, dict(params), args=(), kwargs=kwargs, tie_weights=True)
    rows = torch.arange(batch.input_ids.shape[0], device=batch.last.device)
    return out.logits[rows, batch.last].float()


def generator_for(device: Any, seed: int) -> Any:
    """A torch generator on ``device`` seeded with ``seed`` (global RNG untouched)."""
    import torch

    return torch.Generator(device=device).manual_seed(int(seed))


# --------------------------------------------------------------------------------------------
# Concrete task arithmetic


@dataclass
class ConcreteResult:
    """The merged task vector, the final logits and masks, the loss of every step, stats.

    ``masks`` are the final masks before rescaling; ``stats`` is :func:`mask_stats` of them
    (``keep_rate``, ``kept_coordinates``, ``norm_ratio``).
    """

    task_vector: dict[str, Tensor]
    logits: dict[str, Tensor]
    masks: dict[str, Tensor]
    history: list[float] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)


def task_losses(
    logits: Tensor, batch: PromptBatch, loss: Callable[[Tensor], Tensor] = entropy_loss
) -> Tensor:
    """``Σ_t loss(logits of contributor t's rows)`` (the reference sums per-task losses)."""
    if batch.task is None:
        return loss(logits)
    total: Tensor | None = None
    for t in range(int(batch.task.max()) + 1):
        part = loss(logits[batch.task == t])
        total = part if total is None else total + part
    assert total is not None
    return total


def scaled_weights(weights: Sequence[float], scaling_factor: float) -> list[float]:
    """The reference's task-wise weights: ``scaling_factor`` times each caller weight."""
    return [float(scaling_factor) * float(w) for w in weights]


def learn_concrete_mask(
    base_model: Any,
    tokenizer: Any,
    deltas: Mapping[str, Sequence[Tensor]],
    weights: Sequence[float],
    prompts: Sequence[Sequence[str]],
    options: ConcreteOptions,
    seed: int,
    progress: Progress | None = None,
) -> ConcreteResult:
    """Learn the shared Concrete mask and return it with the merged task vector and history.

    ``history[k]`` is the loss ``Σ_t entropy`` at step ``k``, measured on that step's batch
    with that step's (rescaled) relaxed mask sample. The final mask is drawn from the same
    generator after training (``mask="continuous"``).
    """
    import torch

    report = progress or _no_progress
    seed = options.seed if options.seed is not None else seed
    weights = scaled_weights(weights, options.scaling_factor)
    merge = MaskedMerge.build(base_model, deltas, weights, options.cover)
    logits = merge.new_logits(options.init_logit, options.granularity)
    gen = generator_for(merge.device, seed)
    history: list[float] = []
    if options.steps and logits:
        sampler = PromptSampler(
            tokenizer,
            prompts,
            batch_size=options.batch_size,
            max_length=options.max_length,
            seed=seed,
            device=merge.device,
            per_task=options.batch_size,
        )
        leaves = list(logits.values())
        optimizer = torch.optim.Adam(leaves, lr=options.lr)
        for step in range(options.steps):
            masks = {n: concrete_sample(t, options.temperature, gen) for n, t in logits.items()}
            if options.rescale:
                masks = {n: rescaled(m) for n, m in masks.items()}
            batch = sampler.next()
            loss = task_losses(next_token_logits(merge, merge.params(masks), batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward(inputs=leaves)
            optimizer.step()
            history.append(float(loss.detach()))
            report("concrete", step + 1, options.steps)
    with torch.no_grad():
        final, applied, stats = final_masks(
            merge.tau, logits, options.mask, options.temperature, options.rescale, gen
        )
    return ConcreteResult(
        task_vector=merge.task_vector(deltas, weights, applied),
        logits={n: t.detach() for n, t in logits.items()},
        masks=final,
        history=history,
        stats=stats,
    )


def merge_concrete(
    base_model: Any,
    tokenizer: Any,
    deltas: dict[str, list[Tensor]],
    weights: list[float],
    prompts: list[list[str]],
    options: ConcreteOptions,
    seed: int,
    progress: Progress,
) -> dict[str, Tensor]:
    """Concrete task arithmetic: ``Σ_i λ w_i (m ⊙ τ_i)`` with one learned shared mask ``m``.

    See the module docstring for the method and :class:`ConcreteOptions` for the defaults.
    The mask statistics are on :func:`learn_concrete_mask`'s result (``stats``); the merge
    intervention's ``ModelMethod`` protocol returns only the task vector.
    """
    result = learn_concrete_mask(
        base_model, tokenizer, deltas, weights, prompts, options, seed, progress
    )
    return result.task_vector
