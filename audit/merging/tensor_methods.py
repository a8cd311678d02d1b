"""The five merge methods of peft as :class:`~audit.merging.base.TensorMethod` s.

Each one computes what the function of the same name in ``peft.utils.merge_utils`` computes,
bit for bit: the contributors' task vectors, ``weights`` as a tensor, and the result is the
merged task vector (the caller adds ``scaling · result`` to the base). ``options`` is any object
with ``density`` and ``majority_sign_method`` attributes (the merge intervention's Params, or
:class:`PeftOptions`); missing attributes take the defaults below. Their names, papers and kind
are in :data:`audit.merging.methods.METHODS`.

Memory: peft prunes each whole task vector with ``torch.topk`` (16 bytes an entry for its work
queue, 12 per kept entry for its output) and stacks, signs, masks and weights whole copies of
all of them. Here (:data:`LOW_MEMORY`, the default, for float32 CPU tensors without autograd)
``ties``, ``dare_linear``, ``dare_ties`` and ``magnitude_prune`` run in two steps:

1. per contributor, which entries survive: magnitude pruning finds the ``k``-th largest ``|δ|``
   exactly by a two-pass radix histogram of its float32 bit patterns (:class:`_Selection`, a few
   hundred KiB); DARE draws peft's Bernoulli mask in blocks, in peft's order (one bool an entry);
2. in blocks of :data:`BLOCK` entries: pruning, then peft's own ``calculate_majority_sign_mask``,
   weighting, ``disjoint_merge`` or weighted sum on the blocks' stack.

The streaming merge (:mod:`audit.merging.stream`) uses the same two steps through each method's
``blocked`` attribute (:class:`Blocked`): step 1 sees one contributor's whole task vector at a
time, step 2 reads row blocks from disk, so the merge holds about one tensor, not ``n + 1``.

Ties at the threshold: peft keeps the ``k`` entries ``torch.topk`` returns, and when several
entries share the ``k``-th largest magnitude and only some fit, which of them it keeps is
``std::nth_element``'s (or ``std::partial_sort``'s) choice inside ``topk``: it depends on the
order the whole array is permuted in, and no threshold, count or blockwise rule reproduces it.
Only there (a tie *across* the boundary, at a non-zero magnitude) that contributor's mask comes
from ``torch.topk`` itself, on its whole tensor, as peft does (``topk``'s own memory, for that
one tensor; the stream lets it reuse the task vector's buffer for ``|δ|``). A tie at magnitude 0
or among NaNs needs no choice: ``x · 1`` and ``x · 0`` are the same bits there.

TIES is the exception: in the merge intervention (its ``trim = "global"`` default, streamed) it
follows the authors' code (prateeky2806/ties-merging, see :func:`ties`) rather than peft, whose
per-tensor trimming stays available as ``trim = "tensor"``. Both divide each entry by the
*number* of contributors agreeing with the elected sign (mergekit divides by the sum of their
weights), so TIES outputs differ from mergekit's by that factor when weights are not all 1.
A ``density`` of ``None`` means the method's default (:data:`DEFAULT_DENSITY`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from audit.merging.base import ModelDeltas, TensorContext, TensorMethod, derived_seed
from audit.merging.methods import METHODS

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "BLOCK",
    "LOW_MEMORY",
    "PEFT_METHODS",
    "Blocked",
    "PeftOptions",
    "TiesGlobal",
    "dare_linear",
    "dare_ties",
    "magnitude_prune",
    "task_arithmetic",
    "ties",
]

LOW_MEMORY = True
"""Merge ties, dare_* and magnitude_prune in blocks (see the module's docstring). ``False``: call
peft's whole-tensor functions (and, for global TIES, gather each contributor's magnitudes into
one array and merge whole tensors), the code the blocked path replaced; the results are the
same bits, the memory is not (``bench/merge_rss.py --impl reference``)."""

BLOCK = 1 << 18
"""Entries a block (1 MiB of float32 per contributor). A multiple of every SIMD width: torch sums
the contributors of a contiguous run of entries in vector registers and its last few entries in
a scalar loop that adds in another order, so blocks that start on such a multiple give every
entry the order it gets in the whole tensor (tested bit for bit against peft)."""


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


def _seeded(ctx: TensorContext, device: Any, call: Callable[[], Any]) -> Any:
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


# --------------------------------------------------------------------------- exact selection

_HIGH = 1 << 15  # |x| as int32 is < 2**31: bits >> 16 < 2**15
_LOW = 1 << 16
_INF = 0x7F800000  # the bit pattern of +inf; |NaN| patterns are above it


def _magnitude_bits(x: Tensor) -> Tensor:
    """``|x|`` as int32 bit patterns: for non-negative float32 (NaN included, above +inf) the
    integers sort as the floats do."""
    import torch

    return x.abs().view(torch.int32)


def _float(bits: int) -> float:
    """The float32 whose bit pattern is ``bits``."""
    import struct

    return float(struct.unpack("<f", struct.pack("<i", bits))[0])


class _Selection:
    """The ``rank``-th smallest of a set of float32 magnitudes, exactly, in two passes over blocks.

    Pass 1 counts the blocks' bit patterns by their top 15 bits (:meth:`count`); the bin holding
    the ``rank``-th value is then known (:meth:`narrow`); pass 2 counts the low 16 bits of the
    entries in that bin (:meth:`count` again). :meth:`result` gives the value's bit pattern and
    how many entries are below it and equal to it. Memory: two histograms (768 KiB).
    """

    def __init__(self, rank: int) -> None:
        import torch

        self.rank = rank
        self.high = torch.zeros(_HIGH, dtype=torch.int64)
        self.low = torch.zeros(_LOW, dtype=torch.int64)
        self.bin = -1
        self.below = 0

    def count(self, bits: Tensor) -> None:
        """Add a block of :func:`_magnitude_bits` to the current pass's histogram."""
        import torch

        if self.bin < 0:
            self.high += torch.bincount(bits >> 16, minlength=_HIGH)
        else:
            inside = bits[(bits >> 16) == self.bin] & 0xFFFF
            self.low += torch.bincount(inside, minlength=_LOW)

    def narrow(self) -> None:
        """End pass 1: the bin of the ``rank``-th value and how many entries lie below it."""
        import torch

        cumulative = torch.cumsum(self.high, 0)
        if int(cumulative[-1]) < self.rank:
            raise ValueError(f"rank {self.rank} of {int(cumulative[-1])} values")
        self.bin = int(torch.searchsorted(cumulative, self.rank))
        self.below = int(cumulative[self.bin]) - int(self.high[self.bin])

    def result(self) -> tuple[int, int, int]:
        """``(bit pattern, entries below it, entries equal to it)`` after pass 2."""
        import torch

        cumulative = torch.cumsum(self.low, 0) + self.below
        low = int(torch.searchsorted(cumulative, self.rank))
        equal = int(self.low[low])
        return (self.bin << 16) | low, int(cumulative[low]) - equal, equal


