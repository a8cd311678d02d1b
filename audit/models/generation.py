"""Batched greedy generation for evaluators: deterministic, left-padded, chat-templated."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Prefill", "encode_prompt", "format_prompt", "generate", "has_chat_template"]


@dataclasses.dataclass
class Prefill:
    """What the forward pass over one batch's prompts gave while :func:`generate` ran.

    Row ``r`` of every field belongs to prompt ``indices[r]`` (a position in ``prompts``).
    ``attention_mask``: the batch's left-padded ``(rows, width)`` prompt mask (CPU); the prompts
    ran with position ids that follow it. ``logits``: ``(rows, vocab)`` next-token logits after
    each prompt. ``hidden_states``: for each index of the model's ``hidden_states``
    (0 = embeddings), the ``(rows, hidden)`` states at the prompt's last token. ``cache``: a
    copy of the prompts' key/value cache (the caller's to use up), or ``None`` when not asked
    for or the model returned none.
    """

    indices: list[int]
    attention_mask: Any
    logits: Any
    hidden_states: tuple[Any, ...]
    cache: Any


class _PrefillCapture:
    """Hooks on the model that keep what its first call in a :func:`generate` batch gave, when
    that call ran over the whole batch of prompts (``rows`` × ``width``): last-token logits,
    every hidden state at the last token (asked for on that call only) and a copy of the cache.
    """

    def __init__(self, model: Any, width: int, rows: int, want_cache: bool) -> None:
        self.shape, self.want_cache = (rows, width), want_cache
        self.calls = 0
        self.result: tuple[Any, tuple[Any, ...], Any] | None = None
        self.handles = [
            model.register_forward_pre_hook(self._before, with_kwargs=True),
            model.register_forward_hook(self._after, with_kwargs=True),
        ]

    def _is_prefill(self, args: Any, kwargs: Any) -> bool:
        ids = kwargs.get("input_ids", args[0] if args else None)
        return self.calls == 0 and ids is not None and tuple(ids.shape) == self.shape

    def _before(self, _module: Any, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
        if not self._is_prefill(args, kwargs):
            return None
        return args, {**kwargs, "output_hidden_states": True}

    def _after(self, _module: Any, args: Any, kwargs: Any, output: Any) -> None:
        prefill = self._is_prefill(args, kwargs)  # not a chunk of it, nor a decoding step
        self.calls += 1
        states = getattr(output, "hidden_states", None)
        if not prefill or not states:
            return
        cache = None
        if self.want_cache:
            cache = getattr(output, "cache", None)
            if cache is None:  # transformers before the rename
                cache = getattr(output, "past_key_values", None)
            cache = copy.deepcopy(cache) if cache is not None else None
        logits = output.logits[:, -1].float()
        self.result = (logits, tuple(h[:, -1].float() for h in states), cache)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


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
    prefill: Callable[[Prefill], None] | None = None,
    prefill_cache: bool = False,
) -> list[str]:
    """Greedy completions of ``prompts``, in their order.

    Prompts are formatted by :func:`format_prompt`, sorted by token length (longest first, so
    the largest batch runs first and padding is minimal), left-padded into batches of
    ``batch_size`` and decoded greedily with the KV cache under ``torch.inference_mode()``.
    Only the new tokens are decoded (special tokens skipped, whitespace stripped). Padding is
    built here, so the tokenizer is left untouched. ``progress(done, total)`` is called after
    each batch with the number of prompts done.

    ``prefill(batch)``, when given, is called after each batch (before ``progress``) with what
    the forward pass over its prompts gave (a :class:`Prefill`; with a copy of the key/value
    cache when ``prefill_cache``), so that a caller can measure the prompts without running
    them again; the model then also returns its hidden states while generating. A batch whose
    prompts did not run in one forward pass (e.g. a chunked prefill) is not reported. Only
    that first pass is asked for hidden states (by forward hooks on ``model``).
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
            capture = None
            if prefill is not None and hasattr(model, "register_forward_pre_hook"):
                capture = _PrefillCapture(model, width, len(batch), prefill_cache)
            try:
                generated = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=config,
                )
            finally:
                if capture is not None:
                    capture.remove()
            new_tokens = generated[:, width:].cpu()
            for row, i in enumerate(batch):
                text = tokenizer.decode(new_tokens[row].tolist(), skip_special_tokens=True)
                outputs[i] = text.strip()
            if prefill is not None and capture is not None and capture.result is not None:
                logits, states, cache = capture.result
                capture.result = None
                prefill(Prefill(list(batch), attention_mask, logits, states, cache))
            done += len(batch)
            if progress is not None:
                progress(done, total)
    return outputs
