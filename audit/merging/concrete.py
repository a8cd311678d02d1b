"""Concrete subspace task arithmetic: one shared mask over task vectors, learned without labels.

Reconstructed from Tang et al., "Concrete Subspace Learning based Interference Elimination for
Multi-task Model Fusion" (arXiv 2312.06173), Concrete Task Arithmetic variant, and adapted from
CLIP image classifiers to causal LMs:

* One binary Concrete (relaxed Bernoulli, Gumbel-sigmoid) mask ``m`` shared by all task vectors;
  the merged model is ``θ = θ_base + Σ_i w_i (m ⊙ τ_i) = θ_base + m ⊙ Σ_i w_i τ_i``.
* The mask logits (initialised at 0, i.e. keep probability 0.5) are the only trained tensors.
  They are trained with Adam to minimise the mean Shannon entropy of the merged model's
  next-token distribution at the assistant's *first* response position only (the last token
  of the chat-templated prompt, formatted by :func:`audit.models.generation.encode_prompt`;
  later positions would need the merged model's own continuation, one more decode per step) on
  the contributors' unlabeled prompts -- the test-time-adaptation objective of AdaMerging that
  the paper uses, with "next-token distribution" standing in for "class distribution". Each step
  draws the same number of prompts from every contributor that has prompts, so every task
  weighs the same (the paper sums per-task entropies). The paper's bi-level (meta-learning)
  formulation -- mask outside, task arithmetic with fixed coefficients inside -- is done here
  as direct optimisation of the mask with the caller's fixed ``weights``.
* At the end the mask is made deterministic: an element is kept iff its logit is ``>= 0``
  (the tie-break at exactly 0 keeps, so zero training steps give plain task arithmetic
  ``Σ_i w_i τ_i``).
* No ``1/keep-rate`` rescaling by default (``rescale=False``): DARE rescales because it drops
  coordinates at random and wants to preserve the expected update; here the mask is *learned*
  to drop interfering coordinates, and the entropy it was selected on was measured with kept
  coordinates at (nearly: samples are near-binary at temperature 0.5) their full value, so
  rescaling would move the model away from what was optimised. ``rescale=True`` divides each
  mask tensor by its mean, during training *and* at the end, so that the two stay consistent.
* Masks cover 2-D parameters only (one logit tensor per weight matrix, per element or per
  row); 1-D tensors (norms, biases) are merged as plain weighted sums ``Σ_i w_i τ_i``.

Caveat, measured on the organism: with logits starting exactly at the threshold, Adam moves
every logit by about ``lr`` per step in the sign of its (noisy, Concrete-sampled) gradient, so
coordinates that hardly matter end on either side and the final mask keeps about half of them;
``init_logit > 0`` (e.g. 2, keep probability 0.88) biases towards keeping.

The base model is never modified: the merged model is evaluated with
:func:`torch.func.functional_call` on detached base tensors, and gradients flow only into the
mask logits. Memory is one copy of ``Σ_i w_i τ_i`` plus, per mask, a logit tensor and its two
Adam moments for every masked weight.
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
    "hard_mask",
    "learn_concrete_mask",
    "mean_entropy",
    "merge_concrete",
    "next_token_logits",
    "relaxed_bernoulli",
]

Progress = Callable[[str, int, int], None]
Granularity = Literal["element", "row"]


def _no_progress(name: str, step: int, total: int) -> None:
    """A progress callback that does nothing."""


class ConcreteOptions(BaseModel):
    """Options of :func:`merge_concrete`.

    ``temperature``: Concrete temperature (0.5). ``init_logit``: initial mask logit (0 → keep
    probability 0.5). ``steps``: Adam steps (100). ``lr``: Adam learning rate on the logits
    (0.05). ``batch_size``: prompts per step, split evenly over the contributors (16).
    ``granularity``: one logit per weight element (``"element"``) or per output row
    (``"row"``). ``rescale``: divide each mask tensor by its mean (see the module docstring).
    ``max_length``: prompts are cut to their last ``max_length`` tokens. ``seed``: ``None`` uses
    the seed the merge is called with.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(default=0.5, gt=0)
    init_logit: float = 0.0
    steps: int = Field(default=100, ge=0)
    lr: float = Field(default=0.05, gt=0)
    batch_size: int = Field(default=16, gt=0)
    granularity: Granularity = "element"
    rescale: bool = False
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