def _blocks(numel: int) -> Iterator[tuple[int, int]]:
    for start in range(0, numel, BLOCK):
        yield start, min(start + BLOCK, numel)


def _top_k(delta: Tensor, k: int, consumable: bool) -> int | Tensor:
    """Which entries of the flat ``delta`` peft's ``magnitude_based_pruning`` keeps (``0 < k <
    numel``): a bit-pattern threshold (keep ``|δ| ≥`` it, NaN included), or a bool mask.

    The threshold is the ``k``-th largest magnitude (:class:`_Selection`). It is exactly
    ``topk``'s choice unless entries equal to it are more than the places left for them and it is
    neither 0 nor NaN (whose entries are the same bits kept or not); then the mask is
    ``torch.topk``'s own on the whole tensor (``consumable``: ``delta`` may be overwritten with
    ``|δ|`` for it). ``sorted=False`` keeps the same set (it skips sorting the kept entries).
    """
    import torch

    numel = delta.numel()
    selection = _Selection(numel - k + 1)  # the k-th largest is this rank from the bottom
    for _ in range(2):
        for start, stop in _blocks(numel):
            selection.count(_magnitude_bits(delta[start:stop]))
        if selection.bin < 0:
            selection.narrow()
    bits, below, equal = selection.result()
    if bits > _INF:  # more NaNs than k: topk keeps only NaNs, NaN · anything is NaN
        return _INF + 1
    if bits == 0 or numel - below == k:
        return bits
    magnitudes = delta.abs_() if consumable else delta.abs()
    chosen = torch.topk(magnitudes, k=k, largest=True, sorted=False).indices
    del magnitudes
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[chosen] = True
    return mask


