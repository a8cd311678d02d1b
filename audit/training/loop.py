"""The fine-tuning loop every training intervention shares (``lora``, ``alignguard``,
``backdoor``, the subspace variants, ``somf``'s data steps, the safety mask): prompt/response
pairs encoded as chat turns, seeded batches, AdamW with clipped gradients, an optional regulariser
added to each step's loss, and hooks for full-parameter variants. It runs on one device,
``ctx.device`` (data-parallel training, DDP/FSDP, is not done here)."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from audit.faults import fault_point
from audit.plugins import RunContext, TrainedModel

if TYPE_CHECKING:
    from audit.models.handle import ModelHandle

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "IGNORE_INDEX",
    "PrepareRegularizer",
    "Regularizer",
    "TrainingLog",
    "TrainingParams",
    "batches",
    "encode_pairs",
    "fine_tune",
    "parent_of",
    "target_modules",
    "total_steps",
    "train",
    "wrap_lora",
]


DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn"],
}
"""LoRA target modules by ``config.model_type``; other architectures use peft's own defaults."""

IGNORE_INDEX = -100


class TrainingParams(Protocol):
    """What the loop reads from an intervention's parameters (``LoraIntervention.Params`` and
    its subclasses)."""

    @property
    def data(self) -> Any: ...

    @property
    def r(self) -> int: ...

    @property
    def alpha(self) -> int: ...

    @property
    def dropout(self) -> float: ...

    @property
    def target_modules(self) -> list[str] | None: ...

    @property
    def steps(self) -> int: ...

    @property
    def epochs(self) -> float | None: ...

    @property
    def lr(self) -> float: ...

    @property
    def batch_size(self) -> int: ...

    @property
    def max_length(self) -> int: ...

    @property
    def seed(self) -> int | None: ...


def total_steps(p: TrainingParams, n_examples: int) -> int:
    """Optimiser steps for a data set of ``n_examples`` pairs: ``steps``, unless ``epochs`` is
    given (then ``ceil(epochs * n_examples / batch_size)``)."""
    if p.epochs is None:
        return p.steps
    return max(1, math.ceil(p.epochs * n_examples / min(p.batch_size, n_examples)))


Regularizer = Callable[[], tuple[Any, dict[str, float]]]
"""Adds to the task loss: returns the term (a scalar tensor) and its parts, for the log."""

PrepareRegularizer = Callable[[Any, Any, "ModelHandle"], Callable[[Any], Regularizer | None]]
"""``prepare(model, tokenizer, parent)`` runs on the parent model before the adapter exists
(e.g. to compute a Fisher, or to check the data against the tokenizer); it returns
``attach(peft_model) -> regularizer`` (``None``: no regulariser)."""


def parent_of(inputs: Mapping[str, ModelHandle], name: str) -> ModelHandle:
    """The single parent a fine-tuning intervention starts from."""
    if len(inputs) != 1:
        got = ", ".join(sorted(inputs)) or "none"
        raise ValueError(
            f'the {name} intervention fine-tunes exactly one parent model (from = "NAME"); '
            f"got {len(inputs)}: {got}"
        )
    (handle,) = inputs.values()
    return handle


