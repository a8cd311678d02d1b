"""The five merge methods of peft as :class:`~audit.merging.base.TensorMethod` s.

Each one wraps the function of the same name in ``peft.utils.merge_utils`` (the math is
peft's, not rewritten here): the contributors' task vectors are stacked, ``weights`` becomes a
tensor, and the result is the merged task vector (the caller adds ``scaling · result`` to the
base). ``options`` is any object with ``density`` and ``majority_sign_method`` attributes (the
merge intervention's Params, or :class:`PeftOptions`); missing attributes take the defaults
below. Their names, papers and kind are in :data:`audit.merging.methods.METHODS`.

TIES is the exception: in the merge intervention (its ``trim = "global"`` default, streamed) it
follows the authors' code (prateeky2806/ties-merging, see :func:`ties`) rather than peft, whose
per-tensor trimming stays available as ``trim = "tensor"``. Both divide each entry by the
*number* of contributors agreeing with the elected sign (mergekit divides by the sum of their
weights), so TIES outputs differ from mergekit's by that factor when weights are not all 1.
A ``density`` of ``None`` means the method's default (:data:`DEFAULT_DENSITY`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from audit.merging.base import ModelDeltas, TensorContext, TensorMethod, derived_seed
from audit.merging.methods import METHODS

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "PEFT_METHODS",
    "PeftOptions",
    "TiesGlobal",
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
    trim: Literal["global", "tensor"] = "tensor"
    """TIES only: ``"tensor"`` is peft's per-tensor top-k; ``"global"`` the reference's top-k
    over each contributor's whole task vector (streamed merges only, see :func:`ties`)."""


_DEFAULTS = PeftOptions()


DEFAULT_DENSITY: dict[str, float] = {"ties": 0.2}
"""A method's density where the options give none (``density = None``): TIES keeps the top 20%
(the reference README's ``topk20``); DARE and magnitude pruning keep 0.5 (peft's examples)."""


def _density(options: Any, method: str = "") -> float:
    density = getattr(options, "density", None)
    if density is None:
        return DEFAULT_DENSITY.get(method, _DEFAULTS.density)
    return float(density)


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


@dataclass
class TiesGlobal:
    """What :func:`ties` needs from the whole model when it trims globally (``ctx.shared``).

    ``thresholds[i]``: contributor ``i`` keeps the entries with ``|δ_i| ≥ thresholds[i]``, the
    ``(d − int(d · density))``-th smallest magnitude over all its ``d`` mergeable entries (the
    reference's ``topk_values_mask``). ``model`` is kept for the global majority sign, computed
    on first need (see :meth:`majority_sign`).
    """

    thresholds: list[float]
    density: float
    sign_method: Literal["total", "frequency"]
    model: ModelDeltas | None = None
    _majority: float | None = None

    def majority_sign(self) -> float:
        """The reference's ``resolve_zero_signs``: ``sign(Σ elected signs)`` over the whole model.

        Only entries whose trimmed values are not all zero yet sum (or whose signs sum) to
        exactly 0 use it, so it is computed lazily: a further pass over the model, the first
        time such an entry appears (almost never with real weights).
        """
        if self._majority is None:
            if self.model is None:
                raise ValueError("the global majority sign needs the whole model")
            total = 0.0
            for _, deltas in self.model.stacked():
                trimmed = _trim_global(deltas, self.thresholds)
                total += float(_elect(trimmed, self.sign_method).sum())
            self._majority = float((total > 0) - (total < 0))
        return self._majority


def _trim_global(deltas: list[Tensor], thresholds: list[float]) -> Tensor:
    """The stacked ``δ_i · (|δ_i| ≥ t_i)`` (reference ``topk_values_mask``: ties are kept)."""
    import torch

    return torch.stack([d * (d.abs() >= t) for d, t in zip(deltas, thresholds, strict=True)])


def _elect(trimmed: Tensor, sign_method: str) -> Tensor:
    """Per-entry elected sign before zero resolution: ``sign(Σ_i δ_i)`` (reference ``mass``)
    or, for ``"frequency"``, ``sign(Σ_i sign(δ_i))``."""
    import torch

    if sign_method == "frequency":
        return torch.sign(torch.sign(trimmed).sum(dim=0))
    return torch.sign(trimmed.sum(dim=0))


