"""OPCM: the orthogonal projection, the adaptive scaling, the order, the options.

The golden comparison with the authors' code is ``test_opcm_reference.py``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from pydantic import ValidationError

from audit.merging.base import TensorContext, tensor_generator
from audit.merging.opcm import OpcmOptions, merge_opcm, project_out, split_rank, top_singular

CTX = TensorContext(name="model.layers.0.self_attn.q_proj.weight", seed=0, index=0)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _reference_projection(task: torch.Tensor, merged: torch.Tensor, alpha: float) -> torch.Tensor:
    """P(τ) from a complete SVD basis: zero C[:k, :k] and C's diagonal, C = Uᵀ τ V.

    k = argmax(cumsum(s) / Σs > α), the reference's split rank (unsquared, no +1).
    """
    u, s, vh = torch.linalg.svd(merged.double(), full_matrices=True)
    k = int(((torch.cumsum(s, 0) / s.sum()) > alpha).double().argmax())
    coeffs = u.mT @ task.double() @ vh.mT
    keep = torch.zeros_like(coeffs, dtype=torch.bool)
    keep[:k, :k] = True
    keep.fill_diagonal_(True)
    return (u @ torch.where(keep, torch.zeros_like(coeffs), coeffs) @ vh).float()


def test_options_defaults_and_validation() -> None:
    options = OpcmOptions()
    assert options.alpha == 0.5
    assert options.zero_diagonal is True
    assert options.zero_null_diagonal is True
    assert (options.spectrum, options.project, options.others) == (
        "singular_values",
        "linear",
        "scaled_sum",
    )
    assert (options.svd, options.shuffle_order, options.project_lm_head) == ("exact", False, True)
    assert (options.max_rank, options.full_svd_max_dim, options.power_iters) == (64, 128, 2)
    with pytest.raises(ValidationError):
        OpcmOptions(gamma=1.0)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        OpcmOptions(alpha=0.0)


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 2), (7,), ()])
def test_shape_and_dtype_preserved(shape: tuple[int, ...]) -> None:
    base = torch.zeros(shape)
    deltas = [_rand(*shape, seed=i) for i in range(3)]
    out = merge_opcm(base, deltas, [1.0, 1.0, 1.0], CTX, OpcmOptions())
    assert out.shape == base.shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_single_contributor_is_its_own_task_vector() -> None:
    delta = _rand(6, 5)
    for weight in (1.0, 0.3):
        out = merge_opcm(torch.zeros(6, 5), [delta], [weight], CTX, OpcmOptions())
        torch.testing.assert_close(out, delta)  # M₁ = τ₁, λ₁ = w₁·‖τ₁‖/‖τ₁‖


def test_orthogonal_subspaces_pass_untouched_without_null_diagonal() -> None:
    # τ₁ lives in rows/cols {0, 1}, τ₂ in rows/cols {2, 3}: Uᵀ τ₂ = 0, so P(τ₂) = τ₂ once the
    # null directions of τ₁ (arbitrary: the reference zeroes their diagonal too) are left alone.
    options = OpcmOptions(zero_null_diagonal=False)
    tau1 = torch.zeros(4, 4)
    tau1[0, 0], tau1[1, 1] = 3.0, 4.0  # ‖τ₁‖ = 5 (rank 2)
    tau2 = torch.zeros(4, 4)
    tau2[2, 3] = 5.0  # ‖τ₂‖ = 5
    projected = project_out(tau2, tau1, tensor_generator(CTX), options)
    torch.testing.assert_close(projected, tau2)
    # S = τ₁ + τ₂, ‖S‖ = √50, mean norm 5, so λ₂ = √2 and M₂ = (τ₁ + τ₂) / √2.
    out = merge_opcm(torch.zeros(4, 4), [tau1, tau2], [1.0, 1.0], CTX, options)
    expected = torch.zeros(4, 4)
    expected[0, 0], expected[1, 1], expected[2, 3] = 3.0, 4.0, 5.0
    torch.testing.assert_close(out, expected / math.sqrt(2))


def test_identical_task_vectors_are_removed() -> None:
    tau = _rand(6, 5)
    projected = project_out(tau, tau, tensor_generator(CTX), OpcmOptions())
    assert projected.norm() < 1e-5 * tau.norm()  # the block and the diagonal hold all of τ
    out = merge_opcm(torch.zeros(6, 5), [tau, tau.clone()], [1.0, 1.0], CTX, OpcmOptions())
    torch.testing.assert_close(out, tau)  # S = τ, λ = ‖τ‖ / ‖τ‖ = 1


def test_identical_low_rank_removed_on_randomized_path() -> None:
    # 300 × 200 > full_svd_max_dim: the randomized SVD finds the rank-10 subspace exactly.
    tau = _rand(300, 10, seed=1) @ _rand(10, 200, seed=2)
    options = OpcmOptions(svd="randomized")
    projected = project_out(tau, tau, tensor_generator(CTX), options)
    assert projected.norm() < 1e-4 * tau.norm()


def test_without_diagonal_only_the_dominant_block_goes() -> None:
    tau = _rand(6, 5)
    u, s, vh = torch.linalg.svd(tau, full_matrices=False)
    k = split_rank(s, 0.5)
    projected = project_out(tau, tau, tensor_generator(CTX), OpcmOptions(zero_diagonal=False))
    torch.testing.assert_close(projected, (u[:, k:] * s[k:]) @ vh[k:], atol=1e-5, rtol=1e-5)


def test_projection_matches_a_complete_basis() -> None:
    merged, task = _rand(6, 5, seed=3), _rand(6, 5, seed=4)  # 6 × 5: U's thin basis is 6 × 5
    projected = project_out(task, merged, tensor_generator(CTX), OpcmOptions())
    torch.testing.assert_close(projected, _reference_projection(task, merged, 0.5))


def test_split_rank() -> None:
    s = torch.tensor([3.0, 2.0, 1.5, 1.0, 0.5])  # shares .375, .625, .8125, .9375, 1
    assert split_rank(s, 0.5) == 1
    assert split_rank(s, 0.7) == 2
    assert split_rank(s, 1.0) == 0  # no share exceeds 1: argmax of all-False
    # squared: 9, 4, 2.25, 1, .25 of 16.5 → shares .545, .788, ...
    assert split_rank(s, 0.5, squared=True) == 0
    assert split_rank(s, 0.6, squared=True) == 1
    assert split_rank(s[:2], 0.9, squared=True, total=16.5) == 0  # truncated: none exceeds


def test_merge_follows_the_listed_order() -> None:
    a, b = _rand(6, 5, seed=5), _rand(6, 5, seed=6)
    options = OpcmOptions()
    ab = merge_opcm(torch.zeros(6, 5), [a, b], [1.0, 1.0], CTX, options)
    ba = merge_opcm(torch.zeros(6, 5), [b, a], [1.0, 1.0], CTX, options)
    assert not torch.allclose(ab, ba, atol=1e-3)
    running = a + _reference_projection(b, a, 0.5)
    expected = running * ((a.norm() + b.norm()) / 2 / running.norm())
    torch.testing.assert_close(ab, expected)
    assert math.isclose(float(ab.norm()), float(a.norm() + b.norm()) / 2, rel_tol=1e-5)


def test_three_contributors_recurrence() -> None:
    taus = [_rand(6, 5, seed=10 + i) for i in range(3)]
    out = merge_opcm(torch.zeros(6, 5), taus, [1.0, 1.0, 1.0], CTX, OpcmOptions())
    s2 = taus[0] + _reference_projection(taus[1], taus[0], 0.5)
    m2 = s2 / (s2.norm() / ((taus[0].norm() + taus[1].norm()) / 2))
    s3 = s2 + _reference_projection(taus[2], m2, 0.5)
    mean3 = sum(float(t.norm()) for t in taus) / 3
    torch.testing.assert_close(out, s3 * (mean3 / s3.norm()), atol=1e-5, rtol=1e-4)


def test_weights() -> None:
    a, b = _rand(6, 5, seed=7), _rand(6, 5, seed=8)
    options = OpcmOptions()
    scaled = merge_opcm(torch.zeros(6, 5), [a, b], [2.0, 2.0], CTX, options)
    torch.testing.assert_close(scaled, merge_opcm(torch.zeros(6, 5), [a, b], [1, 1], CTX, options))
    skipped = merge_opcm(torch.zeros(6, 5), [a, b], [0.0, 1.0], CTX, options)
    torch.testing.assert_close(skipped, b)
    running = a + 3 * _reference_projection(b, a, 0.5)
    target = (a.norm() + 3 * b.norm()) / 4
    weighted = merge_opcm(torch.zeros(6, 5), [a, b], [1.0, 3.0], CTX, options)
    torch.testing.assert_close(weighted, running * (target / running.norm()))
    with pytest.raises(ValueError, match="non-negative"):
        merge_opcm(torch.zeros(6, 5), [a, b], [1.0, -1.0], CTX, options)
    with pytest.raises(ValueError, match="weights for"):
        merge_opcm(torch.zeros(6, 5), [a, b], [1.0], CTX, options)


def test_zero_task_vectors() -> None:
    a = _rand(6, 5)
    zero = torch.zeros(6, 5)
    torch.testing.assert_close(merge_opcm(zero, [zero, zero], [1, 1], CTX, OpcmOptions()), zero)
    # M₁ = 0: every direction is null; the reference zeroes τ₂'s diagonal in whatever basis the
    # SVD of 0 returns, so only the norm is pinned; without the null diagonal P(τ₂) = τ₂.
    out = merge_opcm(zero, [zero, a], [1.0, 1.0], CTX, OpcmOptions())
    assert math.isclose(float(out.norm()), float(a.norm()) / 2, rel_tol=1e-5)
    out = merge_opcm(zero, [zero, a], [1.0, 1.0], CTX, OpcmOptions(zero_null_diagonal=False))
    torch.testing.assert_close(out, a / 2)  # S = τ₂, target mean norm ‖τ₂‖ / 2


def test_one_dimensional_tensors_are_summed_and_rescaled() -> None:
    d1, d2 = _rand(7, seed=1), _rand(7, seed=2)
    out = merge_opcm(torch.zeros(7), [d1, d2], [1.0, 3.0], CTX, OpcmOptions())
    running = d1 + 3 * d2  # not projected; rescaled to the weighted mean norm
    target = (d1.norm() + 3 * d2.norm()) / 4
    torch.testing.assert_close(out, running * (target / running.norm()))
    averaged = merge_opcm(torch.zeros(7), [d1, d2], [1.0, 3.0], CTX, OpcmOptions(others="average"))
    torch.testing.assert_close(averaged, (d1 + 3 * d2) / 4)


def test_shuffle_order_is_one_permutation_from_the_seed() -> None:
    deltas = [_rand(6, 5, seed=30 + i) for i in range(4)]
    options = OpcmOptions(shuffle_order=True)
    out = merge_opcm(torch.zeros(6, 5), deltas, [1.0] * 4, CTX, options)
    other = TensorContext(name="model.layers.1.mlp.down_proj.weight", seed=0, index=5)
    permutations = []
    for order in itertools.permutations(range(4)):
        listed = merge_opcm(
            torch.zeros(6, 5), [deltas[i] for i in order], [1.0] * 4, CTX, OpcmOptions()
        )
        if torch.allclose(listed, out, atol=1e-6):
            permutations.append(order)
    assert len(permutations) == 1  # one order, the same for a tensor of another name
    again = merge_opcm(torch.zeros(6, 5), deltas, [1.0] * 4, other, options)
    listed = [deltas[i] for i in permutations[0]]
    torch.testing.assert_close(
        again, merge_opcm(torch.zeros(6, 5), listed, [1.0] * 4, other, OpcmOptions())
    )


def test_deterministic_on_the_randomized_path() -> None:
    deltas = [_rand(200, 150, seed=i) for i in range(3)]
    base = torch.zeros(200, 150)
    options = OpcmOptions(svd="randomized")
    first = merge_opcm(base, deltas, [1.0, 1.0, 1.0], CTX, options)
    second = merge_opcm(base, deltas, [1.0, 1.0, 1.0], CTX, options)
    assert torch.equal(first, second)
    assert math.isclose(float(first.norm()), sum(float(d.norm()) for d in deltas) / 3, rel_tol=1e-5)


def test_top_singular_randomized_matches_exact_on_low_rank() -> None:
    matrix = _rand(300, 8, seed=1) @ _rand(8, 260, seed=2)
    u, s, v = top_singular(matrix, 8, tensor_generator(CTX))
    exact = torch.linalg.svdvals(matrix)[:8]
    torch.testing.assert_close(s, exact, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close((u * s) @ v.mT, matrix, rtol=1e-4, atol=1e-3)