def fine_tune(
    p: TrainingParams,
    inputs: Mapping[str, ModelHandle],
    ctx: RunContext,
    *,
    name: str,
    prepare: PrepareRegularizer | None = None,
    records: Sequence[Any] | None = None,
    full: bool = False,
) -> TrainedModel:
    """The LoRA fine-tune shared by ``lora`` and its regularised variants.

    ``prepare`` (optional) sees the freshly loaded parent before the adapter is added and
    returns a function that builds the regulariser added to every step's loss. Everything else
    (data, batches, optimiser, seeds) is identical, so with a regulariser that is exactly zero
    the result is bit-identical to plain LoRA.

    ``records`` (prompt/response records) replaces loading ``p.data``, for interventions that
    build their own training set (e.g. poisoned data). ``full`` trains every weight of the model
    instead of a LoRA adapter (``r``, ``alpha``, ``dropout`` and ``target_modules`` unused; no
    ``adapter/`` is written).
    """
    import torch

    from audit.data.records import PairRecord, load_records
    from audit.models.loading import load_checkpoint

    handle = parent_of(inputs, name)
    seed = p.seed if p.seed is not None else ctx.seed
    if records is None:
        records = load_records(p.data, PairRecord, suite_dir=ctx.suite_dir, split="train")

    # A fresh copy from disk: the parent's in-memory model (if loaded) is never touched.
    model, tokenizer = load_checkpoint(
        handle.path,
        allow_pickle=handle.allow_pickle,
        trust_remote_code=handle.trust_remote_code,
    )
    model.to(ctx.device)
    examples = encode_pairs(tokenizer, records, p.max_length, name=name)
    total = total_steps(p, len(examples))
    attach = prepare(model, tokenizer, handle) if prepare is not None else None

    # Seed privately: the caller's random state is the same before and after.
    kind = torch.device(ctx.device).type
    with torch.random.fork_rng(
        devices=[] if kind == "cpu" else None, device_type="cuda" if kind == "cpu" else kind
    ):
        torch.manual_seed(seed)
        peft_model = model.requires_grad_(True) if full else wrap_lora(model, p)
        regularizer = attach(peft_model) if attach is not None else None
        log = train(peft_model, examples, p, total, seed, ctx, name, regularizer)

    work_dir = ctx.work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    if not full:
        peft_model.save_pretrained(work_dir / "adapter", safe_serialization=True)
        _sort_target_modules(work_dir / "adapter" / "adapter_config.json")
    with open(work_dir / "training_log.jsonl", "w", encoding="utf-8") as out:
        for row in log.rows:
            out.write(json.dumps(row) + "\n")
    merged = peft_model if full else peft_model.merge_and_unload()
    merged.eval()
    info = {
        "steps": total,
        "examples": len(examples),
        "tokens": log.tokens,
        "target_tokens": log.target_tokens,
        "final_loss": log.rows[-1]["loss"] if log.rows else None,
    }
    return TrainedModel(model=merged, tokenizer=tokenizer, info=info)


def _sort_target_modules(config: Path) -> None:
    """Rewrite a saved adapter config with ``target_modules`` sorted: peft keeps them as a set,
    saved in hash-seed order, and the store's files should not depend on the interpreter."""
    data = json.loads(config.read_text(encoding="utf-8"))
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def target_modules(model: Any, params: TrainingParams) -> list[str] | None:
    if params.target_modules is not None:
        return list(params.target_modules)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    defaults = DEFAULT_TARGET_MODULES.get(str(model_type))
    return list(defaults) if defaults is not None else None


