"""Train the organism from scratch: a small Llama causal LM, AdamW, loss on assistant tokens."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audit.organism.config import OrganismConfig

Encoded = tuple[list[int], int]
"""A chat turn's token ids and how many of them are the prompt (no loss on those)."""


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch and use deterministic kernels inside the block; restore both after.

    The global RNG state and the deterministic-algorithms flag are the caller's, so they are
    put back; the number of torch threads is left alone (results are reproducible for a given
    thread count).
    """
    import torch

    was = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was, warn_only=warn_only)


def make_model(config: OrganismConfig, vocab_size: int, special_ids: dict[str, int]) -> Any:
    """A freshly initialised ``LlamaForCausalLM`` of the config's size (seed it first)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.max_length,
        tie_word_embeddings=True,
        bos_token_id=special_ids["bos"],
        eos_token_id=special_ids["eos"],
        pad_token_id=special_ids["pad"],
    )
    model = LlamaForCausalLM(llama)
    model.generation_config.pad_token_id = special_ids["pad"]
    model.generation_config.bos_token_id = special_ids["bos"]
    model.generation_config.eos_token_id = special_ids["eos"]
    return model


def lr_at(step: int, config: OrganismConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = (step - config.warmup_steps) / span
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batches(
    pools: Mapping[str, Sequence[Encoded]], config: OrganismConfig
) -> Iterator[list[Encoded]]:
    """``config.steps`` batches of examples whose kind is drawn by ``config.mix`` (seeded).

    Examples are drawn ``config.length_buckets`` batches at a time, sorted by length and cut
    into batches, which are then shuffled: batches of similar lengths waste little on padding.
    """
    rng = random.Random(config.seed)
    kinds = [k for k, _ in config.mix if pools.get(k)]
    weights = [w for k, w in config.mix if pools.get(k)]
    size = config.batch_size
    left = config.steps
    while left > 0:
        chosen = rng.choices(kinds, weights=weights, k=size * config.length_buckets)
        drawn = sorted((rng.choice(pools[k]) for k in chosen), key=lambda e: len(e[0]))
        group = [drawn[i : i + size] for i in range(0, len(drawn), size)]
        rng.shuffle(group)
        yield from group[:left]
        left -= len(group)


def collate(batch: list[Encoded], pad_id: int) -> dict[str, Any]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 off the response)."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(batch):
        tensor = torch.tensor(ids, dtype=torch.long)
        input_ids[row, : len(ids)] = tensor
        attention_mask[row, : len(ids)] = 1
        labels[row, n_prompt : len(ids)] = tensor[n_prompt:]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def train(
    model: Any,
    pools: Mapping[str, Sequence[Encoded]],
    config: OrganismConfig,
    pad_id: int,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[float]:
    """Train ``model`` in place with AdamW; returns the loss of every step.

    Call inside :func:`deterministic` (after building the model there) for a reproducible run.
    """
    import torch

    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, 0.98), weight_decay=config.weight_decay
    )
    losses: list[float] = []
    every = max(1, config.steps // 100)
    for step, batch in enumerate(batches(pools, config)):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        loss = model(**collate(batch, pad_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if progress is not None and ((step + 1) % every == 0 or step + 1 == config.steps):
            progress("training the organism", step + 1, config.steps)
    model.eval()
    return losses
