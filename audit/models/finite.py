"""Refuse models whose weights are not finite (a diverged fine-tune, a corrupted checkpoint).

A model with NaN or infinite weights still "generates": its logits are NaN, greedy decoding
picks token 0 and the text is empty. Judged as it stands, such a model could pass a refusal
gate. So every model the runner builds or loads is checked here first, and a non-finite one
fails its step.
"""

from __future__ import annotations

from typing import Any

from audit.errors import AuditError


class NonFiniteWeightsError(AuditError, ValueError):
    """A model has NaN or infinite parameters or buffers."""


def check_finite(model: Any, what: str) -> None:
    """Raise :class:`NonFiniteWeightsError` naming the first non-finite tensor of ``model``."""
    import torch

    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, tensor in tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise NonFiniteWeightsError(
                f"{what}: {bad} of {tensor.numel()} values of {name} are NaN or infinite, so "
                "its outputs mean nothing (a fine-tune that diverged: lower the learning rate; "
                "or a corrupted checkpoint). The step fails rather than be judged."
            )
