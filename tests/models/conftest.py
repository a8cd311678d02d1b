"""Fixtures shared by the model tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.models.handle import ModelHandle


@pytest.fixture(scope="module")
def handle(tiny_checkpoint: Path) -> ModelHandle:
    """The tiny checkpoint as a handle, loaded once per module."""
    return ModelHandle("tiny", "key", tiny_checkpoint)
