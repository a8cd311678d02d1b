"""OPCM: orthogonal-projection-based continual merging with adaptive scaling.

A reconstruction, from memory (the paper could not be consulted while writing this), of OPCM
from Tang et al., "Merging Models on the Fly Without Retraining: A Sequential Approach to
Scalable Continual Model Merging", arXiv 2501.09522 (2025), and of its FusionBench
implementation. Contributors are merged one at a time, in the order the suite lists them:

1. The first task vector is the merge: M₁ = τ₁, λ₁ = 1.
2. For t ≥ 2, take the SVD of the running merge M_{t−1} = U S Vᵀ and the split rank k: the
   fewest top singular values holding a fraction ``alpha`` of its energy. τ_t is written in
   that basis, C = Uᵀ τ_t V, and its components on the dominant block C[:k, :k] and on the
   diagonal C[j, j] (the directions u_j v_jᵀ that M_{t−1} itself uses) are removed:
   P(τ_t) = τ_t − U C' Vᵀ, C' holding only those entries. The rest of τ_t (the other entries
   of C, and what lies outside span(U) or span(V)) is kept.
3. Adaptive scaling: with S_t = Σ_{i≤t} P(τ_i) (P(τ₁) = τ₁), λ_t = ‖S_t‖ / mean_{i≤t}‖τ_i‖
   and M_t = S_t / λ_t, i.e. M_t = (λ_{t−1}·M_{t−1} + P(τ_t)) / λ_t: the merged task vector's
   norm tracks the average norm of the contributors seen so far.

Tensors with fewer than two dimensions (norms, biases) get the weighted average of the deltas;
tensors with more are flattened to (shape[0], −1) and reshaped back.

Defaults: ``alpha`` = 0.5, ``zero_diagonal`` = true; exact SVD when min(m, n) ≤
``full_svd_max_dim`` = 128, else a randomized SVD (seeded from :func:`tensor_generator`) of
rank ``max_rank`` = 64 with ``power_iters`` = 2.

Adaptations:

- **Per tensor.** The paper's (and FusionBench's) λ_t uses whole-model norms; a streaming merge
  sees one tensor at a time, so norms, λ_t and the SVDs are per tensor.
- **Energy.** ``alpha`` is a fraction of the squared singular values (Frobenius energy), which a
  truncated SVD can evaluate exactly (‖M‖²_F is known); FusionBench, as recalled, uses the sum
  of singular values. Squared energy selects fewer directions at the same ``alpha``.
- **Truncated SVD.** For min(m, n) > ``full_svd_max_dim`` only the top ``max_rank`` singular
  triplets are computed (for speed): k is capped at ``max_rank`` and the diagonal is removed
  only along those directions; the paper uses the full SVD.
- **Null directions.** Singular vectors whose singular value is numerically zero are arbitrary
  (rank-deficient M); they are not used for the diagonal removal, so a task vector orthogonal
  to M passes untouched.
- **Weights.** Contributor i's projected task vector enters S_t multiplied by its weight w_i,
  and the target norm is the weighted mean Σw_i‖τ_i‖ / Σw_i. Only relative weights matter (the
  1-D average is normalised too); uniform weights are the paper's method. Weights must be ≥ 0,
  not all zero; contributors of weight 0 are skipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from audit.merging.base import TensorContext

__all__ = ["OpcmOptions", "merge_opcm", "normalized_weights", "top_singular", "weighted_average"]


class OpcmOptions(BaseModel):
    """OPCM's hyper-parameters (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = Field(default=0.5, gt=0, le=1)
    """Fraction of the running merge's squared singular values whose directions are projected
    out of each new task vector (the dominant block)."""
    zero_diagonal: bool = True
    """Also remove each new task vector's component along every rank-one direction u_j v_jᵀ of
    the running merge (beyond the dominant block), as FusionBench does."""
    max_rank: int = Field(default=64, gt=0)
    """Singular triplets computed by the randomized SVD of a large matrix."""
    full_svd_max_dim: int = Field(default=128, ge=0)
    """Exact SVD when min(m, n) ≤ this, randomized above."""
    power_iters: int = Field(default=2, ge=0)
    """Power iterations of the randomized SVD."""


def normalized_weights(weights: list[float], count: int) -> list[float]:
    """The weights divided by their sum; an error if any is negative or all are zero."""
    if count == 0:
        raise ValueError("a merge needs at least one contributor")
    if len(weights) != count:
        raise ValueError(f"{len(weights)} weights for {count} contributors")
    if any(w < 0 for w in weights):
        raise ValueError(f"merge weights must be non-negative, got {weights}")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"merge weights must not all be zero, got {weights}")
    return [float(w) / total for w in weights]


def weighted_average(deltas: list[Tensor], weights: list[float]) -> Tensor:
    """Σ ŵ_i·δ_i with the weights normalised to sum 1."""
    import torch

    norm = normalized_weights(weights, len(deltas))
    out = torch.zeros_like(deltas[0])
    for delta, w in zip(deltas, norm, strict=True):
        if w:
            out.add_(delta, alpha=w)
    return out


