"""The five merge methods of peft as :class:`~audit.merging.base.TensorMethod` s.

Each one wraps the function of the same name in ``peft.utils.merge_utils`` (the math is
peft's, not rewritten here): the contributors' task vectors are stacked, ``weights`` becomes a
tensor, and the result is the merged task vector (the caller adds ``scaling · result`` to the
base). ``options`` is any object with ``density`` and ``majority_sign_method`` attributes (the
merge intervention's Params, or :class:`PeftOptions`); missing attributes take the defaults
below. Their names, papers and kind are in :data:`audit.merging.methods.METHODS`.

peft's TIES divides each entry by the *number* of contributors agreeing with the elected sign
(mergekit divides by the sum of their weights), so the two tools' TIES outputs differ by that
factor when weights are not all 1.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from audit.merging.base import TensorContext, TensorMethod, derived_seed
from audit.merging.methods import METHODS

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "PEFT_METHODS",
    "PeftOptions",
    "dare_linear",
    "dare_ties",
    "magnitude_prune",
    "task_arithmetic",
    "ties",
]


@dataclass(frozen=True)
class PeftOptions:
    """Options of the peft methods: the fraction of entries kept and the sign election rule."""

    density: float = 0.5
    majority_sign_method: Literal["total", "frequency"] = "total"


_DEFAULTS = PeftOptions()


def _density(options: Any) -> float:
    return float(getattr(options, "density", _DEFAULTS.density))


def _sign_method(options: Any) -> Literal["total", "frequency"]:
    method = getattr(options, "majority_sign_method", _DEFAULTS.majority_sign_method)
    if method not in ("total", "frequency"):
        raise ValueError(f"majority_sign_method must be 'total' or 'frequency', got {method!r}")
    return method


def _weights(weights: list[float], deltas: list[Tensor]) -> Tensor:
    import torch

    if len(weights) != len(deltas):
        raise ValueError(f"{len(deltas)} task vectors but {len(weights)} weights")
    return torch.tensor(weights, dtype=deltas[0].dtype, device=deltas[0].device)


def _quiet(call: Callable[[], Tensor]) -> Tensor:
    """Run a peft merge, silencing its per-tensor warning at density 1 (no pruning)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The density .* no pruning will be performed")
        return call()


def _seeded(ctx: TensorContext, device: Any, call: Callable[[], Tensor]) -> Tensor:
    """Run ``call`` with the global RNG seeded from ``(ctx.seed, ctx.name)``, then restore it.

    peft's ``random_pruning`` draws with ``torch.bernoulli`` on the global generator; forking it
    makes DARE reproducible per tensor and leaves the caller's random state untouched.
    """
    import torch

    seed = derived_seed(ctx)
    device = torch.device(device)
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return call()
    with torch.random.fork_rng(devices=[device], device_type=device.type):
        torch.default_generator.manual_seed(seed)
        getattr(torch, device.type).manual_seed(seed)
        return call()


def task_arithmetic(
    base: Tensor, deltas: list[Tensor], weights: list[float], ctx: TensorContext, options: Any
) -> Tensor:
    """Task arithmetic (Ilharco et al., arXiv 2212.04089): ``Σ_i w_i · δ_i``.

    No options; the merge's ``scaling`` (λ, default 1.0) multiplies the result.
    """
    from peft.utils import merge_utils

    return merge_utils.task_arithmetic(list(deltas), _weights(weights, deltas))


def ties(
    base: Tensor, deltas: list[Tensor], weights: list[float], ctx: TensorContext, options: Any
) -> Tensor:
    """TIES merging (Yadav et al., arXiv 2306.01708): trim, elect sign, disjoint mean.

    Each ``δ_i`` keeps its top ``density`` fraction by magnitude (default 0.5); the sign of
    ``Σ_i δ_i`` (``majority_sign_method = "total"``, default) or of the count of signs
    (``"frequency"``) is elected per entry; agreeing ``w_i · δ_i`` are averaged over their count.
    """
    from peft.utils import merge_utils

    w = _weights(weights, deltas)
    return _quiet(
        lambda: merge_utils.ties(list(deltas), w, _density(options), _sign_method(options))
    )


def dare_linear(
    base: Tensor, deltas: list[Tensor], weights: list[float], ctx: TensorContext, options: Any
) -> Tensor:
    """DARE (Yu et al., arXiv 2311.03099) then task arithmetic: ``Σ_i w_i · DARE(δ_i)``.

    DARE drops each entry with probability ``1 − density`` (default density 0.5) and rescales
    the survivors by ``1/density``. The drop mask is drawn from a generator seeded with
    ``sha256(seed, name)``, so a merge is reproducible and the caller's RNG is untouched.
    """
    from peft.utils import merge_utils

    w = _weights(weights, deltas)
    density = _density(options)
    return _seeded(
        ctx,
        deltas[0].device,
        lambda: _quiet(lambda: merge_utils.dare_linear(list(deltas), w, density)),
    )


def dare_ties(
    base: Tensor, deltas: list[Tensor], weights: list[float], ctx: TensorContext, options: Any
) -> Tensor:
    """DARE (Yu et al., arXiv 2311.03099) then TIES sign election and disjoint mean.

    Defaults: ``density = 0.5``, ``majority_sign_method = "total"``; seeded as in
    :func:`dare_linear`.
    """
    from peft.utils import merge_utils

    w = _weights(weights, deltas)
    density, sign = _density(options), _sign_method(options)
    return _seeded(
        ctx,
        deltas[0].device,
        lambda: _quiet(lambda: merge_utils.dare_ties(list(deltas), w, density, sign)),
    )


def magnitude_prune(
    base: Tensor, deltas: list[Tensor], weights: list[float], ctx: TensorContext, options: Any
) -> Tensor:
    """Magnitude pruning then task arithmetic: ``Σ_i w_i · top_density(δ_i)``.

    The trim step of TIES (Yadav et al., arXiv 2306.01708) without sign election; keeps the top
    ``density`` fraction (default 0.5) of each task vector by magnitude.
    """
    from peft.utils import merge_utils

    w = _weights(weights, deltas)
    return _quiet(lambda: merge_utils.magnitude_prune(list(deltas), w, _density(options)))


# Each output entry depends only on the same entry of the inputs: the stream may pass big tensors
# in row blocks (same bits, a fraction of the memory).
task_arithmetic.elementwise = True  # type: ignore[attr-defined]

PEFT_METHODS: dict[str, TensorMethod] = {
    entry.name: globals()[entry.attribute] for entry in METHODS if entry.module == __name__
}
"""The peft methods by the name suites use (``method = "ties"``): the entries of
:data:`audit.merging.methods.METHODS` whose function is in this module."""
