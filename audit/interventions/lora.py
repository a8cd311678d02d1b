"""LoRA fine-tuning: one parent model plus prompt/response pairs in, a merged model out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, model_validator

from audit.plugins import PairData, Placement, RunContext, TrainedModel
from audit.plugins import Params as BaseParams
from audit.training.loop import fine_tune, total_steps

if TYPE_CHECKING:
    from audit.models.handle import ModelHandle

__all__ = ["LoraIntervention"]


class LoraIntervention:
    """Fine-tune a LoRA adapter on prompt/response pairs and merge it into the parent.

    Each pair is trained as one chat turn: the prompt goes through the tokenizer's chat template
    (exactly as :func:`audit.models.generation.generate` formats it), and the loss covers only
    the response tokens and the eos token. Training is AdamW at a constant learning rate with
    gradients clipped to norm 1, on batches drawn from seeded shuffles of the data, so the same
    seed gives the same weights (on CPU; GPU kernels may add nondeterminism). The parent model
    is reloaded from its checkpoint, never modified in memory.

    ``ctx.work_dir`` receives ``adapter/`` (an ordinary peft adapter directory, safetensors)
    and ``training_log.jsonl`` (the loss of every step).
    """

    name: ClassVar[str] = "lora"
    version: ClassVar[str] = "1"

    class Params(BaseParams):
        """LoRA fine-tuning parameters.

        ``data``: a data spec of prompt/response pairs (``train`` split). ``steps``: optimiser
        steps, unless ``epochs`` is given (then ``ceil(epochs * len(data) / batch_size)``).
        ``target_modules``: module names to adapt; ``None`` picks them by architecture
        (:data:`audit.training.loop.DEFAULT_TARGET_MODULES`, else peft's
        defaults). ``seed``: ``None`` uses the
        run's seed. ``max_length``: tokens per example (prompt and response together).
        """

        data: PairData
        r: int = Field(default=8, gt=0)
        alpha: int = Field(default=16, gt=0)
        dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
        target_modules: list[str] | None = None
        steps: int = Field(default=100, gt=0)
        epochs: float | None = Field(default=None, gt=0)
        lr: float = Field(default=1e-3, gt=0)
        batch_size: int = Field(default=16, gt=0)
        max_length: int = Field(default=128, ge=2)
        seed: int | None = None

        @model_validator(mode="after")
        def _steps_or_epochs(self) -> LoraIntervention.Params:
            if self.epochs is not None and "steps" in self.model_fields_set:
                raise ValueError("give either 'steps' or 'epochs', not both")
            return self

    def __init__(self, params: LoraIntervention.Params) -> None:
        self.params = params

    @classmethod
    def devices(cls, params: LoraIntervention.Params) -> Placement:
        """One device: the fine-tune runs on the run's device (the first of a list)."""
        return "single"

    def total_steps(self, n_examples: int) -> int:
        """Optimiser steps for a data set of ``n_examples`` pairs."""
        return total_steps(self.params, n_examples)

    def apply(self, inputs: Mapping[str, ModelHandle], ctx: RunContext) -> TrainedModel:
        """Train on ``params.data`` starting from the single parent in ``inputs``."""
        return fine_tune(self.params, inputs, ctx, name=self.name)
