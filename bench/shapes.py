"""Model shapes the benchmarks share (random weights, built from a config: no download)."""

from __future__ import annotations

SMOLLM2_135M: dict[str, int] = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
)
"""SmolLM2-135M(-Instruct)'s Llama shape (134.5M parameters with tied embeddings)."""
