"""Shared fixtures of the mask-learning mergers' tests (concrete, dam)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def _load(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(path, local_files_only=True)


@pytest.fixture(scope="session")
def load_model() -> Callable[[Path], tuple[Any, Any]]:
    """Load a checkpoint directory as (model in eval mode, tokenizer), offline."""
    return _load


@pytest.fixture(scope="module")
def setup(
    tiny_checkpoint: Path, tiny_checkpoint_factory: Callable[[int], Path]
) -> tuple[Any, Any, dict[str, list[Any]]]:
    """The tiny base model, its tokenizer and two contributors' task vectors (every name)."""
    import torch

    torch.set_num_threads(1)
    base, tokenizer = _load(tiny_checkpoint)
    state = base.state_dict()
    deltas: dict[str, list[Any]] = {}
    for seed in (1, 2):
        other, _ = _load(tiny_checkpoint_factory(seed))
        for name, tensor in other.state_dict().items():
            deltas.setdefault(name, []).append((tensor - state[name]).float())
    return base, tokenizer, deltas
