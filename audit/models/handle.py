"""ModelHandle: a model of the suite as the runner passes it around, loaded on first use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ModelHandle:
    """A named model: where its checkpoint lies, its cache key and lineage.

    ``path`` is an ordinary Hugging Face checkpoint directory (config, safetensors weights,
    tokenizer). The model and tokenizer are loaded on first access of :attr:`model` or
    :attr:`tokenizer` and kept until :meth:`release`.
    """

    name: str
    key: str
    path: Path
    parents: tuple[str, ...] = ()
    allow_pickle: bool = False
    trust_remote_code: bool = False
    suite_dir: Path | None = None
    device: str = "cpu"
    dtype: str | None = None
    """``torch_dtype`` for loading (``None``: transformers' default; ``"auto"``: as saved)."""
    device_map: str | None = None
    """accelerate's ``device_map`` (e.g. ``"auto"``); the model is then not moved to ``device``."""
    _loaded: tuple[Any, Any] | None = field(default=None, repr=False, compare=False)

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from audit.models.finite import check_finite
            from audit.models.loading import load_checkpoint

            loaded = load_checkpoint(
                self.path,
                allow_pickle=self.allow_pickle,
                trust_remote_code=self.trust_remote_code,
                suite_dir=self.suite_dir,
                dtype=self.dtype,
                device_map=self.device_map,
            )
            check_finite(loaded[0], f"model {self.name!r} ({self.path})")
            if self.device != "cpu" and self.device_map is None:
                loaded[0].to(self.device)
            self._loaded = loaded
        return self._loaded

    @property
    def model(self) -> Any:
        """The ``transformers`` model, in eval mode."""
        return self._load()[0]

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer."""
        return self._load()[1]

    def release(self) -> None:
        """Drop the in-memory model so its memory can be reclaimed."""
        self._loaded = None
