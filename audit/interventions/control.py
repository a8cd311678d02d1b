"""Matched controls for a defence that masks or shrinks a merge's update.

A defence (DAM, Concrete, SOMF, TIES' trimming) that lowers an attack's success also changes
how much of the contributors' update reaches the merged model. Its effect is only evidence of
the defence if it beats a control that changes the update *as much* without the defence's
knowledge. This intervention builds those controls from the defended model ``of``, the
``base`` and the contributors (``models = [...]``), all task vectors ``τ_i = θ_i − θ_base``:

- the plain merge ``U = Σ_i w_i τ_i`` (task arithmetic, ``weights`` default 1 each, as the
  ``merge`` intervention's);
- the defended update ``D = θ_of − θ_base``; its **keep rate** ``k`` = the share of the
  coordinates where ``U ≠ 0`` at which ``D ≠ 0`` as well, and its **norm ratio**
  ``r = ‖D‖ / ‖U‖`` (both over every floating-point tensor of the model);
- ``kind = "norm_matched"``: ``θ_base + r · U`` — task arithmetic shrunk to the defence's norm;
- ``kind = "random_mask"``: ``θ_base + m ⊙ U`` with ``m ~ Bernoulli(k)`` per coordinate
  (seeded) — a mask that knows nothing, keeping as many coordinates as the defence.

Both report ``keep_rate`` and ``norm_ratio`` (of ``of``) and their own in ``training``, so the
report shows the defence's size next to its effect. Every model is held in memory (as the
``dam`` and ``concrete`` merges do).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from audit.plugins import ModelRef, Placement, RunContext, TrainedModel
from audit.plugins import Params as BaseParams

if TYPE_CHECKING:
    from audit.models.handle import ModelHandle

__all__ = ["CONTROL_KINDS", "ControlIntervention", "control_tables", "update_stats"]

_ZERO = 1e-12
"""A coordinate of an update counts as kept when its magnitude exceeds this share of the
largest magnitude of its tensor's plain-merge update."""


CONTROL_KINDS = {"control_norm": "norm_matched", "control_random": "random_mask"}
"""The matched controls ``controls = true`` adds, by the suffix of their model name."""


def control_tables(
    of: str, base: str, contributors: Sequence[str], weights: Sequence[float] | None
) -> dict[str, dict[str, Any]]:
    """The ``[models]`` tables of the matched controls of the model ``of``, a defended merge of
    ``contributors`` onto ``base`` whose plain merge weighs them by ``weights`` (``None``: 1
    each): one table per entry of :data:`CONTROL_KINDS`. An intervention's ``controls`` hook
    (:class:`audit.plugins.InterventionHooks`) returns these."""
    tables: dict[str, dict[str, Any]] = {}
    for suffix, kind in CONTROL_KINDS.items():
        table: dict[str, Any] = {
            "intervention": ControlIntervention.name,
            "of": of,
            "base": base,
            "models": list(contributors),
            "kind": kind,
        }
        if weights is not None:
            table["weights"] = [float(w) for w in weights]
        tables[suffix] = table
    return tables


class ControlIntervention:
    """A control of equal size for a masking or shrinking defence; see the module docstring."""

    name: ClassVar[str] = "control"
    version: ClassVar[str] = "1"

    class Params(BaseParams):
        """``of``: the defended model; ``base``: the model the task vectors are taken from;
        ``kind``: ``norm_matched`` or ``random_mask``; ``weights``: one per contributor (the
        plain merge's); ``seed``: the random mask's (``None``: the run's)."""

        of: ModelRef
        base: ModelRef
        kind: Literal["norm_matched", "random_mask"]
        weights: list[float] | None = None
        seed: int | None = None

    def __init__(self, params: ControlIntervention.Params) -> None:
        self.params = params

    @classmethod
    def devices(cls, params: ControlIntervention.Params) -> Placement:
        """The CPU: the state dicts are combined in CPU memory."""
        return "cpu"

    def apply(self, inputs: Mapping[str, ModelHandle], ctx: RunContext) -> TrainedModel:
        """The control model, with the defence's and the control's keep rate and norm ratio."""
        import torch

        from audit.models.loading import load_checkpoint

        p = self.params
        for ref in (p.of, p.base):
            if ref not in inputs:
                raise ValueError(f"control: {ref!r} is not among its inputs")
        contributors = [h for n, h in inputs.items() if n not in (p.of, p.base)]
        if not contributors:
            raise ValueError("control: name the contributors of the plain merge: models = [...]")
        weights = p.weights if p.weights is not None else [1.0] * len(contributors)
        if len(weights) != len(contributors):
            raise ValueError(
                f"control: {len(weights)} weights for {len(contributors)} contributors"
            )

        def state(handle: ModelHandle) -> dict[str, Any]:
            model, _ = load_checkpoint(handle.path, allow_pickle=handle.allow_pickle)
            return _unique(model.state_dict())

        model, tokenizer = load_checkpoint(inputs[p.base].path)
        base = _unique(model.state_dict())
        defended = state(inputs[p.of])
        plain: dict[str, Any] = {}
        for w, handle in zip(weights, contributors, strict=True):
            for name, value in state(handle).items():
                same = name in base and value.shape == base[name].shape
                if same and base[name].is_floating_point():
                    plain[name] = plain.get(name, 0) + w * (value - base[name])
        update = {n: defended[n] - base[n] for n in plain if n in defended}
        of_keep, of_ratio = update_stats(update, plain)
        generator = torch.Generator().manual_seed(p.seed if p.seed is not None else ctx.seed)
        control: dict[str, Any] = {}
        for name, u in plain.items():
            if p.kind == "norm_matched":
                control[name] = of_ratio * u
            else:
                keep = torch.rand(u.shape, generator=generator) < of_keep
                control[name] = u * keep.to(u.dtype)
        own_keep, own_ratio = update_stats(control, plain)
        live = model.state_dict()  # shares storage with the parameters (tied ones once)
        with torch.no_grad():
            for name, c in control.items():
                live[name].copy_((base[name] + c).to(live[name].dtype))
        info = {
            "kind": p.kind,
            "of": p.of,
            "of_keep_rate": of_keep,
            "of_norm_ratio": of_ratio,
            "keep_rate": own_keep,
            "norm_ratio": own_ratio,
        }
        return TrainedModel(model=model, tokenizer=tokenizer, info=info)


def _unique(state: Mapping[str, Any]) -> dict[str, Any]:
    """A state dict's tensors, copied, each storage once (a tied head is its embeddings)."""
    seen: set[int] = set()
    out = {}
    for name, value in state.items():
        if value.data_ptr() in seen:
            continue
        seen.add(value.data_ptr())
        out[name] = value.detach().clone()
    return out


def update_stats(update: Mapping[str, Any], plain: Mapping[str, Any]) -> tuple[float, float]:
    """(keep rate, norm ratio) of ``update`` against the plain merge's update ``plain``: the
    share of ``plain``'s non-zero coordinates where ``update`` is non-zero too, and
    ``‖update‖ / ‖plain‖`` over all tensors."""
    kept = total = 0
    num = den = 0.0
    for name, u in plain.items():
        u = u.float()
        d = update[name].float() if name in update else u * 0
        scale = float(u.abs().max()) if u.numel() else 0.0
        live = u.abs() > _ZERO * scale
        total += int(live.sum())
        kept += int((live & (d.abs() > _ZERO * scale)).sum())
        num += float((d * d).sum())
        den += float((u * u).sum())
    keep = kept / total if total else 1.0
    ratio = math.sqrt(num / den) if den > 0 else 0.0
    return keep, ratio
