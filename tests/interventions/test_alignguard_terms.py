"""The AlignGuard regularisers on 2×2 tensors, against values worked out by hand."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from audit.interventions.alignguard_terms import (  # noqa: E402
    alignment_penalty,
    critical_mask,
    geodesic_overlap,
    riemannian_overlap,
    split_update,
    task_penalty,
)

DELTA = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
FISHER = torch.tensor([[2.0, 1.0], [1.0, 4.0]])


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_hard_mask_keeps_the_top_fisher_coordinates() -> None:
    assert torch.equal(critical_mask(FISHER, 0.5), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert torch.equal(critical_mask(FISHER, 0.01), torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    assert torch.equal(critical_mask(FISHER, 1.0), torch.ones(2, 2))


def test_soft_mask_is_f_over_f_plus_fk() -> None:
    # k = 2: F_k = 2, so w = F / (F + 2).
    expected = torch.tensor([[0.5, 1 / 3], [1 / 3, 4 / 6]])
    assert torch.allclose(critical_mask(FISHER, 0.5, soft=True), expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mask": torch.tensor([[1.0, 0.0], [0.0, 1.0]])},
        {"mask": torch.tensor([[0.5, 0.25], [0.0, 1.0]])},
        {"eigvecs": torch.tensor([[0.6, 0.8, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])},
    ],
)
def test_split_reconstructs_delta_exactly(kwargs: dict[str, torch.Tensor]) -> None:
    generator = torch.Generator().manual_seed(0)
    for delta in (DELTA, torch.randn(2, 2, generator=generator) * 1e-3):
        critical, task = split_update(delta, **kwargs)
        if "mask" in kwargs:  # dyadic mask values: exact in floating point
            assert torch.equal(critical + task, delta)
        else:  # Δ_T = ΔW − Δ_A by construction; adding back rounds at most once
            assert torch.allclose(critical + task, delta, rtol=0, atol=4e-7 * delta.abs().max())


def test_hard_split_values_and_vanishing_collisions() -> None:
    critical, task = split_update(DELTA, mask=critical_mask(FISHER, 0.5))
    assert torch.equal(critical, torch.tensor([[1.0, 0.0], [0.0, 0.5]]))
    assert torch.equal(task, torch.tensor([[0.0, -2.0], [3.0, 0.0]]))
    # ‖F^½ Δ_A‖² = 2·1² + 4·0.5² = 3
    assert alignment_penalty(critical, fisher_diag=FISHER).item() == pytest.approx(3.0)
    # ‖Δ_T‖² = 4 + 9 = 13; with H = [[1, 2], [3, 1]]: 2·4 + 3·9 = 35
    assert task_penalty(task).item() == pytest.approx(13.0)
    h = torch.tensor([[1.0, 2.0], [3.0, 1.0]])
    assert task_penalty(task, h).item() == pytest.approx(35.0)
    # Disjoint supports: both collision terms are exactly zero under a 0/1 mask.
    assert riemannian_overlap(critical, task, DELTA, 4.0, 0.01).item() == 0.0
    assert geodesic_overlap(critical, task).item() == 0.0


def test_soft_split_collision_values() -> None:
    critical, task = split_update(DELTA, mask=torch.tensor([[0.5, 0.25], [0.0, 1.0]]))
    assert torch.allclose(critical, torch.tensor([[0.5, -0.5], [0.0, 0.5]]))
    assert torch.allclose(task, torch.tensor([[0.5, -1.5], [3.0, 0.0]]))
    # |Δ_A ⊙ Δ_T| = [[0.25, 0.75], [0, 0]]
    assert riemannian_overlap(critical, task, DELTA, 0.0, 0.01).item() == pytest.approx(0.25)
    eta = [1 + 4 * sigmoid(1.0 - 0.01), 1 + 4 * sigmoid(2.0 - 0.01)]
    expected = (eta[0] * 0.25 + eta[1] * 0.75) / 4
    assert riemannian_overlap(critical, task, DELTA, 4.0, 0.01).item() == pytest.approx(expected)
    # ⟨Δ_A, Δ_T⟩ = 1, ‖Δ_A‖² = 0.75, ‖Δ_T‖² = 11.5
    assert geodesic_overlap(critical, task).item() == pytest.approx(1 / (0.75 * 11.5))


def test_eigen_split_values() -> None:
    v = torch.tensor([[0.6, 0.8, 0.0, 0.0]])
    critical, task = split_update(DELTA, eigvecs=v)
    # v · vec(ΔW) = 0.6 − 1.6 = −1, so Δ_A = −v
    assert torch.allclose(critical, torch.tensor([[-0.6, -0.8], [0.0, 0.0]]))
    penalty = alignment_penalty(critical, eigvals=torch.tensor([2.0]), eigvecs=v)
    assert penalty.item() == pytest.approx(2.0)
    # An orthogonal projection: ⟨Δ_A, Δ_T⟩ = 0, so C_geo vanishes but C_rm does not.
    assert geodesic_overlap(critical, task).item() == pytest.approx(0.0, abs=1e-12)
    # |Δ_A ⊙ Δ_T| = |−0.6·1.6| + |−0.8·−1.2| = 1.92 over 4 coordinates
    assert riemannian_overlap(critical, task, DELTA, 0.0, 0.0).item() == pytest.approx(0.48)


def test_terms_are_zero_and_finite_at_the_adapter_start() -> None:
    zero = torch.zeros(2, 2, requires_grad=True)
    critical, task = split_update(zero, mask=critical_mask(FISHER, 0.5, soft=True))
    total = (
        alignment_penalty(critical, fisher_diag=FISHER)
        + task_penalty(task)
        + riemannian_overlap(critical, task, zero, 4.0, 0.01)
        + geodesic_overlap(critical, task)
    )
    total.backward()
    assert total.item() == 0.0
    assert zero.grad is not None and torch.equal(zero.grad, torch.zeros(2, 2))
