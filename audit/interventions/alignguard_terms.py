"""The AlignGuard-LoRA regularisers on one module's update ΔW, as plain tensor functions.

Reconstructed from arXiv 2508.02079 (AlignGuard-LoRA, Das et al. 2025); see
:mod:`audit.interventions.alignguard` for the method, its defaults and what had to be adapted.
Every function takes and returns torch tensors and is differentiable in ``delta``.
:func:`critical_masks` selects the critical coordinates of several modules at once (one
ranking across all of them), :func:`critical_mask` those of one module.
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


def critical_masks(
    fisher_diags: list[torch.Tensor], fraction: float, *, soft: bool = False
) -> list[torch.Tensor]:
    """:func:`critical_mask` over several modules ranked together, one mask per module.

    The top ``fraction`` of *all* coordinates (hard), or ``F / (F + F_k)`` with ``F_k`` the
    k-th largest over all modules (soft): a module whose Fisher is larger than another's gets
    more critical coordinates, possibly all or none. ``fisher_diags`` must share one scale
    (e.g. a global normalisation) for the ranking to mean anything.
    """
    import torch

    if not fisher_diags:
        return []
    flat = torch.cat([d.reshape(-1) for d in fisher_diags])
    joint = critical_mask(flat, fraction, soft=soft)
    parts = torch.split(joint, [d.numel() for d in fisher_diags])
    return [part.reshape(d.shape) for part, d in zip(parts, fisher_diags, strict=True)]


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


def eta_scale(delta: torch.Tensor, scale: float | str = "rms") -> torch.Tensor:
    """The unit s of the curvature gate: ``RMS(ΔW)`` of this module (``"rms"``) or a number.

    The RMS is a statistic of the current update treated as a constant (no gradient flows
    through it) and is at least the smallest positive float, so ΔW = 0 gives a finite gate.
    """
    import torch

    if scale == "rms":
        rms = delta.detach().float().square().mean().sqrt()
        return rms.clamp_min(torch.finfo(torch.float32).tiny).to(delta.dtype)
    if isinstance(scale, str) or not scale > 0:
        raise ValueError(f"eta scale must be 'rms' or a positive number, got {scale!r}")
    return torch.tensor(float(scale), dtype=delta.dtype, device=delta.device)


def eta(delta: torch.Tensor, beta: float, tau: float, scale: float | str = "rms") -> torch.Tensor:
    """η_j = 1 + β σ((|ΔW_j| − τ s) / s) = 1 + β σ(|ΔW_j|/s − τ), s from :func:`eta_scale`.

    ``scale = 1`` is the paper's η = 1 + β σ(|ΔW_j| − τ) literally. With ``"rms"`` (the
    intervention's default) τ is measured in RMS units of the module's own update, so the gate
    separates the coordinates that move more than typical from the rest whatever the model,
    learning rate or step: η runs from about 1 + β σ(−τ) (still coordinates) to 1 + β
    (coordinates moving several RMS).
    """
    import torch

    s = eta_scale(delta, scale)
    return 1.0 + beta * torch.sigmoid(delta.abs() / s - tau)


def riemannian_overlap(
    critical: torch.Tensor,
    task: torch.Tensor,
    delta: torch.Tensor,
    beta: float,
    tau: float,
    scale: float | str = 1.0,
) -> torch.Tensor:
    """C_rm = mean_j η_j |Δ_A,j Δ_T,j| with η from :func:`eta` (``scale = 1``: the paper's)."""
    return (eta(delta, beta, tau, scale) * (critical * task).abs()).mean()


def geodesic_overlap(critical: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
    """C_geo = ⟨Δ_A, Δ_T⟩² / (‖Δ_A‖² ‖Δ_T‖² + ε): the squared cosine between the two parts."""
    inner = (critical * task).sum()
    return inner**2 / ((critical**2).sum() * (task**2).sum() + GEODESIC_EPS)
