"""The peft merge methods against hand-computed results, and DARE's seeding."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any

import pytest

from audit.merging.base import TensorContext, derived_seed, tensor_generator
from audit.merging.tensor_methods import (
    PEFT_METHODS,
    dare_linear,
    dare_ties,
    magnitude_prune,
    task_arithmetic,
    ties,
)

CTX = TensorContext(name="layer.weight", seed=0, index=0)
D1 = [1.0, -2.0, 3.0, -4.0]
D2 = [-3.0, 1.0, 2.0, 0.5]
W = [1.0, 0.5]


def opts(density: float = 0.5, sign: str = "total") -> Any:
    return SimpleNamespace(density=density, majority_sign_method=sign)


def run(method: Any, deltas: list[list[float]], weights: list[float], options: Any) -> list[float]:
    import torch

    tensors = [torch.tensor(d) for d in deltas]
    out = method(torch.zeros(len(deltas[0])), tensors, weights, CTX, options)
    return [float(x) for x in out]


def test_task_arithmetic() -> None:
    # 1·d1 + 0.5·d2 = [1−1.5, −2+0.5, 3+1, −4+0.25]
    assert run(task_arithmetic, [D1, D2], W, opts()) == [-0.5, -1.5, 4.0, -3.75]


def test_magnitude_prune() -> None:
    # top 2 of |d1| → [0, 0, 3, −4]; top 2 of |d2| → [−3, 0, 2, 0]
    # 1·[0, 0, 3, −4] + 0.5·[−3, 0, 2, 0] = [−1.5, 0, 4, −4]
    assert run(magnitude_prune, [D1, D2], W, opts(0.5)) == [-1.5, 0.0, 4.0, -4.0]


def test_ties() -> None:
    # trimmed: p1 = [0, 0, 3, −4], p2 = [−3, 0, 2, 0]; Σ = [−3, 0, 5, −4] → signs [−, +, +, −]
    # agreeing: p1 at 2, 3; p2 at 0, 2 (zeros never agree)
    # weighted: p1 = [0, 0, 3, −4], 0.5·p2 = [−1.5, 0, 1, 0]
    # sums [−1.5, 0, 4, −4] / counts clamp([1, 0, 2, 1], 1) = [−1.5, 0, 2, −4]
    assert run(ties, [D1, D2], W, opts(0.5)) == [-1.5, 0.0, 2.0, -4.0]


def test_ties_sign_methods() -> None:
    # density 1 (no trim), deltas [5], [−1], [−1]:
    # total: Σ = 3 ≥ 0 → + → only 5 agrees → 5 / 1 = 5
    # frequency: Σ signs = −1 → − → (−1 − 1) / 2 = −1
    three = [[5.0], [-1.0], [-1.0]]
    assert run(ties, three, [1.0, 1.0, 1.0], opts(1.0, "total")) == [5.0]
    assert run(ties, three, [1.0, 1.0, 1.0], opts(1.0, "frequency")) == [-1.0]


def test_dare_at_density_one_is_exact() -> None:
    # nothing dropped, rescale by 1/1: dare_linear = task arithmetic
    assert run(dare_linear, [D1, D2], W, opts(1.0)) == [-0.5, -1.5, 4.0, -3.75]
    # dare_ties = TIES without trim: Σ = [−2, −1, 5, −3.5] → signs [−, −, +, −]
    # agreeing: d1 at 1, 2, 3; d2 at 0, 2; weighted d1 = [1, −2, 3, −4], 0.5·d2 = [−1.5, .5, 1, .25]
    # sums [−1.5, −2, 4, −4] / counts [1, 1, 2, 1] = [−1.5, −2, 2, −4]
    assert run(dare_ties, [D1, D2], W, opts(1.0)) == [-1.5, -2.0, 2.0, -4.0]


def test_dare_drops_and_rescales() -> None:
    # one contributor, weight 1, density 0.5: every entry is 0 or 2·d
    import torch

    d = torch.arange(1, 1001, dtype=torch.float32)
    out = dare_linear(torch.zeros(1000), [d], [1.0], CTX, opts(0.5))
    kept = out != 0
    assert torch.equal(out[kept], 2 * d[kept])
    assert 400 < int(kept.sum()) < 600


def test_dare_is_seeded_and_leaves_caller_rng_alone() -> None:
    import torch

    d = [torch.randn(1000), torch.randn(1000)]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = dare_ties(torch.zeros(1000), d, [1.0, 1.0], CTX, opts(0.5))
    b = dare_ties(torch.zeros(1000), d, [1.0, 1.0], CTX, opts(0.5))
    assert torch.equal(torch.get_rng_state(), before)
    other = TensorContext(name=CTX.name, seed=1, index=0)
    c = dare_ties(torch.zeros(1000), d, [1.0, 1.0], other, opts(0.5))
    renamed = TensorContext(name="other.weight", seed=0, index=0)
    e = dare_linear(torch.zeros(1000), d, [1.0, 1.0], renamed, opts(0.5))
    f = dare_linear(torch.zeros(1000), d, [1.0, 1.0], CTX, opts(0.5))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(e, f)


def test_derived_seed_and_generator_are_stable() -> None:
    import torch

    digest = hashlib.sha256(b"0\0layer.weight").digest()
    assert derived_seed(CTX) == int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)
    x = torch.rand(3, generator=tensor_generator(CTX))
    y = torch.rand(3, generator=tensor_generator(CTX))
    assert torch.equal(x, y)


def test_weights_must_match() -> None:
    with pytest.raises(ValueError, match="weights"):
        run(task_arithmetic, [D1, D2], [1.0], opts())


def test_registry_of_methods() -> None:
    assert set(PEFT_METHODS) == {
        "task_arithmetic",
        "ties",
        "dare_linear",
        "dare_ties",
        "magnitude_prune",
    }