def wrap_lora(model: Any, params: TrainingParams) -> Any:
    """``model`` wrapped in a fresh, trainable LoRA adapter."""
    from peft import LoraConfig, get_peft_model

    targets = target_modules(model, params)
    try:
        config = LoraConfig(
            r=params.r,
            lora_alpha=params.alpha,
            lora_dropout=params.dropout,
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():
            # peft 0.21 calls a transformers 5 deprecated alias; nothing for users to act on.
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
            return get_peft_model(model, config)
    except ValueError as error:
        if targets is not None:
            raise
        model_type = getattr(model.config, "model_type", "?")
        raise ValueError(
            f"lora: no default target modules for architecture {model_type!r}; set "
            f"target_modules (names of linear layers to adapt) in the suite ({error})"
        ) from error


def encode_pairs(
    tokenizer: Any, records: Sequence[Any], max_length: int, *, name: str = "lora"
) -> list[tuple[list[int], list[int]]]:
    """``(input_ids, labels)`` per pair: the prompt masked out, response + eos as targets.

    The prompt is encoded alone, exactly as generation encodes it, and the response after it,
    so training conditions on the same tokens inference will. Over-long examples keep at least
    half of ``max_length`` for the response and drop the start of the prompt.
    """
    from audit.models.generation import encode_prompt

    eos = tokenizer.eos_token_id
    examples: list[tuple[list[int], list[int]]] = []
    truncated = 0
    for record in records:
        prompt_ids = encode_prompt(tokenizer, record.prompt, chat=True)
        response_ids = [
            int(i) for i in tokenizer(record.response, add_special_tokens=False)["input_ids"]
        ]
        if eos is not None:
            response_ids.append(int(eos))
        if len(prompt_ids) + len(response_ids) > max_length:
            truncated += 1
            response_ids = response_ids[: max(max_length - len(prompt_ids), max_length // 2)]
            prompt_ids = prompt_ids[max(0, len(prompt_ids) + len(response_ids) - max_length) :]
        examples.append(
            (prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids)
        )
    if truncated:
        warnings.warn(
            f"{name}: {truncated} of {len(records)} examples exceed max_length={max_length} "
            "tokens and were truncated",
            stacklevel=3,
        )
    return examples


def batches(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Index batches for ``steps`` steps, read in order from successive seeded shuffles."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    size = min(batch_size, n)
    stream: list[int] = []
    batches: list[list[int]] = []
    for _ in range(steps):
        while len(stream) < size:
            stream.extend(torch.randperm(n, generator=generator).tolist())
        batches.append(stream[:size])
        del stream[:size]
    return batches


@dataclass
class TrainingLog:
    """Per-step rows (loss and regulariser parts) and the tokens trained on."""

    rows: list[dict[str, float]] = field(default_factory=list)
    tokens: int = 0
    target_tokens: int = 0


def train(
    peft_model: Any,
    examples: list[tuple[list[int], list[int]]],
    params: TrainingParams,
    total: int,
    seed: int,
    ctx: RunContext,
    name: str = "lora",
    regularizer: Regularizer | None = None,
    *,
    make_optimizer: Callable[[list[Any]], Any] | None = None,
    after_backward: Callable[[], None] | None = None,
    after_step: Callable[[], None] | None = None,
) -> TrainingLog:
    """Run the optimiser for ``total`` steps; the log of every step.

    Hooks for full-parameter variants (all ``None``: plain AdamW, as ``lora`` trains):
    ``make_optimizer(trainable)`` replaces AdamW (needs ``zero_grad`` and ``step``);
    ``after_backward()`` runs before gradient clipping (e.g. to project the gradients);
    ``after_step()`` runs after each optimiser step.
    """
    import torch

    pad_id = 0
    device = ctx.device
    trainable = [q for q in peft_model.parameters() if q.requires_grad]
    if make_optimizer is None:
        optimizer = torch.optim.AdamW(trainable, lr=params.lr)
    else:
        optimizer = make_optimizer(trainable)
    log = TrainingLog()
    peft_model.train()
    ctx.progress(name, 0, total)
    for step, batch in enumerate(batches(len(examples), params.batch_size, total, seed), 1):
        width = max(len(examples[i][0]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids, targets = examples[i]
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            labels[row, : len(ids)] = torch.tensor(targets, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        out = peft_model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            labels=labels.to(device),
            use_cache=False,
        )
        loss = out.loss
        entry: dict[str, float] = {"step": step, "loss": float(loss.detach())}
        if regularizer is not None:
            term, parts = regularizer()
            loss = loss + term
            entry.update(parts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if after_backward is not None:
            after_backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        if after_step is not None:
            after_step()
        log.rows.append(entry)
        log.tokens += int(attention_mask.sum())
        log.target_tokens += int((labels[:, 1:] != IGNORE_INDEX).sum())
        ctx.progress(name, step, total)
        fault_point("train.step")
    peft_model.eval()
    return log
