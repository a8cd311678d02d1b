"""The one atomic write: a temporary file beside the target, flushed to disk, then renamed over
it, so readers see the old file or the new one and never half of either."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from audit.faults import fault_point

__all__ = ["atomic_write_text", "fsync_dir"]


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (the names of files just created or renamed in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(
    path: Path, text: str, *, errors: str = "strict", mode: int | None = None
) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``.

    ``errors``: the encoder's error handler (``"replace"`` for pages that must be written even
    when model text holds lone surrogates). ``mode``: permission bits set before the rename
    (``None``: the process umask decides). A crash leaves at most a hidden ``.NAME.*.tmp``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", errors=errors) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        fault_point(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path