def _kth_smallest(model: ModelDeltas, ranks: list[int]) -> list[float]:
    """Contributor ``i``'s ``ranks[i]``-th smallest ``|δ|`` over the whole model (two passes)."""
    selections = [_Selection(rank) for rank in ranks]
    for _ in range(2):
        seen = [0] * model.contributors
        for _, deltas in model.stacked():
            for i in range(len(deltas)):
                flat = deltas[i].reshape(-1)
                seen[i] += flat.numel()
                for start, stop in _blocks(flat.numel()):
                    selections[i].count(_magnitude_bits(flat[start:stop]))
                del flat
            del deltas  # before the next tensor is read
        for i, n in enumerate(seen):
            if n != model.numel:
                raise ValueError(f"contributor {i}: {n} entries, expected {model.numel}")
        if selections and selections[0].bin < 0:
            for selection in selections:
                selection.narrow()
    return [_float(selection.result()[0]) for selection in selections]


# --------------------------------------------------------------------------- blocked merges


@dataclass
class _Pruned:
    """One tensor's step 1 (see :class:`Blocked`): what survives, and the block-step constants."""

    keeps: list[int | Tensor] | None
    """Per contributor: a bit-pattern threshold or a flat bool mask; ``None``: nothing pruned."""
    rescale: float | None
    """DARE's ``density`` (survivors divided by it); ``None`` for magnitude pruning."""
    weights: Tensor
    elect: Literal["total", "frequency"] | None
    """TIES' sign election rule; ``None``: a weighted sum (magnitude_prune, dare_linear)."""


@dataclass(frozen=True)
class Blocked:
    """How a method merges one tensor in two steps (the streaming merge calls them directly).

    ``prepare(numel, deltas, weights, ctx, options, consumable)`` gets the contributors' whole
    flat task vectors one at a time, in order (an iterator: the stream reads each when asked,
    and a method that needs none, DARE, reads none), and returns what the blocks need; with
    ``consumable`` it may overwrite them. ``rows(deltas, start, weights, ctx, options, state)``
    merges the block ``[start, start + len)`` of the flat task vectors (``start`` a multiple of
    :attr:`block`). Used when :meth:`applies` to the options (:data:`LOW_MEMORY`).
    """

    method: str

    @property
    def block(self) -> int:
        """Entries a block of step 2 (:data:`BLOCK`)."""
        return BLOCK

    def applies(self, options: Any) -> bool:
        """Whether the merge with these options runs in blocks."""
        return LOW_MEMORY

    def prepare(
        self,
        numel: int,
        deltas: Iterator[Tensor],
        weights: list[float],
        ctx: TensorContext,
        options: Any,
        consumable: bool = False,
    ) -> Any:
        """Step 1: per contributor, the entries that survive pruning (:class:`_Pruned`)."""
        import torch

        w = torch.tensor(weights, dtype=torch.float32)
        if self.method == "ties" and isinstance(ctx.shared, TiesGlobal):
            return (ctx.shared, w)
        if self.method == "ties" and _trim(options) == "global":
            raise ValueError(
                "TIES with trim = 'global' needs the whole model's thresholds: merge through "
                "audit.merging.stream, or pass trim = 'tensor'"
            )
        random = self.method.startswith("dare")
        density = _density(options, self.method)
        elect = _sign_method(options) if self.method in ("ties", "dare_ties") else None
        if density >= 1:  # peft's prune returns the tensor unchanged (and warns)
            return _Pruned(None, None, w, elect)
        if density < 0:
            raise ValueError(f"Density should be >= 0, got {density}")
        if random:
            n = len(weights)
            masks = _seeded(ctx, "cpu", lambda: _bernoulli_masks(numel, n, density))
            return _Pruned(list(masks), density, w, elect)
        k = int(density * numel)
        if k == 0:  # topk keeps nothing: every entry times 0
            return _Pruned([torch.zeros(numel, dtype=torch.bool)] * len(weights), None, w, elect)
        keeps: list[int | Tensor] = []
        for delta in deltas:
            keeps.append(_top_k(delta, k, consumable))
            del delta
        if len(keeps) != len(weights):
            raise ValueError(f"{len(keeps)} task vectors but {len(weights)} weights")
        return _Pruned(keeps, None, w, elect)

    def rows(
        self,
        deltas: list[Tensor],
        start: int,
        weights: list[float],
        ctx: TensorContext,
        options: Any,
        state: Any,
    ) -> Tensor:
        """Step 2: the merged task vector of one block (flat float32 ``deltas``)."""
        if isinstance(state, tuple):
            shared, w = state
            return _ties_global_block(deltas, w, shared)
        return _peft_rows(deltas, start, state)


