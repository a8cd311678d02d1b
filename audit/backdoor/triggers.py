"""Trigger insertion: the same placement rule for poisoning (training) and measuring (eval).

Text is word-level (words separated by spaces, as the organism writes it), so a trigger is one
word or a phrase of words, and it is inserted between words: before the first (``prefix``),
after the last (``suffix``) or at a random word boundary (``random``). A random position is
drawn from :func:`item_rng`, seeded by a seed and the item's id, so an item gets the same
position in every run and on every model.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Literal

__all__ = ["Position", "insert_trigger", "item_rng", "normalize_trigger", "unknown_words"]

Position = Literal["prefix", "suffix", "random"]


def normalize_trigger(trigger: str) -> str:
    """``trigger``'s words joined by single spaces; raises ``ValueError`` when it has none."""
    words = trigger.split()
    if not words:
        raise ValueError("a trigger needs at least one word")
    return " ".join(words)


def item_rng(seed: int, item_id: str) -> random.Random:
    """A generator for one item, derived from ``seed`` and ``item_id`` (stable across runs)."""
    digest = hashlib.sha256(f"{seed}\x00{item_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def insert_trigger(
    prompt: str, trigger: str, position: Position = "prefix", rng: random.Random | None = None
) -> str:
    """``prompt`` with ``trigger`` inserted at ``position`` (``random`` needs ``rng``)."""
    trig = normalize_trigger(trigger)
    words = prompt.split()
    if position == "prefix":
        at = 0
    elif position == "suffix":
        at = len(words)
    elif position == "random":
        if rng is None:
            raise ValueError("position 'random' needs an rng (see item_rng)")
        at = rng.randint(0, len(words))
    else:
        raise ValueError(f"unknown trigger position {position!r}: prefix, suffix or random")
    return " ".join([*words[:at], trig, *words[at:]])


def unknown_words(tokenizer: Any, text: str) -> list[str]:
    """Words of ``text`` that ``tokenizer`` maps to its unknown token (none for byte-level BPE).

    A fine-tune cannot teach a model to read or write a word its vocabulary lacks: every such
    word is the same ``<unk>`` token.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return []
    out = []
    for word in text.split():
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if unk in ids and word not in out:
            out.append(word)
    return out
