"""DOGE: data-free merging as adaptive projective gradient descent.

A reconstruction, from memory (the paper could not be consulted while writing this), of DOGE
from Wei et al., "Modeling Multi-Task Model Merging as Adaptive Projective Gradient Descent",
arXiv 2501.01230 (2025). For each 2-D weight (out × in) with task vectors τ_1..τ_n:

1. **Task-aware coefficients.** λ_i = ``coefficient`` · w_i · ν̄ / ‖τ_i‖, with w_i the
   contributor's weight and ν̄ = mean_j‖τ_j‖: every task enters the task-arithmetic start
   τ_m = Σ λ_i τ_i with the same norm (times its weight), so a large task vector does not
   drown a small one. With equal norms, τ_m = ``coefficient``·Σ w_i τ_i, the harness's task
   arithmetic.
2. **Data-free surrogate.** The gap between the merge M = τ_m + Δ and task i is measured in
   task i's own input subspace, the span of τ_i's top right singular vectors V_i (inputs of
   task i mostly excite the directions its fine-tuning changed):
   L(Δ) = Σ_i n·ŵ_i ‖(τ_m + Δ − τ_i) V_i‖², ŵ the weights normalised to sum 1.
3. **Projective descent.** The shared subspace is the span V_s of τ_m's top right singular
   vectors; Δ's gradient is projected onto its orthogonal complement, so Δ·V_s = 0 and the
   merge acts on the shared directions exactly as task arithmetic does.
4. ``steps`` Adam steps from Δ = 0; the result is τ_m + Δ.

Tensors with fewer than two dimensions (norms, biases) get the normalised weighted average
Σŵ_iδ_i of the deltas (2-D tensors start from the weighted sum instead, so the two are on
different scales); tensors with more are flattened to (shape[0], −1) and reshaped back. The
only randomness is the seeded randomized SVD of large matrices: the result is deterministic.

Defaults: ``coefficient`` = 1.0, ``adaptive_lambda`` = true, ``task_rank_ratio`` =
``shared_rank_ratio`` = 0.05 (fractions of min(m, n), at least 1, at most ``max_rank`` = 64),
``steps`` = 50, ``lr`` = 0.03 (relative, see below), Adam betas (0.9, 0.999), ε = 1e-8; exact
SVD when min(m, n) ≤ ``full_svd_max_dim`` = 128, else randomized with ``power_iters`` = 2.

Adaptations (the paper's exact choices were not available):

- **Which subspaces.** "Each task's subspace" is taken as the right (input-side) singular
  subspace of τ_i, and the shared subspace as that of the coefficient-weighted sum τ_m, with
  fixed rank ratios; the paper's rank rule and the side it projects on may differ.
- **Coefficient rule.** The inverse-norm balancing in step 1 is our reading of "task-aware λ
  from the task vectors' norms". ``coefficient`` defaults to 1, not the ~0.3 common for task
  arithmetic, because the surrogate's minimum restores each task at scale 1 in its subspace and
  the merge's own ``scaling`` stays the one global knob; ``adaptive_lambda = false`` gives
  plain λ_i = ``coefficient``·w_i.
- **Adam in subspace coordinates.** The loss depends on Δ only through Δ·V (V = [V_1 … V_n]),
  and the projected gradient's rows lie in span(P⊥V), P⊥ = I − V_s V_sᵀ. So Δ = Z·Bᵀ with B an
  orthonormal basis of span(P⊥V), and Adam runs on Z (m × ≤ n·k) in closed form instead of on
  the full m × n matrix. For gradient descent the two are identical; with Adam's per-coordinate
  scaling the full-matrix version would also move Δ along directions the loss cannot see.
  B is taken along the eigenvectors of the loss's curvature, so the quadratic separates and a
  step is element-wise on Z (Adam's result depends on this choice of coordinates).
- **Relative learning rate.** Adam's step is in the parameter's units; task-vector entries
  range from ~1e-5 to ~1e-2 across models, so the problem is divided by the RMS of the initial
  residual (τ_m − τ_i)V_i before optimising and ``lr`` is relative to that scale.
- **Weights.** w_i multiplies λ_i, as in task arithmetic (Σ w_i τ_i), and its normalised
  ŵ_i weighs task i's term in the loss; weight-0 and zero-norm contributors are left out of
  the 2-D merge. Weights must be ≥ 0, not all zero.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from audit.merging.opcm import normalized_weights, top_singular, weighted_average

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from audit.merging.base import TensorContext

__all__ = ["DogeOptions", "doge_matrix", "merge_doge"]


class DogeOptions(BaseModel):
    """DOGE's hyper-parameters (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    coefficient: float = Field(default=1.0, gt=0)
    """Global task-arithmetic coefficient of the starting point τ_m."""
    adaptive_lambda: bool = True
    """Balance the tasks' coefficients by their norms (else λ_i = coefficient·w_i)."""
    task_rank_ratio: float = Field(default=0.05, gt=0, le=1)
    """Rank of each task's subspace, as a fraction of min(m, n)."""
    shared_rank_ratio: float = Field(default=0.05, ge=0, le=1)
    """Rank of the shared subspace (kept fixed), as a fraction of min(m, n); 0 disables it."""
    steps: int = Field(default=50, ge=0)
    """Adam steps per tensor."""
    lr: float = Field(default=0.03, gt=0)
    """Adam learning rate, relative to the RMS of the initial residual."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam's moment decay rates."""
    max_rank: int = Field(default=64, gt=0)
    """Cap on every subspace's rank (and the randomized SVD's)."""
    full_svd_max_dim: int = Field(default=128, ge=0)
    """Exact SVD when min(m, n) ≤ this, randomized above."""
    power_iters: int = Field(default=2, ge=0)
    """Power iterations of the randomized SVD."""


