"""A shared binary-Concrete mask over task vectors, learned on safety data (for ``somf``).

Reconstructed from Yi et al., "A safety realignment framework via subspace-oriented model fusion
for large language models" (SOMF, arXiv 2405.09055), from memory of the method (no code or text
at hand):

* ``τ_i = θ_i − θ_aligned`` for each input model ``i``; one mask ``m`` shared by all of them, a
  binary Concrete (relaxed Bernoulli) sample at temperature 0.5 of logits initialised at 0.
* The fused model is ``θ = θ_aligned + Merge({m ⊙ τ_i / mean(m)})`` with ``Merge`` one of the
  peft merge methods of :mod:`audit.merging.tensor_methods`; ``mean(m)`` is taken per weight
  tensor (the rescaling of :func:`audit.merging.concrete.rescaled`).
* Only the mask logits are trained (Adam); every weight is frozen (functional forwards on the
  detached aligned weights, :class:`audit.merging.concrete.MaskedMerge`). The loss is the
  cross-entropy of the safety data's responses given their prompts (prompt tokens masked, as
  :func:`audit.interventions.lora.encode_pairs` encodes them).
* At the end the mask is either binarised (kept iff ``logit >= 0``, the tie-break of
  :func:`audit.merging.concrete.hard_mask`: zero steps keep everything, giving exactly
  ``θ_aligned + Merge(τ)``) or left continuous (``sigmoid(logit)``), then rescaled as above.
* Masks cover 2-D weights only (embeddings included); 1-D tensors take the plain ``Merge``.
* With preference data (``rejected`` examples beside the chosen ones) the loss is DPO
  (Rafailov et al., arXiv 2305.18290) instead: ``−log σ(β[(log π(c) − log π_ref(c)) −
  (log π(r) − log π_ref(r))])`` over summed response-token log-probabilities, with β = 0.1 by
  default and the unmasked fusion ``θ_aligned + Merge(τ)`` as the frozen reference ``π_ref``
  (our choice: the paper's reference model is not at hand).

For ``task_arithmetic`` the masked merge is ``(m / mean m) ⊙ Σ_i w_i τ_i``, so training uses
one precomputed sum; other methods (TIES, DARE, magnitude pruning) are not linear in the mask and
are re-run with autograd on every step (TIES' trim and sign election are piecewise constant in
the mask: gradients flow through the kept values only).

Caveat, measured on the organism (merged_ta realigned on ``organism:refusals``, weight 1): with
logits still near 0 after training (|logit| ≈ 0.1 at lr 1e-3, ≈ 0.6 at lr 0.1, 100 steps) the
relaxed samples are far from the final hard mask, and the binarised, rescaled mask raised the
refusal cross-entropy above the unmasked merge's (1.64 / 0.49 vs 0.23), while the continuous
mask (``binarize = False``) lowered it (0.065). Check ``info.safety_loss`` against
``info.safety_loss_unmasked``.

Memory: the aligned model, every ``τ_i`` (float32), one copy of the unmasked ``Merge(τ)``, and
per masked weight a logit tensor with its two Adam moments.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from audit.merging.base import TensorContext, TensorMethod
from audit.merging.concrete import (
    MaskedMerge,
    generator_for,
    hard_mask,
    relaxed_bernoulli,
    rescaled,
)

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["SafetyMaskResult", "SafetyMaskSettings", "learn_safety_mask", "safety_loss"]

Progress = Callable[[str, int, int], None]
Example = tuple[list[int], list[int]]
IGNORE_INDEX = -100


@dataclass(frozen=True)
class SafetyMaskSettings:
    """Training settings: Adam ``steps`` at ``lr``, ``batch_size`` pairs a step, the Concrete
    ``temperature``, whether the final mask is binarised, the seed (noise, batch order and the
    evaluation sample), and how many pairs (a seeded sample) the final safety losses use."""

    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 16
    temperature: float = 0.5
    binarize: bool = True
    seed: int = 0
    eval_examples: int = 512
    dpo_beta: float = 0.1


@dataclass
class SafetyMaskResult:
    """The fused task vector per name, the final logits and (unrescaled) masks, the loss of
    every step, the masks' keep rate, and the safety loss of the fused and unmasked models."""

    task_vector: dict[str, Tensor]
    logits: dict[str, Tensor]
    masks: dict[str, Tensor]
    history: list[float] = field(default_factory=list)
    keep_rate: float = 1.0
    loss: float = float("nan")
    loss_unmasked: float = float("nan")


