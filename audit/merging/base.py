"""The interfaces every merge method implements, and the per-tensor random generator.

A merge works on *task vectors*: ``deltas[i] = θ_i − θ_base`` for contributor ``i``, float32,
the same shape as the base tensor. Two kinds of method exist:

- :class:`TensorMethod` merges one tensor at a time (task arithmetic, TIES, DARE, magnitude
  pruning, OPCM, DOGE). The streaming merge (:mod:`audit.merging.stream`) calls it once per
  parameter, so at most one tensor of each contributor is in memory.
- :class:`ModelMethod` needs the base model and data (DAM, Concrete): every task vector is held
  in memory at once, so these methods do not stream.

Either way the merged weight is ``base + scaling · result``. Tensors that are not floating point
(e.g. integer buffers), or whose shape differs across contributors, are copied from the base and
never passed to a method; embeddings whose vocabulary sizes differ are an error.

torch is imported inside functions only (plug-in modules must import fast); the annotations name
``torch.Tensor`` under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from torch import Tensor

__all__ = [
    "ModelDeltas",
    "ModelMethod",
    "TensorContext",
    "TensorMethod",
    "derived_seed",
    "tensor_generator",
]


@dataclass(frozen=True)
class TensorContext:
    """Where a tensor sits in a merge: its parameter name, the merge's seed, its stream index."""

    name: str
    """Parameter name, e.g. ``"model.layers.0.self_attn.q_proj.weight"``."""
    seed: int
    """The merge's seed; methods needing randomness use :func:`tensor_generator`."""
    index: int
    """Position of the tensor in the stream (0-based)."""
    shared: Any = None
    """What the method's ``prepare`` hook computed over the whole model before the stream (see
    :class:`TensorMethod`), e.g. TIES's per-contributor global trim thresholds; ``None`` when
    the method has no hook, the hook returned ``None``, or the method is called directly."""


class ModelDeltas(Protocol):
    """Every mergeable tensor's task vectors, streamed again from disk (for ``prepare`` hooks).

    Mergeable: the tensors the stream passes to the method (not the ones copied from the base).
    """

    contributors: int
    """How many contributors the merge has."""
    numel: int
    """Entries of the mergeable tensors, all together (one contributor's task vector)."""

    def deltas(self, contributor: int) -> Iterator[Tensor]:
        """Contributor ``contributor``'s task vector, one mergeable tensor at a time."""
        ...

    def stacked(self) -> Iterator[tuple[str, list[Tensor]]]:
        """``(name, every contributor's task vector)`` for each mergeable tensor."""
        ...


def derived_seed(ctx: TensorContext) -> int:
    """A 63-bit seed from ``sha256(seed, name)``: stable across runs, processes and orderings."""
    digest = hashlib.sha256(f"{ctx.seed}\0{ctx.name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def tensor_generator(ctx: TensorContext) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derived_seed` (the global RNG is untouched)."""
    import torch

    generator = torch.Generator(device="cpu")
    generator.manual_seed(derived_seed(ctx))
    return generator


class TensorMethod(Protocol):
    """The merged task vector of one tensor; the merged weight is ``base + scaling · result``.

    ``base`` is the base tensor (float32), ``deltas`` the contributors' task vectors (float32,
    the base's shape), ``weights`` one weight per contributor, ``options`` the method's options
    (the merge's Params or the method's own options model).

    A method may carry a ``prepare(model: ModelDeltas, options) -> Any`` attribute: the stream
    calls it once before merging and passes what it returns as ``ctx.shared`` to every call (a
    statistic over the whole model, e.g. TIES's global top-k thresholds).
    """

    def __call__(
        self,
        base: Tensor,
        deltas: list[Tensor],
        weights: list[float],
        ctx: TensorContext,
        options: Any,
    ) -> Tensor: ...


class ModelMethod(Protocol):
    """A merge that needs the model and data; all task vectors are in memory (no streaming).

    ``deltas`` maps each mergeable parameter name to the contributors' task vectors, ``prompts``
    holds one list of prompts per contributor, ``progress(description, completed, total)``
    reports progress. Returns the merged task vector of every name in ``deltas``.
    """

    def __call__(
        self,
        base_model: Any,
        tokenizer: Any,
        deltas: dict[str, list[Tensor]],
        weights: list[float],
        prompts: list[list[str]],
        options: Any,
        seed: int,
        progress: Callable[[str, int, int], None],
    ) -> dict[str, Tensor]: ...