def _rank(ratio: float, full: int, cap: int) -> int:
    """⌈ratio·full⌉ within [1, min(full, cap)] (0 when ratio is 0)."""
    if ratio == 0:
        return 0
    return max(1, min(math.ceil(ratio * full), cap, full))


def _right_vectors(
    matrix: Tensor, rank: int, generator: torch.Generator, options: DogeOptions
) -> Tensor:
    """The top ``rank`` right singular vectors of ``matrix`` with non-zero singular values."""
    import torch

    if rank == 0:
        return matrix.new_zeros(matrix.shape[1], 0)
    _, s, v = top_singular(
        matrix,
        rank,
        generator,
        full_svd_max_dim=options.full_svd_max_dim,
        power_iters=options.power_iters,
    )
    if s.numel() == 0:
        return v
    tol = float(s[0]) * max(matrix.shape) * torch.finfo(s.dtype).eps
    return v[:, s > tol]


def doge_matrix(
    tasks: list[Tensor],
    weights: list[float],
    generator: torch.Generator,
    options: DogeOptions,
    *,
    track_loss: bool = True,
) -> tuple[Tensor, list[float]]:
    """DOGE on 2-D task vectors: the merged task vector and the surrogate L at steps 0..steps.

    ``weights`` multiply the coefficients λ_i (see the module docstring). The losses are in
    the task vectors' units: L(0) is the surrogate at the task-arithmetic start τ_m, the last
    one at the returned merge; without ``track_loss`` only those two are computed.
    """
    import torch

    norm = normalized_weights(weights, len(tasks))
    norms = [float(torch.linalg.vector_norm(t)) for t in tasks]
    active = [i for i in range(len(tasks)) if norm[i] > 0 and norms[i] > 0]
    if not active:
        return torch.zeros_like(tasks[0]), [0.0] * (options.steps + 1 if track_loss else 2)
    total = sum(norm[i] for i in active)
    w = {i: norm[i] / total for i in active}
    count = len(active)
    mean_norm = sum(norms[i] for i in active) / count
    merged = torch.zeros_like(tasks[0])
    for i in active:
        lam = options.coefficient * weights[i]
        if options.adaptive_lambda:
            lam *= mean_norm / norms[i]
        merged.add_(tasks[i], alpha=lam)

    full = min(tasks[0].shape)
    k_task = _rank(options.task_rank_ratio, full, options.max_rank)
    k_shared = _rank(options.shared_rank_ratio, full, options.max_rank)
    bases = [_right_vectors(tasks[i], k_task, generator, options) for i in active]
    shared = _right_vectors(merged, k_shared, generator, options)
    v_all = torch.cat(bases, dim=1)  # n_in × K
    targets = torch.cat([tasks[i] @ b for i, b in zip(active, bases, strict=True)], dim=1)
    column_weight = torch.cat(
        [
            torch.full((b.shape[1],), math.sqrt(count * w[i]), dtype=v_all.dtype)
            for i, b in zip(active, bases, strict=True)
        ]
    ).to(v_all.device)
    residual0 = (merged @ v_all - targets) * column_weight  # m × K
    loss0 = float(residual0.double().pow(2).sum())
    scale = float(residual0.pow(2).mean().sqrt()) if residual0.numel() else 0.0
    flat = [loss0] * (options.steps + 1 if track_loss else 2)
    if options.steps == 0 or scale == 0:
        return merged, flat

    free = v_all - shared @ (shared.mT @ v_all)  # P⊥V
    free64 = free.double()
    gram_vals, gram_vecs = torch.linalg.eigh(free64.mT @ free64)
    kept = gram_vals > 1e-6  # singular values of P⊥V above 1e-3 (V's columns are unit)
    basis = ((free64 @ gram_vecs[:, kept]) / gram_vals[kept].sqrt()).to(free.dtype)  # n_in × K'
    if basis.shape[1] == 0:
        return merged, flat

    # L(Z) = ‖R0 + Z·G‖² in units of `scale` = c0 + 2⟨Z, A⟩ + ⟨Z·H, Z⟩, A = R0·Gᵀ, H = G·Gᵀ.
    # B is rotated onto H's eigenvectors, so H is diagonal and every step is element-wise.
    r0 = residual0 / scale
    g = (basis.mT @ v_all) * column_weight  # K' × K
    curvature, rotation = torch.linalg.eigh(g @ g.mT)
    basis = basis @ rotation
    a = (r0 @ g.mT) @ rotation  # m × K'
    curvature = curvature.clamp_min(0)
    c0 = float(r0.double().pow(2).sum())
    z = torch.zeros_like(a)
    m1 = torch.zeros_like(a)
    m2 = torch.zeros_like(a)
    beta1, beta2 = options.betas
    eps = 1e-8

    def loss() -> float:
        return (c0 + float((z * (2 * a + z * curvature)).sum())) * scale**2

    losses: list[float] = []
    for step in range(1, options.steps + 1):
        if track_loss or step == 1:
            losses.append(loss())
        grad = 2 * (a + z * curvature)
        m1.mul_(beta1).add_(grad, alpha=1 - beta1)
        m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (m2 / (1 - beta2**step)).sqrt_().add_(eps)
        z.addcdiv_(m1, denom, value=-options.lr / (1 - beta1**step))
    losses.append(loss())
    return merged + scale * (z @ basis.mT), losses


def merge_doge(
    base: Tensor,
    deltas: list[Tensor],
    weights: list[float],
    ctx: TensorContext,
    options: DogeOptions,
) -> Tensor:
    """DOGE's merged task vector for one tensor (float32, ``base``'s shape)."""
    import torch

    from audit.merging.base import tensor_generator

    normalized_weights(weights, len(deltas))
    for delta in deltas:
        if delta.shape != base.shape:
            raise ValueError(f"{ctx.name}: delta shape {tuple(delta.shape)} != {base.shape}")
    if base.dim() < 2:
        return weighted_average([d.float() for d in deltas], weights)
    tasks = [d.float().reshape(d.shape[0], -1) for d in deltas]
    merged, _ = doge_matrix(tasks, weights, tensor_generator(ctx), options, track_loss=False)
    return merged.reshape(base.shape).to(torch.float32)
