"""Contributor checkpoints for the merge golden tests: a base plus a chosen task vector each."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_state(directory: Path) -> dict[str, Any]:
    """The tensors of a checkpoint directory's ``model.safetensors``."""
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


def write_contributors(
    base: Path,
    root: Path,
    noise: Callable[[int, int, Any], Any],
    zero_sum: tuple[str, int],
    count: int = 3,
) -> list[Path]:
    """``[base, c0, c1, ...]``: contributor ``c`` is the base plus ``noise(c, j, tensor)`` on
    its ``j``-th floating tensor (sorted names). At ``zero_sum`` (name, flat index) the task
    vectors are 0, +1000 and -1000 (contributors 1 and 2 cancel exactly)."""
    from safetensors.torch import save_file

    state = read_state(base)
    out = [base]
    for c in range(count):
        directory = root / f"c{c}"
        shutil.copytree(base, directory)
        tensors = {}
        for j, name in enumerate(sorted(state)):
            t = state[name]
            tensors[name] = (t.float() + noise(c, j, t)).to(t.dtype) if t.is_floating_point() else t
        name, i = zero_sum
        tensors[name].view(-1)[i] = state[name].view(-1)[i] + (0.0, 1000.0, -1000.0)[c % 3]
        tensors.pop("lm_head.weight", None)  # tied to the embeddings
        save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
        out.append(directory)
    return out
