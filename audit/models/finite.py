"""Refuse models whose weights are not finite (a diverged fine-tune, a corrupted checkpoint).

A model with NaN or infinite weights still "generates": its logits are NaN, greedy decoding
picks token 0 and the text is empty. Judged as it stands, such a model could pass a refusal
gate. So every model the runner builds or loads is checked here first, and a non-finite one
fails its step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from audit.errors import AuditError


class NonFiniteWeightsError(AuditError, ValueError):
    """A model has NaN or infinite parameters or buffers."""


def check_finite(model: Any, what: str) -> None:
    """Raise :class:`NonFiniteWeightsError` naming the first non-finite tensor of ``model``."""
    import torch

    for name, tensor in _named_tensors(model):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise NonFiniteWeightsError(
                f"{what}: {bad} of {tensor.numel()} values of {name} are NaN or infinite, so "
                "its outputs mean nothing (a fine-tune that diverged: lower the learning rate; "
                "or a corrupted checkpoint). The step fails rather than be judged."
            )


def _named_tensors(model: Any) -> Iterator[tuple[str, Any]]:
    """Every parameter and buffer of ``model``. One that accelerate offloaded (spread with
    ``cpu`` in the list: a meta tensor in the model) is read from the copy its hook keeps."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.device.type != "meta":
            yield name, tensor
        elif (kept := _offloaded(model, name)) is not None:
            yield name, kept


def _offloaded(model: Any, name: str) -> Any:
    """The copy of the offloaded tensor ``name`` that the nearest accelerate hook above it holds
    (its ``weights_map``, keyed below the hook's module), or ``None``."""
    parts = name.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        hook = getattr(model.get_submodule(".".join(parts[:depth])), "_hf_hook", None)
        for each in getattr(hook, "hooks", [hook]):  # a SequentialHook holds several
            weights = getattr(each, "weights_map", None)
            if weights is not None:
                return weights[".".join(parts[depth:])]
    return None
