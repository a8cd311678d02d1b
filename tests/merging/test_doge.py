"""DOGE: options, shapes, weights, the tensors it leaves alone, the descent (arithmetic itself:
see test_doge_reference.py, the golden test against the authors' code)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from audit.merging.base import TensorContext
from audit.merging.doge import DogeOptions, doge_matrix, merge_doge, shared_subspace, top_k_mask

CTX = TensorContext(name="model.layers.0.mlp.up_proj.weight", seed=0, index=0)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_options_defaults_are_the_reference_yaml_and_loop() -> None:
    options = DogeOptions()
    # doge_ta.yaml: subspace 6, K 30, lamda 0.07; optimize_delta: Adam lr 1e-4, 400 steps.
    assert (options.subspace, options.top_k, options.lamda) == (6, 30.0, 0.07)
    assert (options.lr, options.steps, options.other_tensors) == (1e-4, 400, "base")
    with pytest.raises(ValidationError):
        DogeOptions(rank=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        DogeOptions(top_k=0)
    with pytest.raises(ValidationError):
        DogeOptions(top_k=101)
    with pytest.raises(ValidationError):
        DogeOptions(subspace=0)


@pytest.mark.parametrize("shape", [(6, 5), (1, 7), (4, 3, 2), (7,), ()])
def test_shape_and_dtype_preserved(shape: tuple[int, ...]) -> None:
    base = torch.zeros(shape)
    deltas = [_rand(*shape, seed=i) for i in range(3)]
    for other in ("base", "average"):
        options = DogeOptions(steps=20, other_tensors=other)
        out = merge_doge(base, deltas, [1.0, 1.0, 1.0], CTX, options)
        assert out.shape == base.shape
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()


def test_tensors_that_are_not_2d_keep_the_base_or_are_averaged() -> None:
    d1, d2 = _rand(7, seed=1), _rand(7, seed=2)
    out = merge_doge(torch.zeros(7), [d1, d2], [1.0, 3.0], CTX, DogeOptions())
    assert torch.equal(out, torch.zeros(7))  # the reference leaves them pretrained
    average = DogeOptions(other_tensors="average")
    out = merge_doge(torch.zeros(7), [d1, d2], [1.0, 3.0], CTX, average)
    torch.testing.assert_close(out, (d1 + 3 * d2) / 4)
    conv = [_rand(4, 3, 2, seed=i) for i in range(2)]
    assert torch.equal(
        merge_doge(torch.zeros(4, 3, 2), conv, [1, 1], CTX, DogeOptions()), 0 * conv[0]
    )


def test_start_is_lamda_over_norm_times_weight() -> None:
    a, b = _rand(8, 6, seed=1), 3 * _rand(8, 6, seed=2)
    options = DogeOptions(steps=0, top_k=100)
    out = merge_doge(torch.zeros(8, 6), [a, b], [0.5, 3.0], CTX, options)
    torch.testing.assert_close(out, 0.07 * (0.5 * a / a.norm() + 3.0 * b / b.norm()))


def test_zero_weight_and_zero_vectors_are_left_out() -> None:
    a, b = _rand(8, 6, seed=1), _rand(8, 6, seed=2)
    zero = torch.zeros(8, 6)
    alone = merge_doge(zero, [a], [1.0], CTX, DogeOptions(steps=30))
    torch.testing.assert_close(
        merge_doge(zero, [a, b], [1.0, 0.0], CTX, DogeOptions(steps=30)), alone
    )
    torch.testing.assert_close(
        merge_doge(zero, [a, zero], [1, 1], CTX, DogeOptions(steps=30)), alone
    )
    torch.testing.assert_close(merge_doge(zero, [zero, zero], [1, 1], CTX, DogeOptions()), zero)
    with pytest.raises(ValueError, match="non-negative"):
        merge_doge(zero, [a, b], [1.0, -0.5], CTX, DogeOptions())
    with pytest.raises(ValueError, match="delta shape"):
        merge_doge(zero, [a, _rand(6, 8)], [1.0, 1.0], CTX, DogeOptions())


def test_top_k_mask() -> None:
    task = torch.arange(1.0, 21.0).reshape(4, 5) * torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    mask = top_k_mask(task, 30)  # d = 20: |τ| ≥ the 14th smallest, 7 entries
    assert torch.equal(mask, task.abs() >= 14)
    assert bool(top_k_mask(task, 100).all())
    ties = torch.ones(3, 3)
    assert bool(top_k_mask(ties, 30).all())  # ties at the threshold are kept


def test_shared_subspace_is_on_the_output_side() -> None:
    tasks = [_rand(12, 30, seed=i) for i in range(2)]  # min 12: 6 vectors each, 2 shared
    basis = shared_subspace(tasks, 6)
    assert basis is not None
    assert basis.shape == (12, 2)
    torch.testing.assert_close(basis.mT @ basis, torch.eye(2), atol=1e-5, rtol=0)
    assert shared_subspace([_rand(5, 9, seed=0)], 6) is None  # ⌊5/6⌋ = 0


def test_surrogate_decreases_and_the_merge_is_deterministic() -> None:
    shared = _rand(40, 4, seed=100) @ _rand(4, 30, seed=101)
    tasks = [shared + 0.3 * _rand(40, 30, seed=i) for i in range(3)]
    options = DogeOptions(lr=1e-3, steps=100)
    merged, losses = doge_matrix(tasks, [1.0, 1.0, 1.0], options, track_loss=True)
    assert len(losses) == options.steps + 1
    # L is dominated by Σ_j Σ_r ‖τ_j[r]‖⁴ (M = S + cΔ is small, c = Σλ_i): a small decrease.
    assert losses[-1] < losses[0] - 10
    assert all(b < a for a, b in zip(losses[:10], losses[1:11], strict=True))
    again, quiet = doge_matrix(tasks, [1.0, 1.0, 1.0], options)
    assert quiet == []
    assert torch.equal(merged, again)
    out = merge_doge(torch.zeros(40, 30), tasks, [1.0, 1.0, 1.0], CTX, options)
    assert torch.equal(out, merged)
    # The seed is not used: the result does not depend on the tensor's context.
    other = TensorContext(name="other", seed=7, index=3)
    assert torch.equal(merge_doge(torch.zeros(40, 30), tasks, [1, 1, 1], other, options), out)