def top_singular(
    matrix: Tensor,
    rank: int,
    generator: torch.Generator,
    *,
    full_svd_max_dim: int = 128,
    power_iters: int = 2,
    oversample: int = 8,
) -> tuple[Tensor, Tensor, Tensor]:
    """The top ``rank`` singular triplets (U, S, V) of a 2-D matrix, V's columns right vectors.

    Exact (``torch.linalg.svd``, thin) when min(m, n) ≤ ``full_svd_max_dim`` or the rank asked
    is close to full; otherwise a randomized range finder (Halko et al.) whose Gaussian test
    matrix is drawn from ``generator`` on the CPU, so the result is deterministic.
    """
    import torch

    m, n = matrix.shape
    full = min(m, n)
    rank = min(rank, full)
    if full <= full_svd_max_dim or rank + oversample >= full:
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        return u[:, :rank], s[:rank], vh[:rank].mT
    width = rank + oversample
    test = torch.randn(n, width, generator=generator, dtype=matrix.dtype).to(matrix.device)
    q, _ = torch.linalg.qr(matrix @ test)
    for _ in range(power_iters):
        q, _ = torch.linalg.qr(matrix.mT @ q)
        q, _ = torch.linalg.qr(matrix @ q)
    ub, s, vh = torch.linalg.svd(q.mT @ matrix, full_matrices=False)
    return (q @ ub)[:, :rank], s[:rank], vh[:rank].mT


def _nonzero_count(s: Tensor, shape: tuple[int, ...]) -> int:
    """How many singular values are numerically non-zero (the ``matrix_rank`` tolerance)."""
    if s.numel() == 0:
        return 0
    import torch

    tol = float(s[0]) * max(shape) * torch.finfo(s.dtype).eps
    return int((s > tol).sum())


def split_rank(s: Tensor, total_energy: float, alpha: float) -> int:
    """The fewest leading singular values whose squares reach ``alpha``·``total_energy``.

    Capped at ``len(s)`` (a truncated SVD may not reach the fraction); at least 1 if any.
    """
    import torch

    if s.numel() == 0 or total_energy <= 0:
        return 0
    cumulative = torch.cumsum(s.double() ** 2, 0) / total_energy
    reached = cumulative >= alpha * (1 - 1e-9)
    return int(reached.to(torch.int8).argmax()) + 1 if bool(reached.any()) else int(s.numel())


def project_out(
    task: Tensor, merged: Tensor, generator: torch.Generator, options: OpcmOptions
) -> Tensor:
    """P(τ): ``task`` less its components on ``merged``'s dominant block and diagonal."""
    import torch

    small = min(merged.shape) <= options.full_svd_max_dim
    u, s, v = top_singular(
        merged,
        min(merged.shape) if small else options.max_rank,
        generator,
        full_svd_max_dim=options.full_svd_max_dim,
        power_iters=options.power_iters,
    )
    r = _nonzero_count(s, tuple(merged.shape))
    if r == 0:
        return task.clone()
    u, s, v = u[:, :r], s[:r], v[:, :r]
    k = split_rank(s, float(torch.linalg.vector_norm(merged)) ** 2, options.alpha)
    coeffs = (u.mT @ task) @ v  # r × r
    keep = torch.zeros_like(coeffs, dtype=torch.bool)
    keep[:k, :k] = True
    if options.zero_diagonal:
        keep.fill_diagonal_(True)
    removed = torch.where(keep, coeffs, torch.zeros_like(coeffs))
    return torch.addmm(task, u @ removed, v.mT, alpha=-1)


def merge_opcm(
    base: Tensor,
    deltas: list[Tensor],
    weights: list[float],
    ctx: TensorContext,
    options: OpcmOptions,
) -> Tensor:
    """OPCM's merged task vector for one tensor (float32, ``base``'s shape)."""
    import torch

    from audit.merging.base import tensor_generator

    norm = normalized_weights(weights, len(deltas))
    for delta in deltas:
        if delta.shape != base.shape:
            raise ValueError(f"{ctx.name}: delta shape {tuple(delta.shape)} != {base.shape}")
    if base.dim() < 2:
        return weighted_average([d.float() for d in deltas], weights)

    generator = tensor_generator(ctx)
    merged: Tensor | None = None  # M_t
    lam = 0.0  # λ_t
    norm_sum = 0.0  # Σ w_i ‖τ_i‖ over contributors so far
    weight_sum = 0.0
    for delta, w in zip(deltas, norm, strict=True):
        if w == 0:
            continue
        task = delta.float().reshape(delta.shape[0], -1)
        norm_sum += w * float(torch.linalg.vector_norm(task))
        weight_sum += w
        target = norm_sum / weight_sum
        if merged is None:
            running = task * w
        else:
            running = project_out(task, merged, generator, options).mul_(w)
            running.add_(merged, alpha=lam)
        running_norm = float(torch.linalg.vector_norm(running))
        if running_norm == 0 or target == 0:
            merged, lam = running.zero_(), 0.0
            continue
        lam = running_norm / target
        merged = running.div_(lam)
    assert merged is not None  # some weight is positive
    return merged.reshape(base.shape).to(torch.float32)
