"""DOGE: the task-aware start, the surrogate's descent, the shared subspace and the 1-D average."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from audit.merging.base import TensorContext, tensor_generator
from audit.merging.doge import DogeOptions, doge_matrix, merge_doge

CTX = TensorContext(name="model.layers.0.mlp.up_proj.weight", seed=0, index=0)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _related_tasks(m: int = 40, n: int = 30, count: int = 3) -> list[torch.Tensor]:
    """Task vectors sharing a rank-4 component, each with its own rank-4 part and noise."""
    shared = _rand(m, 4, seed=100) @ _rand(4, n, seed=101)
    return [
        0.5 * shared
        + _rand(m, 4, seed=2 * i) @ _rand(4, n, seed=2 * i + 1)
        + 0.1 * _rand(m, n, seed=50 + i)
        for i in range(count)
    ]


def _right_vectors(matrix: torch.Tensor, k: int) -> torch.Tensor:
    return torch.linalg.svd(matrix, full_matrices=False)[2][:k].mT


def _surrogate(merged: torch.Tensor, tasks: list[torch.Tensor], k: int) -> float:
    """Σ_i ‖(M − τ_i) V_i‖² with V_i the top-k right singular vectors of τ_i (uniform weights)."""
    return sum(float(((merged - t) @ _right_vectors(t, k)).pow(2).sum()) for t in tasks)


def test_options_defaults_and_validation() -> None:
    options = DogeOptions()
    assert (options.coefficient, options.adaptive_lambda) == (1.0, True)
    assert (options.task_rank_ratio, options.shared_rank_ratio) == (0.05, 0.05)
    assert (options.steps, options.lr, options.betas) == (50, 0.03, (0.9, 0.999))
    assert (options.max_rank, options.full_svd_max_dim, options.power_iters) == (64, 128, 2)
    with pytest.raises(ValidationError):
        DogeOptions(rank=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        DogeOptions(task_rank_ratio=0.0)


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 2), (7,), ()])
def test_shape_and_dtype_preserved(shape: tuple[int, ...]) -> None:
    base = torch.zeros(shape)
    deltas = [_rand(*shape, seed=i) for i in range(3)]
    out = merge_doge(base, deltas, [1.0, 1.0, 1.0], CTX, DogeOptions())
    assert out.shape == base.shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_single_contributor_is_coefficient_times_its_task_vector() -> None:
    delta = _rand(8, 6)
    out = merge_doge(torch.zeros(8, 6), [delta], [1.0], CTX, DogeOptions())
    torch.testing.assert_close(out, delta)  # τ_m = τ₁: the surrogate is already 0
    # With coefficient 0.5 the residual −0.5·τ₁V₁ lies in the shared subspace (the span of
    # τ₁'s own top vector), which Δ may not touch: the result stays 0.5·τ₁.
    half = merge_doge(torch.zeros(8, 6), [delta], [1.0], CTX, DogeOptions(coefficient=0.5))
    torch.testing.assert_close(half, 0.5 * delta)


def test_task_aware_coefficients() -> None:
    a = torch.zeros(4, 4)
    a[0, 0] = 1.0  # ‖a‖ = 1
    b = torch.zeros(4, 4)
    b[2, 3] = 3.0  # ‖b‖ = 3
    options = DogeOptions(steps=0)
    # mean norm 2: λ_a = 2/1, λ_b = 2/3, so τ_m = 2·a + (2/3)·b.
    out = merge_doge(torch.zeros(4, 4), [a, b], [1.0, 1.0], CTX, options)
    torch.testing.assert_close(out, 2 * a + (2 / 3) * b)
    plain = DogeOptions(steps=0, adaptive_lambda=False, coefficient=0.3)
    torch.testing.assert_close(
        merge_doge(torch.zeros(4, 4), [a, b], [1, 1], CTX, plain), 0.3 * (a + b)
    )
    # Weights multiply the coefficients, as in task arithmetic: λ_a = 0.5·2/1, λ_b = 3·2/3.
    out = merge_doge(torch.zeros(4, 4), [a, b], [0.5, 3.0], CTX, options)
    torch.testing.assert_close(out, a + 2 * b)


def test_orthogonal_task_vectors_give_task_arithmetic() -> None:
    # Row and column spaces disjoint: (Στ_j − τ_i)V_i = 0, the surrogate is 0 from the start.
    tau1 = torch.zeros(12, 10)
    tau1[:6, :5] = _rand(6, 5, seed=1)
    tau2 = torch.zeros(12, 10)
    tau2[6:, 5:] = _rand(6, 5, seed=2)
    tau2 *= tau1.norm() / tau2.norm()  # equal norms: the adaptive λ_i are all 1
    options = DogeOptions(task_rank_ratio=0.5)
    out = merge_doge(torch.zeros(12, 10), [tau1, tau2], [1.0, 1.0], CTX, options)
    torch.testing.assert_close(out, tau1 + tau2)
    # Unequal norms without the adaptive λ: still plain task arithmetic.
    plain = DogeOptions(task_rank_ratio=0.5, adaptive_lambda=False)
    out = merge_doge(torch.zeros(12, 10), [tau1, 3 * tau2], [1.0, 1.0], CTX, plain)
    torch.testing.assert_close(out, tau1 + 3 * tau2)


def test_orthogonal_with_small_coefficient_moves_towards_the_sum() -> None:
    # From τ_m = 0.5·(τ₁ + τ₂) the surrogate pulls each task back to scale 1 inside its own
    # subspace (outside the shared one): the result moves from τ_m towards τ₁ + τ₂, and only
    # along the tasks' top right singular vectors.
    tau1 = torch.zeros(40, 40)
    tau1[:20, :20] = _rand(20, 20, seed=3)
    tau2 = torch.zeros(40, 40)
    tau2[20:, 20:] = _rand(20, 20, seed=4)
    tau2 *= tau1.norm() / tau2.norm()
    options = DogeOptions(coefficient=0.5, task_rank_ratio=0.1)  # k = 4, shared 2
    tasks = [tau1, tau2]
    out, losses = doge_matrix(tasks, [1.0, 1.0], tensor_generator(CTX), options)
    total = tau1 + tau2
    assert float((out - total).norm()) < float((0.5 * total - total).norm())
    assert losses[-1] < 0.5 * losses[0]
    seen = torch.cat([_right_vectors(t, 4) for t in tasks], dim=1)
    change = out - 0.5 * total
    outside = change - (change @ seen) @ seen.mT
    assert float(outside.norm()) < 1e-4 * float(change.norm())


def test_loss_decreases() -> None:
    tasks = _related_tasks()
    options = DogeOptions(task_rank_ratio=0.2, shared_rank_ratio=0.1)  # k = 6, shared 3
    merged, losses = doge_matrix(tasks, [1.0, 1.0, 1.0], tensor_generator(CTX), options)
    assert len(losses) == options.steps + 1
    assert losses[-1] < 0.8 * losses[0]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(losses, losses[1:], strict=False))
    # The history is the surrogate itself: at the task-arithmetic start and at the result.
    norms = [float(t.norm()) for t in tasks]
    start = torch.zeros_like(tasks[0])
    for n, t in zip(norms, tasks, strict=True):
        start += (sum(norms) / 3 / n) * t
    assert math.isclose(losses[0], _surrogate(start, tasks, 6), rel_tol=1e-4)
    assert math.isclose(losses[-1], _surrogate(merged, tasks, 6), rel_tol=1e-4)
    # More steps go further; merge_doge returns the same tensor as doge_matrix.
    _, longer = doge_matrix(
        tasks, [1, 1, 1], tensor_generator(CTX), options.model_copy(update={"steps": 200})
    )
    assert longer[-1] < losses[-1]
    out = merge_doge(torch.zeros(40, 30), tasks, [1.0, 1.0, 1.0], CTX, options)
    torch.testing.assert_close(out, merged)


def test_shared_subspace_is_kept() -> None:
    tasks = _related_tasks()
    options = DogeOptions(task_rank_ratio=0.2, shared_rank_ratio=0.1)
    merged, _ = doge_matrix(tasks, [1.0, 1.0, 1.0], tensor_generator(CTX), options)
    start, _ = doge_matrix(
        tasks, [1.0, 1.0, 1.0], tensor_generator(CTX), options.model_copy(update={"steps": 0})
    )
    shared = _right_vectors(start, 3)
    change = merged - start
    assert change.norm() > 1e-3 * start.norm()
    assert float((change @ shared).norm()) < 1e-4 * float(change.norm())


def test_zero_weight_and_zero_vectors() -> None:
    a, b = _rand(8, 6, seed=1), _rand(8, 6, seed=2)
    out = merge_doge(torch.zeros(8, 6), [a, b], [1.0, 0.0], CTX, DogeOptions())
    torch.testing.assert_close(out, a)
    zero = torch.zeros(8, 6)
    torch.testing.assert_close(merge_doge(zero, [zero, zero], [1, 1], CTX, DogeOptions()), zero)
    with pytest.raises(ValueError, match="non-negative"):
        merge_doge(zero, [a, b], [1.0, -0.5], CTX, DogeOptions())


def test_one_dimensional_tensors_are_averaged() -> None:
    d1, d2 = _rand(7, seed=1), _rand(7, seed=2)
    out = merge_doge(torch.zeros(7), [d1, d2], [1.0, 3.0], CTX, DogeOptions())
    torch.testing.assert_close(out, (d1 + 3 * d2) / 4)


def test_deterministic_on_the_randomized_path() -> None:
    deltas = [_rand(300, 200, seed=i) for i in range(3)]
    base = torch.zeros(300, 200)
    first = merge_doge(base, deltas, [1.0, 1.0, 1.0], CTX, DogeOptions())
    second = merge_doge(base, deltas, [1.0, 1.0, 1.0], CTX, DogeOptions())
    assert torch.equal(first, second)
    _, losses = doge_matrix(
        [d.clone() for d in deltas], [1, 1, 1], tensor_generator(CTX), DogeOptions()
    )
    assert losses[-1] < losses[0]
