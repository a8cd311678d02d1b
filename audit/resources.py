"""Resources a step needs: disk in the store before a model is written, memory when it runs out.

A derived model is written to the store (``tmp/`` first, then renamed into ``entries/``). Before
an intervention starts, the runner checks the store's file system has room for a model the
size of its largest parent (:func:`checkpoint_bytes`), and before the model is saved, for the
model itself (:func:`model_bytes`: parameter count × dtype size); a model that would not fit
fails its step with a :class:`DiskSpaceError` saying how much is needed and free, instead of
a half-written entry and an ``OSError`` from deep inside a save.

A step that runs out of memory (``MemoryError``, torch's ``OutOfMemoryError``, a
``RuntimeError`` "out of memory") is an ordinary failed step: :func:`describe_error` says so in
its error text and :func:`free_memory` returns what can be returned before the next step.
"""

from __future__ import annotations

import contextlib
import gc
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from audit.store.core import StoreError

HEADROOM = 16 * 2**20
"""Bytes kept free beyond the estimate (tokenizer, config, manifest, file-system overhead)."""

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


class DiskSpaceError(StoreError):
    """The store's file system has no room for what a step is about to write."""


def format_size(n: float) -> str:
    """``n`` bytes for people: ``512 B``, ``1.5 MiB``, ``12.0 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def parse_size(text: str) -> int:
    """``10G``, ``500M``, ``1.5GiB``, ``64k``, ``1000`` → bytes (binary units)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size; write e.g. 10G, 500M, 64K or a number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def free_bytes(path: Path) -> int:
    """Free bytes on the file system of ``path`` (or of its nearest existing ancestor)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return int(shutil.disk_usage(p).free)


def checkpoint_bytes(directory: Path) -> int:
    """Total size of a checkpoint directory's weight files (0 if it cannot be read)."""
    total = 0
    with contextlib.suppress(OSError):
        for p in Path(directory).iterdir():
            if p.name.endswith(WEIGHT_SUFFIXES) and p.is_file():
                total += p.stat().st_size
    return total


def model_bytes(model: Any) -> int:
    """Bytes of a torch model's weights as saved: each distinct tensor's numel × dtype size."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in model.state_dict().values():
        ident = (tensor.data_ptr(), tensor.numel())
        if ident in seen and ident[0] != 0:
            continue  # tied weights are saved once
        seen.add(ident)
        total += tensor.numel() * tensor.element_size()
    return total


def ensure_free(root: Path, needed: int, what: str) -> None:
    """Raise :class:`DiskSpaceError` unless the store at ``root`` has room for ``needed`` bytes
    (plus 5% and :data:`HEADROOM`)."""
    if needed <= 0:
        return
    free = free_bytes(root)
    want = needed + needed // 20 + HEADROOM
    if free < want:
        raise DiskSpaceError(
            f"not enough free disk to write {what}: it needs about {format_size(needed)} "
            f"(+ {format_size(want - needed)} headroom) but the store's file system ({root}) "
            f"has {format_size(free)} free; free some space, e.g. `audit cache prune --cache "
            f"{root} --max-size SIZE`, or point --cache at a larger disk"
        )


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` means a step ran out of (host or accelerator) memory."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def describe_error(error: BaseException) -> str:
    """A failed step's error text: ``Type: message``, naming an out-of-memory failure as such."""
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if is_out_of_memory(error) and "out of memory" not in text.lower():
        text = f"out of memory ({text})"
    return text


def free_memory() -> None:
    """Collect garbage and return cached accelerator memory (after an out-of-memory failure)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None:
        return
    with contextlib.suppress(Exception):
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
