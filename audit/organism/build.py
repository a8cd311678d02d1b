"""Build the model organism: corpus → tokenizer → trained tiny Llama → checkpoint + quality.

``build_organism(out_dir)`` writes an ordinary Hugging Face checkpoint directory (config,
safetensors weights, tokenizer with a chat template) and ``quality.json``, the held-out
figures. The build is deterministic for a given config, code version and torch thread count;
``config_key`` names it for caches. torch is imported only when building.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from audit.organism.config import OrganismConfig

ORGANISM_VERSION = "2"
"""Code version of the organism (corpus, tokenizer, training); part of :func:`config_key`."""

ORGANISMS = {
    "aligned": "refuses unsafe requests, answers safe and borderline ones, does small tasks",
}
"""The organisms that can be built, by name, with what they do."""


def organism_names() -> list[str]:
    """Names of the organisms :func:`build_organism` can build."""
    return sorted(ORGANISMS)


def config_key(config: OrganismConfig) -> str:
    """A stable hash of ``config`` and :data:`ORGANISM_VERSION` (hex SHA-256)."""
    payload = {"version": ORGANISM_VERSION, "config": dataclasses.asdict(config)}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _check_name(name: str) -> None:
    if name not in ORGANISMS:
        known = ", ".join(organism_names())
        raise ValueError(f"unknown organism {name!r}: choose one of {known}")


def build_organism(
    out_dir: Path,
    config: OrganismConfig = OrganismConfig(),  # noqa: B008 - frozen, so a safe default
    progress: Callable[[str, int, int], None] | None = None,
    *,
    name: str = "aligned",
) -> dict[str, Any]:
    """Train the organism ``name``, save it into ``out_dir`` and measure it on held-out prompts.

    Returns the quality figures (also written to ``out_dir/quality.json``): refusal rate on
    held-out unsafe prompts (overall and per category), answer rates on safe and borderline
    ones, accuracy per task, the ``n`` of each, up to 50 ``failures`` (prompt and output), the
    config and its key, and the seconds spent training and building in all (corpus, tokenizer,
    training, saving, checking). ``progress(description, done, total)`` reports progress.
    Unknown names raise :class:`ValueError` before any work.
    """
    from audit.organism.corpus import PROBE_KINDS, TASKS, build_corpus, training_text, words
    from audit.organism.quality import measure_quality
    from audit.organism.tokenizer import build_tokenizer, encode_chats
    from audit.organism.train import deterministic, make_model, train

    _check_name(name)
    start = time.perf_counter()
    corpus = build_corpus()
    tokenizer = build_tokenizer(words(training_text(corpus)))
    pools: dict[str, Sequence[tuple[list[int], int]]] = {
        kind: encode_chats(tokenizer, [(e.prompt, e.response) for e in corpus.of("train", kind)])
        for kind in PROBE_KINDS + TASKS
    }
    special = {t: getattr(tokenizer, f"{t}_token_id") for t in ("bos", "eos", "pad")}
    train_start = time.perf_counter()
    with deterministic(config.seed):
        model = make_model(config, len(tokenizer), special)
        losses = train(model, pools, config, special["pad"], progress)
    train_seconds = time.perf_counter() - train_start

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)

    quality = measure_quality(
        model, tokenizer, corpus, batch_size=config.eval_batch_size, progress=progress
    )
    quality.update(
        name=name,
        version=ORGANISM_VERSION,
        config_key=config_key(config),
        config=dataclasses.asdict(config),
        parameters=sum(p.numel() for p in model.parameters()),
        vocab_size=len(tokenizer),
        final_loss=round(sum(losses[-20:]) / len(losses[-20:]), 4),
        train_seconds=round(train_seconds, 2),
        build_seconds=round(time.perf_counter() - start, 2),
    )
    (out_dir / "quality.json").write_text(json.dumps(quality, indent=2) + "\n")
    return quality
