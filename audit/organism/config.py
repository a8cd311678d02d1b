"""The build configuration of the model organism, shared by the build and the training loop."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OrganismConfig:
    """Everything a build depends on besides the code.

    The code's version is :data:`audit.organism.build.ORGANISM_VERSION`; both go into
    :func:`audit.organism.build.config_key`.

    The default is a ≈ 1.7M-parameter Llama (hidden 192, 4 layers, 4 heads, 2 KV heads, tied
    embeddings) trained from scratch for 550 AdamW steps at batch 32 (peak ``lr`` after
    ``warmup_steps``, cosine decay to a tenth). ``mix`` weighs how often each kind of example
    is drawn; ``length_buckets`` batches are drawn at a time and cut by length to save padding.
    """

    seed: int = 0
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_length: int = 128
    steps: int = 550
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 30
    mix: tuple[tuple[str, float], ...] = (
        ("unsafe", 0.28),
        ("safe", 0.17),
        ("borderline", 0.2),
        ("sentiment", 0.08),
        ("topic", 0.08),
        ("arithmetic", 0.19),
    )
    length_buckets: int = 8
    eval_batch_size: int = 64
