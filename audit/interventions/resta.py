"""The ``resta`` intervention: ``θ = θ_model + s · (θ_aligned − θ_unaligned)``, a safety vector.

RESTA (Bhardwaj et al., "Language Models are Homer Simpson! Safety Re-Alignment of Fine-tuned
Language Models through Task Arithmetic", arXiv 2402.11746), its arithmetic only (the paper's
optional DARE step on the fine-tune's delta is left out; chain a ``merge`` for that).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from audit.plugins import ModelRef, Placement, RunContext, TrainedModel
from audit.plugins import Params as BaseParams

if TYPE_CHECKING:
    from audit.models.handle import ModelHandle

__all__ = ["RestaIntervention"]


class RestaIntervention:
    """Add ``scale`` times the safety vector ``θ_aligned − θ_unaligned`` to the input model.

    Streamed one tensor at a time like the merge (:mod:`audit.merging.stream`): the input model
    is the stream's base and ``aligned``/``unaligned`` its two contributors with weights
    ``+1``/``−1``, so ``θ_model + s·((θ_a − θ_model) − (θ_u − θ_model))`` is computed in float32
    and cast to the input model's dtype (equal to ``θ_model + s·(θ_a − θ_u)`` up to float32
    rounding). A PEFT adapter may stand for ``aligned``/``unaligned`` only if it was trained on
    the input model. Non-float tensors, and tensors whose shape differs, keep the input model's.
    """

    name: ClassVar[str] = "resta"
    version: ClassVar[str] = "1"

    class Params(BaseParams):
        """RESTA parameters: ``aligned`` and ``unaligned`` (the model safety was removed from,
        or the pre-alignment base) define the safety vector; ``scale`` (1.0) multiplies it."""

        aligned: ModelRef
        unaligned: ModelRef
        scale: float = 1.0

    def __init__(self, params: RestaIntervention.Params) -> None:
        self.params = params

    @classmethod
    def devices(cls, params: RestaIntervention.Params) -> Placement:
        """The CPU: the safety vector is streamed from disk one tensor at a time."""
        return "cpu"

    def split_inputs(
        self, inputs: Mapping[str, ModelHandle]
    ) -> tuple[ModelHandle, ModelHandle, ModelHandle]:
        """The input model, the aligned and the unaligned model, checked."""
        p = self.params
        for ref in (p.aligned, p.unaligned):
            if ref not in inputs:
                raise ValueError(f"resta: {ref!r} is not among its inputs")
        if p.aligned == p.unaligned:
            raise ValueError("resta: aligned and unaligned must be different models")
        others = [h for n, h in inputs.items() if n not in (p.aligned, p.unaligned)]
        if len(others) != 1:
            raise ValueError(f'resta realigns exactly one model (from = "NAME"); got {len(others)}')
        return others[0], inputs[p.aligned], inputs[p.unaligned]

    def apply(self, inputs: Mapping[str, ModelHandle], ctx: RunContext) -> TrainedModel:
        """Stream ``θ_model + scale · (θ_aligned − θ_unaligned)`` and load it."""
        from audit.merging.methods import method
        from audit.merging.stream import merge_to_directory, plan_merge
        from audit.models.loading import load_checkpoint

        model_h, aligned, unaligned = self.split_inputs(inputs)
        plan = plan_merge(
            model_h.path,
            [aligned.path, unaligned.path],
            suite_dir=ctx.suite_dir,
            trust_remote_code=model_h.trust_remote_code,
        )
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        out_dir = Path(tempfile.mkdtemp(prefix="resta-", dir=ctx.work_dir))
        try:
            stats = merge_to_directory(
                plan,
                method("task_arithmetic").load(),
                [1.0, -1.0],
                out_dir,
                scaling=self.params.scale,
                progress=ctx.progress,
            )
            model, tokenizer = load_checkpoint(out_dir, trust_remote_code=model_h.trust_remote_code)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        info = {
            "model": model_h.name,
            "aligned": aligned.name,
            "unaligned": unaligned.name,
            "scale": self.params.scale,
            "tensors": stats.tensors,
            "merged": stats.merged,
            "copied_from_model": stats.copied,
            "tied": stats.tied,
        }
        return TrainedModel(model=model, tokenizer=tokenizer, info=info)
