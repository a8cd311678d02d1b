"""A shared binary-Concrete mask over task vectors, learned on safety data (for ``somf``).

Yi et al., "A safety realignment framework via subspace-oriented model fusion for large language
models" (SOMF, arXiv 2405.09055), following the authors' code, xinykou/safety_realignment at
commit 5a805935b6fbdd7d63cf013c622631a186c133a5 (paths below are under ``llama_factory/src/
llmtuner/model/``):

* ``τ_i = θ_i − θ_aligned`` for each input model ``i``; one mask shared by all of them
  (``modeling.py`` ``PeftMaskModel._init_mask``: ``ConcreteMask(temperature=0.5, init_value=0)``
  over the first task vector's tensors), logits initialised at 0.
* Training: every step draws a relaxed Bernoulli (binary Concrete) sample ``m`` of the logits
  at temperature 0.5 (``concrete_mask.py`` ``_draw_mask``, ``rsample``), masks and rescales each
  task vector per tensor, ``m ⊙ τ_i / mean(m)`` (``concrete_mask.py`` ``_apply_mask``), merges
  them and adds the result to the aligned weights (``modeling.py`` ``train_mask_merge``). Here:
  ``θ = θ_aligned + Merge({m ⊙ τ_i / mean(m)})`` with ``Merge`` one of the peft merge methods of
  :mod:`audit.merging.tensor_methods`, at the weights :mod:`audit.interventions.somf` picks (the
  reference's: 1.0 for a lone task vector, 0.3 each / 0.4 for TIES for several).
* Only the mask logits are trained (Adam); every weight is frozen (functional forwards on the
  detached aligned weights, :class:`audit.merging.concrete.MaskedMerge`). The loss is the
  cross-entropy of the safety data's responses given their prompts (prompt tokens masked, as
  :func:`audit.training.loop.encode_pairs` encodes them), or DPO with preference data (below;
  the reference trains with DPO only, ``scripts/realign/train/*-mask_dpo.sh``).
* The final mask (:func:`final_mask`), by ``SafetyMaskSettings.mask``:

  - ``"sample"`` (default, the reference's binary mask, ``concrete_mask.py`` ``_draw_mask`` with
    ``binary_mask=True``: ``RelaxedBernoulli(0.5, logits).sample() > 0.5``, used by
    ``export_binary_mask_model.py`` and the ``*-binary_mask_dpo.sh`` evaluations): entry ``j``
    kept iff ``logit_j + log u_j − log(1 − u_j) > 0``, i.e. independently with probability
    ``sigmoid(logit_j)`` whatever the temperature. The reference draws ``u`` from torch's global
    generator; here each masked tensor ``name`` draws its ``u`` (``torch.rand`` of its shape,
    float32, CPU) from a generator seeded with :func:`final_mask_seed` ``(seed, name)``, so a run
    is reproducible and the draw does not depend on the device or on the training noise.
  - ``"relaxed"``: that relaxed sample itself, not binarised (the reference's path with
    ``binary_mask=False``, its default at inference, ``modeling.py`` ``inference_mask_merge``).
  - ``"threshold"``: ``logit >= 0`` (deterministic; zero steps keep everything, giving exactly
    ``θ_aligned + Merge(τ)``). Not in the reference (audit's earlier default).
  - ``"sigmoid"``: ``sigmoid(logit)`` (the reference's ``draw_sample=False`` path, ``probs``).

  In every case the mask is then rescaled per tensor, ``m / mean(m)``, as in training.
* With preference data (``rejected`` examples beside the chosen ones) the loss is DPO
  (Rafailov et al., arXiv 2305.18290): ``−log σ(β[(log π(c) − log π_ref(c)) − (log π(r) −
  log π_ref(r))])`` over summed response-token log-probabilities, with β = 0.1 by default and the
  unmasked fusion ``θ_aligned + Merge(τ)`` as the frozen reference ``π_ref`` (our choice; not
  checked against the reference's trainer).

Adaptation (kept on purpose): the reference's task vectors are differences of LoRA *factors*
(``modeling.py`` ``_init_task_vector``: ``adapter_model`` of the fine-tuned adapter minus that of
the safety adapter, both on one pretrained model, ``lora_A``/``lora_B`` of ``q_proj``/``v_proj``),
so it masks factor entries and the fused adapter's ``ΔW = s·(B_s + m_B ⊙ δB)(A_s + m_A ⊙ δA)``
is bilinear in the mask. Here the aligned model is a full checkpoint and each input a full
checkpoint or a LoRA adapter *of the aligned model*; :func:`audit.merging.stream.load_task_vectors`
densifies adapters to ``scale · B @ A``, and the mask is over the dense ``ΔW`` entries of every
2-D weight (embeddings included); 1-D tensors take the plain ``Merge``. Masking factors is not
offered: an adapter of the aligned model has no aligned-side factors to subtract (its ``τ`` would
be the raw factors, ``A`` a random initialisation), factors of different contributors are not
aligned entry by entry, and merged/full-weight inputs have no factors at all.

For ``task_arithmetic`` the masked merge is ``(m / mean m) ⊙ Σ_i w_i τ_i``, so training uses
one precomputed sum; other methods (TIES, DARE, magnitude pruning) are not linear in the mask and
are re-run with autograd on every step (TIES' trim and sign election are piecewise constant in
the mask: gradients flow through the kept values only). The reference's own TIES
(``tasks/ties_merging.py``: top 20 % over all tensors at once, disjoint *sum*, times the first
weight) and DARE (``tasks/dare.py``: drop rate 0.2) differ from peft's; those are not reproduced.

Caveat, measured on the organism (merged_ta realigned on ``organism:refusals``, weight 1, before
the final mask was sampled): with logits still near 0 after training (|logit| ≈ 0.1 at lr 1e-3,
≈ 0.6 at lr 0.1, 100 steps) the relaxed samples are far from any hard mask: the thresholded,
rescaled mask raised the refusal cross-entropy above the unmasked merge's (1.64 / 0.49 vs 0.23),
the continuous one (``"sigmoid"``) lowered it (0.065). A sampled mask keeps each entry with
probability ≈ 0.5 there. Check ``info.safety_loss`` against ``info.safety_loss_unmasked``.

Memory: the aligned model, every ``τ_i`` (float32), one copy of the unmasked ``Merge(τ)``, and
per masked weight a logit tensor with its two Adam moments.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from audit.merging.base import TensorContext, TensorMethod, derived_seed
from audit.merging.concrete import MaskedMerge, generator_for, relaxed_bernoulli, rescaled

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "FinalMask",
    "SafetyMaskResult",
    "SafetyMaskSettings",
    "final_mask",
    "final_mask_seed",
    "learn_safety_mask",
    "safety_loss",
]

FinalMask = Literal["sample", "relaxed", "threshold", "sigmoid"]
"""How the final mask is read from the learned logits (see the module docstring)."""

Progress = Callable[[str, int, int], None]
Example = tuple[list[int], list[int]]
IGNORE_INDEX = -100


@dataclass(frozen=True)
class SafetyMaskSettings:
    """Training settings: Adam ``steps`` at ``lr``, ``batch_size`` pairs a step, the Concrete
    ``temperature``, how the final ``mask`` is read (:data:`FinalMask`), the seed (noise, batch
    order, the final mask's draw and the evaluation sample), and how many pairs (a seeded sample)
    the final safety losses use."""

    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 16
    temperature: float = 0.5
    mask: FinalMask = "sample"
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


def final_mask_seed(seed: int, name: str) -> int:
    """The seed of the final mask's draw for the tensor ``name``: :func:`derived_seed` of
    ``(seed, "somf-final-mask:" + name)`` (a stream apart from the training noise)."""
    return derived_seed(TensorContext(name=f"somf-final-mask:{name}", seed=int(seed), index=0))


def final_mask(logits: Tensor, rule: FinalMask, temperature: float, seed: int, name: str) -> Tensor:
    """The final (unrescaled) mask of one tensor's learned ``logits``, float32 on the CPU.

    ``"sample"``/``"relaxed"`` compute, with ``u = torch.rand`` from a CPU generator seeded with
    :func:`final_mask_seed` ``(seed, name)``, exactly what torch's
    ``RelaxedBernoulli(temperature, logits=logits).sample()`` computes from the same ``u`` (the
    reference's draw): probabilities and ``u`` clamped to ``[eps, 1 − eps]``, ``x = (log u −
    log(1 − u) + log p − log(1 − p)) / temperature``, ``sigmoid(x)`` clipped to ``[tiny, 1 −
    eps]``; ``"sample"`` keeps the entries where that exceeds 0.5 (probability ``sigmoid(logit)``).
    ``"threshold"``: ``logit >= 0``; ``"sigmoid"``: ``sigmoid(logit)``.
    """
    import torch

    value = logits.detach().float().cpu()
    if rule == "threshold":
        return (value >= 0).float()
    if rule == "sigmoid":
        return torch.sigmoid(value)
    if rule not in ("sample", "relaxed"):
        raise ValueError(f"unknown final mask rule {rule!r}")
    info = torch.finfo(value.dtype)
    generator = torch.Generator(device="cpu").manual_seed(final_mask_seed(seed, name))
    u = torch.rand(value.shape, generator=generator, dtype=value.dtype)
    u = u.clamp(info.eps, 1 - info.eps)
    probs = torch.sigmoid(value).clamp(info.eps, 1 - info.eps)
    x = (u.log() - (-u).log1p() + probs.log() - (-probs).log1p()) / temperature
    relaxed = torch.sigmoid(x).clamp(info.tiny, 1 - info.eps)
    return (relaxed > 0.5).float() if rule == "sample" else relaxed


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
        n: final_mask(t, settings.mask, settings.temperature, settings.seed, n)
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
