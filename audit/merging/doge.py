"""DOGE: data-free merging as adaptive projective gradient descent (DOGE-TA).

Wei et al., "Modeling Multi-Task Model Merging as Adaptive Projective Gradient Descent",
arXiv 2501.01230 (2025). The arithmetic follows the authors' code in FusionBench:
tanganke/fusion_bench ``fusion_bench/method/doge_ta/doge_ta.py`` (``DOGE_TA_Algorithm``) with
the defaults of ``config/method/doge_ta/doge_ta.yaml``, at commit
54c9e8c9d9621620c720452cd8533332a32d3689. For one 2-D weight (m × n) with task vectors
τ_1..τ_T (T contributors):

1. **Task-aware coefficients.** λ_i = ``lamda`` / ‖τ_i‖_F, per weight (the reference's
   ``compute_layer_lamdas``); S = Σ_i λ_i τ_i, c = Σ_i λ_i.
2. **Surrogate.** With the merge M = S + c·Δ, every task vector stands in for its own inputs,
   row by row: L(Δ) = Σ_j Σ_r (⟨τ_j[r,:], τ_j[r,:] − M[r,:]⟩)² (the reference's
   ``taskvector_loss``).
3. **Shared subspace, output side.** r = ⌊min(m, n)/T⌋ top left singular vectors of each τ_i
   fill the column blocks i·r:(i+1)·r of an m × min(m, n) matrix (zeros elsewhere); its
   top p = ⌊min(m, n)/``subspace``⌋ left singular vectors Q span the shared subspace, and
   every gradient is projected off it, G ← G − QQᵀG, before the optimiser step.
4. **Optimiser.** Δ starts at 0; ``steps`` = 400 steps of ``torch.optim.Adam`` with
   ``lr`` = 1e-4 and torch's other defaults (betas (0.9, 0.999), ε = 1e-8). Adam is
   element-wise, so Δ itself is not exactly orthogonal to Q; the reference behaves the same.
5. **Trimmed merge.** mask_i keeps the entries with |τ_i| ≥ the (d − ⌊d·``top_k``/100⌋)-th
   smallest |τ_i| (d entries, ties kept), i.e. the top ``top_k`` = 30 % of τ_i by magnitude
   (⌊d·0.3⌋ + 1 entries without ties: the threshold entry is kept, as in the reference's
   ``topk_values_mask``); the merged task vector is Σ_i λ_i·(τ_i + Δ)⊙mask_i. The mask comes
   from τ_i, not τ_i + Δ.

Defaults = the reference's: ``subspace`` = 6, ``top_k`` = 30, ``lamda`` = 0.07 (the yaml),
``lr`` = 1e-4 and ``steps`` = 400 (hard-coded in ``optimize_delta``). The result is
deterministic: exact SVDs, Δ = 0 at the start, no randomness (the merge's seed is unused).
The merged weight is ``base + scaling · result`` with the merge's ``scaling`` (1 by default,
as in the reference, which adds Σ_i λ_i·(τ_i + Δ)⊙mask_i to the pretrained weight as is).

Adaptations of a per-tensor, streamed method (audit's merges see one tensor at a time):

- **Which tensors.** The reference merges only keys with "encoder" and "weight" and without
  "layer_norm" in their name, i.e. the 2-D linear weights of a CLIP/T5 encoder's blocks; all
  other parameters stay pretrained. Here every 2-D tensor gets DOGE, including a causal LM's
  ``embed_tokens``/``lm_head`` (the reference's filter would exclude them, but a tensor method
  only sees a name); tensors of other dimensions (norms, biases, convolutions) follow
  ``other_tensors``: ``"base"`` (default, as the reference: the merged weight is the base's)
  or ``"average"`` (the weighted average Σŵ_iδ_i, an alternative that is not the reference).
- **Trimming per tensor.** The reference picks each τ_i's top 30 % over its whole flattened
  (filtered) state dict at once; a streamed merge cannot, so the top ``top_k`` % is taken
  within each tensor. ``top_k`` is a percentage (0, 100]; 100 keeps every entry.
- **Weights.** The reference has none; here w_i multiplies λ_i (λ_i = ``lamda``·w_i/‖τ_i‖, so
  weights all 1 are the reference). Contributors with weight 0, or with a zero task vector on
  this tensor (the reference would divide by ‖τ_i‖ = 0 and produce NaN), are left out of the
  tensor's merge, T counting only the others. Weights must be ≥ 0, not all zero.
- **Projection without the m × m matrix.** QQᵀG is computed as Q(QᵀG), not with the
  explicit projector; equal up to rounding, and an embedding's m × m projector would not fit.
- **One optimiser per tensor.** The reference builds one Adam over all layers' Δ and then
  runs 400 steps per layer in turn; Adam's state is per parameter and the other layers'
  gradients are None meanwhile, so this is the same as a fresh Adam per tensor.
- Where a task vector has rank < r, the reference's blocks include left singular vectors of
  zero singular values, which are whatever LAPACK returns; audit calls the same
  ``torch.linalg.svd``, so it reproduces them on the same backend only.

Cost: per 2-D tensor, T + 1 thin SVDs and ``steps`` passes over the T task vectors; Adam keeps
two more tensors of the weight's size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from audit.merging.opcm import normalized_weights, weighted_average

if TYPE_CHECKING:
    from torch import Tensor

    from audit.merging.base import TensorContext

__all__ = ["DogeOptions", "doge_matrix", "merge_doge", "shared_subspace", "top_k_mask"]


class DogeOptions(BaseModel):
    """DOGE's hyper-parameters; the defaults are the reference's (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subspace: int = Field(default=6, gt=0)
    """The shared subspace has ⌊min(m, n)/subspace⌋ dimensions (the reference's ``subspace``)."""
    top_k: float = Field(default=30.0, gt=0, le=100)
    """Percentage of each task vector's entries (largest |τ_i|) kept in the final merge."""
    lamda: float = Field(default=0.07, gt=0)
    """λ_i = lamda·w_i/‖τ_i‖ (the reference's ``lamda``)."""
    lr: float = Field(default=1e-4, gt=0)
    """Adam's learning rate."""
    steps: int = Field(default=400, ge=0)
    """Adam steps per tensor."""
    other_tensors: Literal["base", "average"] = "base"
    """Tensors that are not 2-D: keep the base (reference) or take the weighted average."""


def shared_subspace(tasks: list[Tensor], subspace: int) -> Tensor | None:
    """Q (m × p): the top p = ⌊min(m, n)/subspace⌋ left singular vectors of the stacked blocks.

    Block i holds the top ⌊min(m, n)/T⌋ left singular vectors of τ_i; None when p = 0.
    """
    import torch

    m, n = tasks[0].shape
    full = min(m, n)
    count = len(tasks)
    block = full // count
    dims = full // subspace
    if dims == 0:
        return None
    stacked = tasks[0].new_zeros(m, full)
    for i, task in enumerate(tasks):
        u = torch.linalg.svd(task, full_matrices=False)[0]
        stacked[:, i * block : (i + 1) * block] = u[:, :block]
    return torch.linalg.svd(stacked, full_matrices=False)[0][:, :dims]


def top_k_mask(task: Tensor, top_k: float) -> Tensor:
    """The entries of ``task`` with |τ| ≥ the (d − ⌊d·top_k/100⌋)-th smallest |τ| (ties kept)."""
    import torch

    magnitude = task.abs()
    count = magnitude.numel()
    keep = int(count * (top_k / 100))
    if keep >= count:
        return torch.ones_like(task, dtype=torch.bool)
    threshold = magnitude.flatten().kthvalue(count - keep).values
    return magnitude >= threshold


def _rowwise(tasks: list[Tensor], merged: Tensor) -> list[Tensor]:
    """a_j[r] = ⟨τ_j[r,:], τ_j[r,:] − M[r,:]⟩ for every task j."""
    return [(task * (task - merged)).sum(dim=1) for task in tasks]


def doge_matrix(
    tasks: list[Tensor],
    weights: list[float],
    options: DogeOptions,
    *,
    track_loss: bool = False,
) -> tuple[Tensor, list[float]]:
    """DOGE on 2-D task vectors: the merged task vector and the surrogate L at steps 0..steps.

    Works in the task vectors' dtype. ``weights`` multiply the λ_i (see the module docstring).
    The losses (only with ``track_loss``, else empty) are L(Δ) before each step and after the
    last one, at the untrimmed M = S + c·Δ; the returned merge is the trimmed one.
    """
    import torch

    normalized_weights(weights, len(tasks))
    norms = [torch.linalg.vector_norm(task) for task in tasks]
    active = [i for i in range(len(tasks)) if weights[i] > 0 and float(norms[i]) > 0]
    if not active:
        return torch.zeros_like(tasks[0]), []
    taus = [tasks[i] for i in active]
    lambdas = [(options.lamda * weights[i]) / norms[i] for i in active]
    start = torch.zeros_like(taus[0])
    for lam, task in zip(lambdas, taus, strict=True):
        start.add_(task * lam)
    scale = sum(lambdas[1:], lambdas[0])
    basis = shared_subspace(taus, options.subspace)

    delta = torch.nn.Parameter(torch.zeros_like(start))
    optimizer = torch.optim.Adam([delta], lr=options.lr)
    losses: list[float] = []
    with torch.no_grad():
        for _ in range(options.steps):
            rows = _rowwise(taus, start + scale * delta)
            if track_loss:
                losses.append(float(sum(float(a.double().pow(2).sum()) for a in rows)))
            grad = torch.zeros_like(start)
            for a, task in zip(rows, taus, strict=True):
                grad.add_(a.unsqueeze(1) * task)
            grad.mul_(-2 * scale)
            if basis is not None:
                grad.sub_(basis @ (basis.mT @ grad))
            delta.grad = grad
            optimizer.step()
            delta.grad = None
        final = delta.detach()
        if track_loss:
            rows = _rowwise(taus, start + scale * final)
            losses.append(float(sum(float(a.double().pow(2).sum()) for a in rows)))
        merged = torch.zeros_like(start)
        for lam, task in zip(lambdas, taus, strict=True):
            merged.add_(((task + final) * top_k_mask(task, options.top_k)) * lam)
    return merged, losses


def merge_doge(
    base: Tensor,
    deltas: list[Tensor],
    weights: list[float],
    ctx: TensorContext,
    options: DogeOptions,
) -> Tensor:
    """DOGE's merged task vector for one tensor (float32, ``base``'s shape)."""
    import torch

    normalized_weights(weights, len(deltas))
    for delta in deltas:
        if delta.shape != base.shape:
            raise ValueError(f"{ctx.name}: delta shape {tuple(delta.shape)} != {base.shape}")
    if base.dim() != 2 or base.numel() == 0:
        if options.other_tensors == "average":
            return weighted_average([d.float() for d in deltas], weights)
        return torch.zeros_like(base, dtype=torch.float32)
    merged, _ = doge_matrix([d.float() for d in deltas], weights, options)
    return merged.to(torch.float32)