def _collate(examples: Sequence[Example], device: Any) -> dict[str, Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (padding ignored)."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, targets) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[row, : len(ids)] = torch.tensor(targets, dtype=torch.long)
        attention[row, : len(ids)] = 1
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention.to(device),
        "labels": labels.to(device),
    }


def _loss(merge: MaskedMerge, params: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Any:
    """The mean response-token cross-entropy of the model with weights ``params``."""
    from torch.func import functional_call

    kwargs = {**batch, "use_cache": False}
    out = functional_call(merge.model, dict(params), args=(), kwargs=kwargs, tie_weights=True)
    return out.loss


def _sequence_logprobs(
    merge: MaskedMerge, params: Mapping[str, Tensor], batch: Mapping[str, Tensor]
) -> Any:
    """Each row's summed log-probability of its labelled (response) tokens."""
    import torch
    from torch.func import functional_call

    kwargs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "use_cache": False,
    }
    out = functional_call(merge.model, dict(params), args=(), kwargs=kwargs, tie_weights=True)
    logits = out.logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    picked = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp_min(0).unsqueeze(-1))
    return (picked.squeeze(-1) * keep).sum(dim=1)


def dpo_loss(chosen: Any, rejected: Any, chosen_ref: Any, rejected_ref: Any, beta: float) -> Any:
    """Mean DPO loss ``−log σ(β[(c − c_ref) − (r − r_ref)])`` from sequence log-probabilities."""
    import torch

    margin = (chosen - chosen_ref) - (rejected - rejected_ref)
    return -torch.nn.functional.logsigmoid(beta * margin).mean()


def safety_loss(
    merge: MaskedMerge, params: Mapping[str, Tensor], examples: Sequence[Example], batch_size: int
) -> float:
    """The response-token cross-entropy over all ``examples`` (token-weighted mean, no grad)."""
    import torch

    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = _collate(examples[start : start + batch_size], merge.device)
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            if n:
                total += float(_loss(merge, params, batch)) * n
                tokens += n
    return total / tokens if tokens else float("nan")


