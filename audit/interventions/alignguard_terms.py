"""The AlignGuard-LoRA regularisers on one module's update ΔW, as plain tensor functions.

Reconstructed from arXiv 2508.02079 (AlignGuard-LoRA, Das et al. 2025); see
:mod:`audit.interventions.alignguard` for the method, its defaults and what had to be adapted.
Every function takes and returns torch tensors and is differentiable in ``delta``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

GEODESIC_EPS = 1e-12
"""ε in the geodesic overlap's denominator, so ΔW = 0 (the adapter's start) gives 0, not NaN."""


def critical_mask(
    fisher_diag: torch.Tensor, fraction: float, *, soft: bool = False
) -> torch.Tensor:
    """Weights in [0, 1] marking the alignment-critical coordinates of a module.

    Hard (default): 1 on the ``ceil(fraction * size)`` coordinates of largest diagonal Fisher,
    0 elsewhere. Soft: ``F / (F + F_k)`` with ``F_k`` the k-th largest value, so the top-k
    coordinates weigh at least 1/2 and every coordinate with non-zero Fisher a little.
    """
    import math

    import torch

    flat = fisher_diag.reshape(-1)
    k = max(1, min(flat.numel(), math.ceil(fraction * flat.numel())))
    values, index = torch.topk(flat, k)
    if soft:
        kth = values[-1]
        if float(kth) <= 0.0:
            kth = flat.max().clamp_min(torch.finfo(flat.dtype).tiny)
        return (fisher_diag / (fisher_diag + kth)).to(fisher_diag.dtype)
    mask = torch.zeros_like(flat)
    mask[index] = 1.0
    return mask.reshape(fisher_diag.shape)


def split_update(
    delta: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    eigvecs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Δ_A, Δ_T): the alignment-critical part of ``delta`` and the task part ``delta − Δ_A``.

    Δ_A is ``mask ⊙ delta`` or, with ``eigvecs`` (k × delta.numel(), orthonormal rows), the
    projection of ``vec(delta)`` on their span. Δ_A + Δ_T reconstructs ``delta`` exactly.
    """
    if eigvecs is not None:
        flat = delta.reshape(-1)
        critical = (eigvecs.T @ (eigvecs @ flat)).reshape(delta.shape)
    elif mask is not None:
        critical = mask * delta
    else:
        raise ValueError("split_update needs a mask or eigenvectors")
    return critical, delta - critical


def alignment_penalty(
    critical: torch.Tensor,
    *,
    fisher_diag: torch.Tensor | None = None,
    eigvals: torch.Tensor | None = None,
    eigvecs: torch.Tensor | None = None,
) -> torch.Tensor:
    """‖F^{1/2} Δ_A‖²: ``Σ_j F_j Δ_A,j²`` (diagonal F) or ``Σ_i λ_i (v_i · vec Δ_A)²`` (eigen)."""
    if eigvecs is not None and eigvals is not None:
        coefficients = eigvecs @ critical.reshape(-1)
        return (eigvals * coefficients**2).sum()
    if fisher_diag is None:
        raise ValueError("alignment_penalty needs a diagonal Fisher or eigenpairs")
    return (fisher_diag * critical**2).sum()


def task_penalty(task: torch.Tensor, h_diag: torch.Tensor | None = None) -> torch.Tensor:
    """‖H^{1/2} Δ_T‖²: ``Σ_j H_j Δ_T,j²``, with H = identity when ``h_diag`` is None."""
    squared = task**2
    return (squared if h_diag is None else h_diag * squared).sum()


def riemannian_overlap(
    critical: torch.Tensor, task: torch.Tensor, delta: torch.Tensor, beta: float, tau: float
) -> torch.Tensor:
    """C_rm = mean_j η_j |Δ_A,j Δ_T,j| with η_j = 1 + β σ(|ΔW_j| − τ)."""
    import torch

    eta = 1.0 + beta * torch.sigmoid(delta.abs() - tau)
    return (eta * (critical * task).abs()).mean()


def geodesic_overlap(critical: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
    """C_geo = ⟨Δ_A, Δ_T⟩² / (‖Δ_A‖² ‖Δ_T‖² + ε): the squared cosine between the two parts."""
    inner = (critical * task).sum()
    return inner**2 / ((critical**2).sum() * (task**2).sum() + GEODESIC_EPS)