def _global_threshold(model: ModelDeltas, contributor: int, density: float) -> float:
    """The magnitude threshold of the top ``density`` share of one contributor's task vector.

    Exact: every ``|δ|`` of the contributor is gathered into one float32 array (4 bytes per
    mergeable parameter) and partially sorted in place; one contributor at a time.
    """
    import numpy as np

    d = model.numel
    k = d - int(d * density)  # reference: k = int(d · K); k = d − k; kthvalue(k)
    if d == 0 or k <= 0:
        return 0.0
    magnitudes = np.empty(d, dtype=np.float32)
    offset = 0
    for delta in model.deltas(contributor):
        n = delta.numel()
        magnitudes[offset : offset + n] = delta.abs().reshape(-1).numpy()
        offset += n
        del delta
    if offset != d:
        raise ValueError(f"contributor {contributor}: {offset} entries, expected {d}")
    magnitudes.partition(k - 1)
    threshold = float(magnitudes[k - 1])
    del magnitudes
    return threshold


def _ties_prepare(model: ModelDeltas, options: Any) -> TiesGlobal | None:
    """The stream's first pass for :func:`ties`: each contributor's global trim threshold."""
    if _trim(options) != "global":
        return None
    density = _density(options, "ties")
    thresholds = [_global_threshold(model, i, density) for i in range(model.contributors)]
    return TiesGlobal(thresholds, density, _sign_method(options), model)


def _trim(options: Any) -> Literal["global", "tensor"]:
    """``options.trim``; options without one (e.g. somf's Params) keep peft's ``"tensor"``."""
    trim = getattr(options, "trim", "tensor")
    if trim not in ("global", "tensor"):
        raise ValueError(f"trim must be 'global' or 'tensor', got {trim!r}")
    return cast(Literal["global", "tensor"], trim)


def ties(
    base: Tensor, deltas: list[Tensor], weights: list[float], ctx: TensorContext, options: Any
) -> Tensor:
    """TIES merging (Yadav et al., arXiv 2306.01708): trim, elect sign, disjoint mean.

    ``trim = "global"`` (the merge intervention's default; streamed merges only) computes
    what the authors' code computes (prateeky2806/ties-merging at commit 44e7891f,
    ``src/utils/merge_utils.py``: ``topk_values_mask``, ``resolve_sign``, ``disjoint_merge``;
    ``src/ties_minimal.ipynb``), with the stream's first pass giving each contributor's
    threshold over its *whole* flattened task vector (``ctx.shared``, :class:`TiesGlobal`):

    - trim: ``δ_i`` keeps ``|δ_i| ≥ t_i``, ``t_i`` its ``(d − int(d·density))``-th smallest
      magnitude over all ``d`` merged parameters (ties at ``t_i`` kept); ``density`` defaults
      to 0.2 (the README's ``topk20``);
    - elect: ``s = sign(Σ_i δ_i)`` of the trimmed, unweighted values (``"total"``, the
      reference's ``mass``; ``"frequency"``: ``sign(Σ_i sign δ_i)``); where ``s = 0`` the sign of
      ``Σ s`` over the whole model (reference ``resolve_zero_signs``);
    - disjoint mean: ``Σ_i w_i·δ_i`` over the ``i`` with ``sign δ_i = s`` (``s = 0``: ``δ_i < 0``,
      as the reference's ``torch.where``), divided by their count (at least 1). The reference
      has no weights (all 1); the merge's ``scaling`` is its λ (default 1, as the notebook's
      ``lamda = 1``; its README searches λ in 0.8–2.5 on validation data).

    ``trim = "tensor"`` (the default of :class:`PeftOptions` and of options without a ``trim``,
    e.g. somf's) is peft's ``merge_utils.ties`` unchanged: exactly the top
    ``int(density·numel)`` entries of each tensor (default density 0.5 in PeftOptions), sign
    ties broken towards ``+``. A direct call with ``trim = "global"`` and no ``ctx.shared`` is
    an error (the thresholds need the whole model).
    """
    shared = ctx.shared
    if not isinstance(shared, TiesGlobal):
        if _trim(options) == "global":
            raise ValueError(
                "TIES with trim = 'global' needs the whole model's thresholds: merge through "
                "audit.merging.stream, or pass trim = 'tensor'"
            )
        from peft.utils import merge_utils

        w = _weights(weights, deltas)
        density, method = _density(options, "ties"), _sign_method(options)
        return _quiet(lambda: merge_utils.ties(list(deltas), w, density, method))
    import torch

    w = _weights(weights, deltas)
    trimmed = _trim_global(deltas, shared.thresholds)
    sign = _elect(trimmed, shared.sign_method)
    undecided = (sign == 0) & (trimmed != 0).any(dim=0)
    if bool(undecided.any()):
        sign = torch.where(sign == 0, torch.full_like(sign, shared.majority_sign()), sign)
    keep = torch.where(sign.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    weighted = trimmed * w.reshape(-1, *([1] * (trimmed.dim() - 1)))
    count = keep.sum(dim=0).to(trimmed.dtype)
    return (weighted * keep).sum(dim=0) / torch.clamp(count, min=1)


ties.prepare = _ties_prepare  # type: ignore[attr-defined]


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
