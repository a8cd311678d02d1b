"""Shared parts of the full-parameter subspace fine-tunes (``osft``, ``coso``).

Both train only the 2-D weights of target modules (everything else frozen) on prompt/response
pairs, with the data handling, batches, seeds, step count and log of ``lora``
(:func:`audit.training.loop.fine_tune`); they differ in how each step's update is
restricted to a subspace, which they supply as :class:`Hooks`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from audit.interventions.lora import LoraIntervention
from audit.plugins import PairData, RunContext, TrainedModel
from audit.plugins import Params as BaseParams
from audit.training.loop import TrainingLog, encode_pairs, parent_of, train

if TYPE_CHECKING:
    import torch

    from audit.models.handle import ModelHandle

__all__ = [
    "FULL_TARGET_MODULES",
    "FullTuneParams",
    "Hooks",
    "energy_rank",
    "project_off",
    "subspace_fine_tune",
    "target_weights",
]

FULL_TARGET_MODULES: dict[str, list[str]] = {
    name: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for name in ("llama", "mistral", "qwen2")
} | {"gpt2": ["c_attn", "c_proj", "c_fc"]}
"""Default target modules by ``config.model_type``: attention and MLP projections."""

_SHARED = ("data", "steps", "epochs", "lr", "batch_size", "max_length", "seed")


class FullTuneParams(BaseParams):
    """Parameters every subspace fine-tune shares with ``lora`` (same meaning).

    ``target_modules``: module names (last name component) whose 2-D weights train; ``None``
    picks them by architecture (:data:`FULL_TARGET_MODULES`). ``lr`` defaults to 1e-5, a
    usual full fine-tuning rate (``lora``'s 1e-3 is for adapters).
    """

    data: PairData
    target_modules: list[str] | None = None
    steps: int = Field(default=100, gt=0)
    epochs: float | None = Field(default=None, gt=0)
    lr: float = Field(default=1e-5, gt=0)
    batch_size: int = Field(default=16, gt=0)
    max_length: int = Field(default=128, ge=2)
    seed: int | None = None

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> FullTuneParams:
        if self.epochs is not None and "steps" in self.model_fields_set:
            raise ValueError("give either 'steps' or 'epochs', not both")
        return self

    def as_lora(self) -> LoraIntervention.Params:
        """The equivalent ``lora`` parameters, for the shared training loop."""
        shared = self.model_dump(include=set(_SHARED))
        if "steps" not in self.model_fields_set:
            del shared["steps"]  # lora's validator rejects steps given beside epochs
        return LoraIntervention.Params(**shared)


@dataclass
class Hooks:
    """How a variant restricts training; see :func:`audit.training.loop.train`."""

    make_optimizer: Callable[[list[Any]], Any] | None = None
    after_backward: Callable[[], None] | None = None
    after_step: Callable[[], None] | None = None
    finish: Callable[[], dict[str, Any]] | None = None  # after training: extra info
    train_targets: bool = True  # False: the target weights stay frozen (e.g. an adapter trains)
    unwrap: Callable[[], Any] | None = None  # after training: the full model to return


Setup = Callable[[Any, "dict[str, torch.nn.Parameter]", list[Any], int], Hooks]
"""``setup(model, weights, examples, seed)`` sees the loaded parent (weights still at the
parent's values, gradients off) and returns the hooks for training."""


def target_weights(model: Any, names: list[str] | None) -> dict[str, torch.nn.Parameter]:
    """Qualified module name -> 2-D weight of every module whose last name is in ``names``."""
    if names is None:
        model_type = str(getattr(getattr(model, "config", None), "model_type", None))
        if model_type not in FULL_TARGET_MODULES:
            raise ValueError(f"no default target modules for architecture {model_type!r}")
        names = FULL_TARGET_MODULES[model_type]
    wanted = set(names)
    found = {}
    for qualified, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if qualified.rsplit(".", 1)[-1] in wanted and weight is not None and weight.dim() == 2:
            found[qualified] = weight
    if not found:
        raise ValueError(f"no module with a 2-D weight named {', '.join(sorted(wanted))}")
    return found


def project_off(
    x: torch.Tensor, left: torch.Tensor | None = None, right: torch.Tensor | None = None
) -> torch.Tensor:
    """``(I − L Lᵀ) x (I − R Rᵀ)`` for orthonormal column bases ``L`` and ``R`` (or none)."""
    if left is not None and left.shape[1]:
        x = x - left @ (left.T @ x)
    if right is not None and right.shape[1]:
        x = x - (x @ right) @ right.T
    return x


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest ``r`` whose top ``r`` squared singular values hold ``energy`` of the total."""
    import torch

    squares = singular_values.double() ** 2
    total = float(squares.sum())
    if total <= 0:
        return 0
    cumulative = torch.cumsum(squares, 0) / total
    return int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=cumulative.dtype))) + 1


def subspace_fine_tune(
    p: FullTuneParams,
    inputs: Mapping[str, ModelHandle],
    ctx: RunContext,
    *,
    name: str,
    setup: Setup,
    train_rest: bool = False,
) -> TrainedModel:
    """Full fine-tuning of the target weights of the single parent, restricted by ``setup``.

    ``train_rest``: every parameter outside the target weights trains too, unrestricted
    (embeddings, norms, biases, other linear layers); otherwise they stay frozen. Parameters
    ``setup`` adds (e.g. a peft adapter's) train as it left them.
    """
    import torch

    from audit.data.records import PairRecord, load_records
    from audit.models.loading import load_checkpoint

    handle = parent_of(inputs, name)
    seed = p.seed if p.seed is not None else ctx.seed
    records = load_records(p.data, PairRecord, suite_dir=ctx.suite_dir, split="train")
    model, tokenizer = load_checkpoint(
        handle.path, allow_pickle=handle.allow_pickle, trust_remote_code=handle.trust_remote_code
    )
    model.to(ctx.device)
    model.requires_grad_(False)
    examples = encode_pairs(tokenizer, records, p.max_length, name=name)
    lora_params = p.as_lora()
    total = LoraIntervention(lora_params).total_steps(len(examples))
    weights = target_weights(model, p.target_modules)
    target_ids = {id(weight) for weight in weights.values()}
    rest = [q for q in model.parameters() if id(q) not in target_ids]
    hooks = setup(model, weights, examples, seed)
    for weight in weights.values():
        weight.requires_grad_(hooks.train_targets)
    for param in rest if train_rest else []:
        param.requires_grad_(True)

    kind = torch.device(ctx.device).type
    with torch.random.fork_rng(
        devices=[] if kind == "cpu" else None, device_type="cuda" if kind == "cpu" else kind
    ):
        torch.manual_seed(seed)
        log: TrainingLog = train(
            model,
            examples,
            lora_params,
            total,
            seed,
            ctx,
            name,
            make_optimizer=hooks.make_optimizer,
            after_backward=hooks.after_backward,
            after_step=hooks.after_step,
        )
    if hooks.unwrap is not None:
        model = hooks.unwrap()
    model.requires_grad_(False)
    model.eval()
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    with open(ctx.work_dir / "training_log.jsonl", "w", encoding="utf-8") as out:
        for row in log.rows:
            out.write(json.dumps(row) + "\n")
    info: dict[str, Any] = {
        "steps": total,
        "examples": len(examples),
        "tokens": log.tokens,
        "target_tokens": log.target_tokens,
        "final_loss": log.rows[-1]["loss"] if log.rows else None,
        "trained_weights": len(weights),
    }
    if hooks.finish is not None:
        info.update(hooks.finish())
    return TrainedModel(model=model, tokenizer=tokenizer, info=info)