@dataclass
class PromptBatch:
    """Right-padded token ids of chat-templated prompts and each row's last real position."""

    input_ids: Tensor
    attention_mask: Tensor
    last: Tensor


class PromptSampler:
    """Seeded batches that draw the same number of prompts from every contributor.

    Prompts are chat-formatted exactly as generation formats them, cut to their last
    ``max_length`` tokens; each contributor's prompts are cycled through in a fresh seeded
    shuffle per pass.
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
        self.per_task = max(1, math.ceil(batch_size / len(self.tasks)))
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
        return PromptBatch(ids.to(self.device), attention.to(self.device), last.to(self.device))


@dataclass
class MaskedMerge:
    """The base model's tensors and ``Σ_i w_i τ_i`` per parameter, ready for masked forwards.

    ``canonical`` maps every name of ``deltas`` to the parameter it names (tied weights such as
    ``lm_head.weight`` map to ``model.embed_tokens.weight``); buffers are left out and merged as
    plain weighted sums. ``masked`` lists the canonical 2-D parameters that get mask logits.
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
        cls, model: Any, deltas: Mapping[str, Sequence[Tensor]], weights: Sequence[float]
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
            rows, cols = self.tau[name].shape
            shape = (rows, cols) if granularity == "element" else (rows, 1)
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

    ``delta`` (a ``hidden``-sized vector) is added to the input embedding of every prompt token
    (padding excluded); the model runs functionally on ``params``.
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
    """The merged task vector, the final logits and masks, and the entropy of every step."""

    task_vector: dict[str, Tensor]
    logits: dict[str, Tensor]
    masks: dict[str, Tensor]
    history: list[float] = field(default_factory=list)


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

    ``history[k]`` is the mean entropy (nats) at step ``k``, measured on that step's batch with
    that step's relaxed mask sample.
    """
    import torch

    report = progress or _no_progress
    seed = options.seed if options.seed is not None else seed
    merge = MaskedMerge.build(base_model, deltas, weights)
    logits = merge.new_logits(options.init_logit, options.granularity)
    history: list[float] = []
    if options.steps and logits:
        sampler = PromptSampler(
            tokenizer,
            prompts,
            batch_size=options.batch_size,
            max_length=options.max_length,
            seed=seed,
            device=merge.device,
        )
        gen = generator_for(merge.device, seed)
        leaves = list(logits.values())
        optimizer = torch.optim.Adam(leaves, lr=options.lr)
        for step in range(options.steps):
            batch = sampler.next()
            masks = {n: relaxed_bernoulli(t, options.temperature, gen) for n, t in logits.items()}
            if options.rescale:
                masks = {n: rescaled(m) for n, m in masks.items()}
            loss = mean_entropy(next_token_logits(merge, merge.params(masks), batch))
            optimizer.zero_grad(set_to_none=True)
            loss.backward(inputs=leaves)
            optimizer.step()
            history.append(float(loss.detach()))
            report("concrete", step + 1, options.steps)
    final = {n: hard_mask(t.detach()) for n, t in logits.items()}
    if options.rescale:
        final = {n: rescaled(m) for n, m in final.items()}
    return ConcreteResult(
        task_vector=merge.task_vector(deltas, weights, final),
        logits={n: t.detach() for n, t in logits.items()},
        masks=final,
        history=history,
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
    """Concrete task arithmetic: ``Σ_i w_i (m ⊙ τ_i)`` with one learned shared mask ``m``.

    See the module docstring for the method and :class:`ConcreteOptions` for the defaults.
    """
    result = learn_concrete_mask(
        base_model, tokenizer, deltas, weights, prompts, options, seed, progress
    )
    return result.task_vector