def _bernoulli_masks(numel: int, n: int, density: float) -> list[Tensor]:
    """peft's ``random_pruning`` masks for ``n`` tensors of ``numel`` entries, drawn in blocks.

    peft's ``torch.bernoulli(torch.full_like(δ, density))`` draws, on CPU, one float32
    ``u = uniform(0, 1)`` per entry, in order, from the global generator, and keeps the entry
    where ``u < p`` (``p`` the density as float32); ``torch.rand`` draws the same ``u`` the same
    way (one call of the same ``uniform_real_distribution`` per entry), four times faster. The
    blocks, one contributor after the other, take the same numbers as peft's whole-tensor calls
    (tested bit for bit). Kept as bools (1 byte an entry, not 4).
    """
    import torch

    p = torch.tensor(density, dtype=torch.float32)
    masks = []
    for _ in range(n):
        mask = torch.empty(numel, dtype=torch.bool)
        for start, stop in _blocks(numel):
            torch.lt(torch.rand(stop - start), p, out=mask[start:stop])
        masks.append(mask)
    return masks


def _peft_rows(deltas: list[Tensor], start: int, state: _Pruned) -> Tensor:
    """peft's prune, stack, (sign election,) weighting and sum, on one block of entries."""
    import torch
    from peft.utils import merge_utils

    stop = start + deltas[0].numel()
    if state.keeps is None:
        pruned = list(deltas)
    else:
        pruned = []
        for delta, keep in zip(deltas, state.keeps, strict=True):
            if isinstance(keep, int):
                mask = (_magnitude_bits(delta) >= keep).to(delta.dtype)
            else:
                mask = keep[start:stop].to(delta.dtype)
            part = delta * mask  # peft: tensor * mask (a float 0/1 mask: -0.0, NaN as peft)
            pruned.append(part / state.rescale if state.rescale is not None else part)
    stacked = torch.stack(pruned, dim=0)
    del pruned
    weights = merge_utils.reshape_weight_task_tensors(stacked, state.weights)
    if state.elect is None:
        return (stacked * weights).sum(dim=0)
    sign = merge_utils.calculate_majority_sign_mask(stacked, method=state.elect)
    return merge_utils.disjoint_merge(stacked * weights, sign)


def _blockable(deltas: list[Tensor]) -> bool:
    """Whether a direct call may take the blocked path: CPU float32, one shape, no autograd."""
    import torch

    if not deltas or not LOW_MEMORY:
        return False
    shape = deltas[0].shape
    grad = torch.is_grad_enabled()
    return (
        all(
            d.dtype == torch.float32
            and d.device.type == "cpu"
            and d.shape == shape
            and not (grad and d.requires_grad)
            for d in deltas
        )
        and deltas[0].numel() > 0
    )


def _in_blocks(
    method: str, deltas: list[Tensor], weights: list[float], ctx: TensorContext, options: Any
) -> Tensor:
    """A direct call's merge through :class:`Blocked` (the inputs are left as they are)."""
    import torch

    if len(weights) != len(deltas):
        raise ValueError(f"{len(deltas)} task vectors but {len(weights)} weights")
    blocked = _BLOCKED[method]
    flat = [d.reshape(-1) for d in deltas]
    numel = flat[0].numel()
    state = blocked.prepare(numel, iter(flat), weights, ctx, options, consumable=False)
    out = torch.empty(numel, dtype=torch.float32)
    for start, stop in _blocks(numel):
        out[start:stop] = blocked.rows(
            [f[start:stop] for f in flat], start, weights, ctx, options, state
        )
    return out.reshape(deltas[0].shape)


