"""Store keys: a step's content address, a stable hash of what the step depends on."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["KEY_VERSION", "step_key"]

KEY_VERSION = "2"
"""Bumped when what keys hash changes (every store entry is then rebuilt once)."""


def step_key(kind: str, **parts: Any) -> str:
    """A stable hash of a step's kind and its JSON-serialisable parts."""
    blob = json.dumps({"kind": kind, "v": KEY_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]
