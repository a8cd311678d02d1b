"""Batched greedy generation for evaluators: deterministic, left-padded, chat-templated."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["encode_prompt", "format_prompt", "generate", "has_chat_template"]


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: Any, prompt: str, *, chat: bool = True) -> str:
    """``prompt`` as one user turn plus the generation prompt when ``chat`` and a template exist.

    Otherwise ``prompt`` unchanged. Training (:mod:`audit.interventions.lora`) and generation use
    this same function, so a fine-tuned model sees at inference exactly what it was trained on.
    """
    if chat and has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return str(text)
    return prompt


def encode_prompt(tokenizer: Any, prompt: str, *, chat: bool = True) -> list[int]:
    """Token ids of :func:`format_prompt`'s text.

    A chat template writes its own special tokens (BOS included), so templated text is encoded
    without the tokenizer's; raw text gets them (e.g. a BOS token) as for any plain prompt.
    """
    templated = chat and has_chat_template(tokenizer)
    text = format_prompt(tokenizer, prompt, chat=chat)
    ids = tokenizer(text, add_special_tokens=not templated)["input_ids"]
    return [int(i) for i in ids]


def pad_token_id(tokenizer: Any) -> int:
    """The id used for padding: the pad token, else eos, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def model_device(model: Any) -> Any:
    """The torch device a model's parameters live on."""
    device = getattr(model, "device", None)
    if device is not None:
        return device
    return next(model.parameters()).device


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    chat: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Greedy completions of ``prompts``, in their order.

    Prompts are formatted by :func:`format_prompt`, sorted by token length (longest first, so
    the largest batch runs first and padding is minimal), left-padded into batches of
    ``batch_size`` and decoded greedily with the KV cache under ``torch.inference_mode()``.
    Only the new tokens are decoded (special tokens skipped, whitespace stripped). Padding is
    built here, so the tokenizer is left untouched. ``progress(done, total)`` is called after
    each batch with the number of prompts done.
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    total = len(prompts)
    if total == 0:
        return []

    encoded = [encode_prompt(tokenizer, p, chat=chat) for p in prompts]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:  # an empty raw prompt still needs one token to condition on
        encoded = [ids or [int(bos)] for ids in encoded]
    order = sorted(range(total), key=lambda i: (-len(encoded[i]), i))
    pad_id = pad_token_id(tokenizer)
    device = model_device(model)
    outputs: list[str] = [""] * total

    # Greedy decoding whatever the checkpoint's generation_config says about sampling.
    config = copy.deepcopy(model.generation_config)
    config.do_sample = False
    config.num_beams = 1
    config.temperature = None
    config.top_p = None
    config.top_k = None
    config.max_new_tokens = max_new_tokens
    config.max_length = None
    config.use_cache = True
    config.pad_token_id = pad_id

    done = 0
    with torch.inference_mode():
        for start in range(0, total, batch_size):
            batch = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids = encoded[i]
                if ids:
                    input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                    attention_mask[row, width - len(ids) :] = 1
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=config,
            )
            new_tokens = generated[:, width:].cpu()
            for row, i in enumerate(batch):
                text = tokenizer.decode(new_tokens[row].tolist(), skip_special_tokens=True)
                outputs[i] = text.strip()
            done += len(batch)
            if progress is not None:
                progress(done, total)
    return outputs