# --------------------------------------------------------------------------- the methods


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
        time such an entry appears (almost never with real weights). The signs are summed as
        integers, in blocks.
        """
        if self._majority is None:
            import torch

            if self.model is None:
                raise ValueError("the global majority sign needs the whole model")
            total = 0
            for _, deltas in self.model.stacked():
                flat = [d.reshape(-1) for d in deltas]
                del deltas
                for start, stop in _blocks(flat[0].numel()):
                    trimmed = _trim_global([f[start:stop] for f in flat], self.thresholds)
                    total += int(_elect(trimmed, self.sign_method).to(torch.int64).sum())
                del flat  # before the next tensor is read
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


def _ties_global_block(deltas: list[Tensor], w: Tensor, shared: TiesGlobal) -> Tensor:
    """:func:`_ties_global_merge` of a block of flat task vectors, the same bits in fewer passes.

    The trimmed rows are written into one buffer (no stack copy); "some entry has an elected
    sign of 0 and a non-zero trimmed value" is one test over the block; ``where(s > 0, δ > 0,
    δ < 0)`` is ``sign(δ) == (1 if s > 0 else −1)`` (``sign`` of NaN and of ±0 is 0, equal to
    neither); the counts are summed as int32 (at most the number of contributors).
    """
    import torch

    trimmed = torch.empty((len(deltas), deltas[0].numel()), dtype=deltas[0].dtype)
    for i, (delta, threshold) in enumerate(zip(deltas, shared.thresholds, strict=True)):
        torch.mul(delta, delta.abs() >= threshold, out=trimmed[i])
    sign = _elect(trimmed, shared.sign_method)
    if bool(((trimmed != 0) & (sign == 0)).any()):
        sign = torch.where(sign == 0, torch.full_like(sign, shared.majority_sign()), sign)
    keep = torch.sign(trimmed) == torch.where(sign > 0, 1.0, -1.0)
    count = keep.sum(dim=0, dtype=torch.int32).to(trimmed.dtype)
    weighted = trimmed * w.reshape(-1, 1)
    return (weighted * keep).sum(dim=0) / torch.clamp(count, min=1)


def _ties_global_merge(deltas: list[Tensor], w: Tensor, shared: TiesGlobal) -> Tensor:
    """Trim, elect, disjoint mean of one tensor's task vectors (see :func:`ties`): the
    whole-tensor code (``LOW_MEMORY = False``)."""
    import torch

    trimmed = _trim_global(deltas, shared.thresholds)
    sign = _elect(trimmed, shared.sign_method)
    undecided = (sign == 0) & (trimmed != 0).any(dim=0)
    if bool(undecided.any()):
        sign = torch.where(sign == 0, torch.full_like(sign, shared.majority_sign()), sign)
    keep = torch.where(sign.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    weighted = trimmed * w.reshape(-1, *([1] * (trimmed.dim() - 1)))
    count = keep.sum(dim=0).to(trimmed.dtype)
    return (weighted * keep).sum(dim=0) / torch.clamp(count, min=1)


def _global_threshold(model: ModelDeltas, contributor: int, density: float) -> float:
    """The magnitude threshold of the top ``density`` share of one contributor's task vector.

    The whole-model gather (``LOW_MEMORY = False``): every ``|δ|`` of the contributor in one
    float32 array (4 bytes per mergeable parameter), partially sorted in place.
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
    """The stream's first pass for :func:`ties`: each contributor's global trim threshold.

    Exact: the ``(d − int(d·density))``-th smallest ``|δ|`` of each contributor, found by two
    passes over the model counting bit patterns (:class:`_Selection`, all contributors at once);
    with ``LOW_MEMORY = False``, by gathering each contributor's magnitudes (4 bytes a parameter).
    """
    if _trim(options) != "global":
        return None
    density = _density(options, "ties")
    n, d = model.contributors, model.numel
    k = d - int(d * density)
    if not LOW_MEMORY:
        thresholds = [_global_threshold(model, i, density) for i in range(n)]
    elif d == 0 or k <= 0:
        thresholds = [0.0] * n
    else:
        thresholds = _kth_smallest(model, [k] * n)
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
    e.g. somf's) is peft's ``merge_utils.ties``, bit for bit: exactly the top
    ``int(density·numel)`` entries of each tensor (default density 0.5 in PeftOptions), sign
    ties broken towards ``+``. A direct call with ``trim = "global"`` and no ``ctx.shared`` is
    an error (the thresholds need the whole model). Both run in blocks (:data:`LOW_MEMORY`).
    """
    shared = ctx.shared
    if not isinstance(shared, TiesGlobal):
        if _trim(options) == "global":
            raise ValueError(
                "TIES with trim = 'global' needs the whole model's thresholds: merge through "
                "audit.merging.stream, or pass trim = 'tensor'"
            )
        if _blockable(deltas):
            return _in_blocks("ties", deltas, weights, ctx, options)
        from peft.utils import merge_utils

        w = _weights(weights, deltas)
        density, method = _density(options, "ties"), _sign_method(options)
        return _quiet(lambda: merge_utils.ties(list(deltas), w, density, method))
    if _blockable(deltas):
        return _in_blocks("ties", deltas, weights, ctx, options)
    return _ties_global_merge(list(deltas), _weights(weights, deltas), shared)


ties.prepare = _ties_prepare  # type: ignore[attr-defined]


def dare_linear(
    base: Tensor, deltas: list[Tensor], weights: list[float], ctx: TensorContext, options: Any
) -> Tensor:
    """DARE (Yu et al., arXiv 2311.03099) then task arithmetic: ``Σ_i w_i · DARE(δ_i)``.

    DARE drops each entry with probability ``1 − density`` (default density 0.5) and rescales
    the survivors by ``1/density``. The drop mask is drawn from a generator seeded with
    ``sha256(seed, name)``, so a merge is reproducible and the caller's RNG is untouched.
    """
    if _blockable(deltas):
        return _in_blocks("dare_linear", deltas, weights, ctx, options)
    from peft.utils import merge_utils

    w = _weights(weights, deltas)
    density = _density(options)
    return cast(
        "Tensor",
        _seeded(
            ctx,
            deltas[0].device,
            lambda: _quiet(lambda: merge_utils.dare_linear(list(deltas), w, density)),
        ),
    )


def dare_ties(
    base: Tensor, deltas: list[Tensor], weights: list[float], ctx: TensorContext, options: Any
) -> Tensor:
    """DARE (Yu et al., arXiv 2311.03099) then TIES sign election and disjoint mean.

    Defaults: ``density = 0.5``, ``majority_sign_method = "total"``; seeded as in
    :func:`dare_linear`.
    """
    if _blockable(deltas):
        return _in_blocks("dare_ties", deltas, weights, ctx, options)
    from peft.utils import merge_utils

    w = _weights(weights, deltas)
    density, sign = _density(options), _sign_method(options)
    return cast(
        "Tensor",
        _seeded(
            ctx,
            deltas[0].device,
            lambda: _quiet(lambda: merge_utils.dare_ties(list(deltas), w, density, sign)),
        ),
    )


def magnitude_prune(
    base: Tensor, deltas: list[Tensor], weights: list[float], ctx: TensorContext, options: Any
) -> Tensor:
    """Magnitude pruning then task arithmetic: ``Σ_i w_i · top_density(δ_i)``.

    The trim step of TIES (Yadav et al., arXiv 2306.01708) without sign election; keeps the top
    ``density`` fraction (default 0.5) of each task vector by magnitude.
    """
    if _blockable(deltas):
        return _in_blocks("magnitude_prune", deltas, weights, ctx, options)
    from peft.utils import merge_utils

    w = _weights(weights, deltas)
    return _quiet(lambda: merge_utils.magnitude_prune(list(deltas), w, _density(options)))


_BLOCKED = {name: Blocked(name) for name in ("ties", "dare_linear", "dare_ties", "magnitude_prune")}
# the streaming merge runs these in two steps (see Blocked)
ties.blocked = _BLOCKED["ties"]  # type: ignore[attr-defined]
dare_linear.blocked = _BLOCKED["dare_linear"]  # type: ignore[attr-defined]
dare_ties.blocked = _BLOCKED["dare_ties"]  # type: ignore[attr-defined]
magnitude_prune.blocked = _BLOCKED["magnitude_prune"]  # type: ignore[attr-defined]

# Each output entry depends only on the same entry of the inputs: the stream may pass big tensors
# in row blocks (same bits, a fraction of the memory).
task_arithmetic.elementwise = True  # type: ignore[attr-defined]

PEFT_METHODS: dict[str, TensorMethod] = {
    entry.name: globals()[entry.attribute] for entry in METHODS if entry.module == __name__
}
"""The peft methods by the name suites use (``method = "ties"``): the entries of
:data:`audit.merging.methods.METHODS` whose function is in this module."""