def _batches(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Index batches read in order from successive seeded shuffles (as the LoRA fine-tune)."""
    from audit.training.loop import batches as lora_batches

    return lora_batches(n, batch_size, steps, seed)


class _Fusion:
    """``θ_aligned + Merge({m ⊙ τ_i})`` as functional parameters, for any tensor method."""

    def __init__(
        self,
        model: Any,
        vectors: Mapping[str, Sequence[Tensor]],
        weights: Sequence[float],
        method: TensorMethod,
        options: Any,
        seed: int,
        linear: bool,
    ) -> None:
        self.vectors, self.weights, self.method = vectors, list(weights), method
        self.options, self.seed, self.linear = options, seed, linear
        self.contexts = {
            name: TensorContext(name=name, seed=seed, index=i) for i, name in enumerate(vectors)
        }
        merged = {name: self.merge(name, vecs) for name, vecs in vectors.items()}
        # tau = Merge(τ) (unmasked), one "contributor" of weight 1
        self.masked = MaskedMerge.build(model, {n: [t] for n, t in merged.items()}, [1.0])
        del merged
        self.source: dict[str, str] = {}  # canonical parameter → the name its vectors have
        for name, target in self.masked.canonical.items():
            self.source.setdefault(target, name)
        self.on_device: dict[str, list[Tensor]] = {}
        if not linear:
            device = self.masked.device
            self.on_device = {
                t: [v.to(device) for v in vectors[self.source[t]]] for t in self.masked.masked
            }

    def merge(self, name: str, vecs: Sequence[Tensor]) -> Tensor:
        """``Merge(vecs)`` for the tensor ``name`` (the peft methods ignore the base argument)."""
        ctx = self.contexts[name]
        return self.method(vecs[0], list(vecs), self.weights, ctx, self.options)

    def params(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Merged parameters with the (already rescaled) ``masks`` on the masked weights."""
        if self.linear:
            return self.masked.params(masks)
        params = self.masked.params({})
        for target, mask in masks.items():
            ref = self.masked.base[target]
            delta = self.merge(self.source[target], [mask * v for v in self.on_device[target]])
            params[target] = (ref.float() + delta).to(ref.dtype)
        return params

    def final(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``Merge({m ⊙ τ_i})`` for every name (CPU; the plain ``Merge`` where unmasked)."""
        out: dict[str, Tensor] = {}
        for name, vecs in self.vectors.items():
            mask = masks.get(self.masked.canonical.get(name, ""))
            if mask is not None:
                mask = mask.to(vecs[0].device)
                vecs = [mask * v for v in vecs]
            out[name] = self.merge(name, vecs)
        return out

    def params_of(self, task_vector: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The model's parameters with ``task_vector`` added (for evaluating a result)."""
        params = dict(self.masked.base)
        for name, target in self.masked.canonical.items():
            ref = self.masked.base[target]
            params[target] = (ref.float() + task_vector[name].to(ref.device)).to(ref.dtype)
        return params


def learn_safety_mask(
    model: Any,
    vectors: Mapping[str, Sequence[Tensor]],
    weights: Sequence[float],
    method: TensorMethod,
    options: Any,
    examples: Sequence[Example],
    settings: SafetyMaskSettings,
    *,
    linear: bool = False,
    progress: Progress | None = None,
    rejected: Sequence[Example] | None = None,
) -> SafetyMaskResult:
    """Learn the shared mask on ``examples`` (``encode_pairs`` output) and fuse.

    ``model`` is the aligned model (never modified), ``vectors`` its task vectors per parameter
    name (``θ_i − θ_aligned``, float32, CPU), ``method``/``options`` the merge method and its
    options, ``linear`` true when ``method`` is task arithmetic (one precomputed sum is used).
    ``history[k]`` is the loss of step ``k`` with that step's relaxed mask sample. With
    ``rejected`` (one per example, same order) the loss is DPO against the unmasked fusion.
    """
    import torch

    if not examples:
        raise ValueError("somf needs at least one safety example")
    fusion = _Fusion(model, vectors, weights, method, options, settings.seed, linear)
    merge = fusion.masked
    logits = merge.new_logits(0.0, "element")
    history: list[float] = []
    if rejected is not None and len(rejected) != len(examples):
        raise ValueError("somf: DPO needs one rejected response per chosen one")
    reference = fusion.params_of(fusion.final({})) if rejected is not None else None
    if settings.steps and logits:
        gen = generator_for(merge.device, settings.seed)
        leaves = list(logits.values())
        optimizer = torch.optim.Adam(leaves, lr=settings.lr)
        order = _batches(len(examples), settings.batch_size, settings.steps, settings.seed)
        for step, indices in enumerate(order):
            batch = _collate([examples[i] for i in indices], merge.device)
            masks = {
                n: rescaled(relaxed_bernoulli(t, settings.temperature, gen))
                for n, t in logits.items()
            }
            params = fusion.params(masks)
            if rejected is None or reference is None:
                loss = _loss(merge, params, batch)
            else:
                worse = _collate([rejected[i] for i in indices], merge.device)
                with torch.no_grad():
                    chosen_ref = _sequence_logprobs(merge, reference, batch)
                    rejected_ref = _sequence_logprobs(merge, reference, worse)
                loss = dpo_loss(
                    _sequence_logprobs(merge, params, batch),
                    _sequence_logprobs(merge, params, worse),
                    chosen_ref,
                    rejected_ref,
                    settings.dpo_beta,
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward(inputs=leaves)
            optimizer.step()
            history.append(float(loss.detach()))
            if progress is not None:
                progress("somf", step + 1, settings.steps)
    final = {
        n: hard_mask(t.detach()) if settings.binarize else torch.sigmoid(t.detach())
        for n, t in logits.items()
    }
    entries = sum(m.numel() for m in final.values())
    keep = sum(float(m.sum()) for m in final.values()) / entries if entries else 1.0
    task_vector = fusion.final({n: rescaled(m) for n, m in final.items()})
    unmasked = fusion.final({})
    size = max(settings.batch_size, 1)
    held = list(examples)
    if len(held) > settings.eval_examples:
        held = random.Random(settings.seed).sample(held, settings.eval_examples)
    return SafetyMaskResult(
        task_vector=task_vector,
        logits={n: t.detach() for n, t in logits.items()},
        masks=final,
        history=history,
        keep_rate=keep,
        loss=safety_loss(merge, fusion.params_of(task_vector), held, size),
        loss_unmasked=safety_loss(merge, fusion.params_of(unmasked), held, size),
    )
