"""Fingerprints of checkpoint directories: SHA-256 over every regular file's name and contents,
with an optional per-file digest cache so an unchanged multi-GB checkpoint is re-hashed from its
metadata alone."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from audit.files import atomic_write_text
from audit.models.loading import CheckpointNotFoundError

__all__ = ["hash_directory", "hash_file"]

_CHUNK = 1 << 20
_RACY_NS = 2_000_000_000
_HASH_CACHE_VERSION = 2


def hash_directory(directory: Path, *, cache_file: Path | None = None) -> str:
    """SHA-256 fingerprint of every regular file under ``directory`` (names and contents).

    Hidden entries (``.git``, ``.cache``, ...) and ``__pycache__`` are skipped; symbolic links
    are hashed as the files they point to. With ``cache_file``, per-file digests are kept in a
    JSON file keyed on (relative path, device, inode, size, mtime_ns, ctime_ns), so an unchanged
    multi-GB checkpoint is re-hashed from metadata alone. A file replaced by another (a rename
    over it: new inode) or rewritten in place with its mtime restored (``touch -d``, ``cp -p``:
    the kernel still sets ctime, which no user can set) is hashed again. Files modified in the
    last two seconds are not cached (their times could still change without the size changing).
    """
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointNotFoundError(f"Cannot hash {directory}: not a directory.")
    resolved_root = str(root.resolve())
    cache_path = Path(cache_file).resolve() if cache_file is not None else None
    cached = _read_hash_cache(cache_path, resolved_root)
    fresh: dict[str, dict[str, Any]] = {}
    now_ns = time.time_ns()
    digest = hashlib.sha256()
    changed = False
    for relative, path in _regular_files(root):
        if cache_path is not None and path.resolve() == cache_path:
            continue
        stat = path.stat()
        entry = cached.get(relative)
        identity = _stat_identity(stat)
        if (
            entry is not None
            and all(entry.get(k) == v for k, v in identity.items())
            and isinstance(entry.get("sha256"), str)
        ):
            file_digest = str(entry["sha256"])
        else:
            file_digest = _file_digest(path)
            changed = True
        if now_ns - max(stat.st_mtime_ns, stat.st_ctime_ns) > _RACY_NS:
            fresh[relative] = {**identity, "sha256": file_digest}
        digest.update(f"{relative}\0{file_digest}\n".encode())
    if cache_path is not None and (changed or fresh.keys() != cached.keys()):
        _write_hash_cache(cache_path, resolved_root, fresh)
    return digest.hexdigest()


def hash_file(path: Path, *, cache_file: Path | None = None) -> str:
    """SHA-256 of one file's contents, cached like :func:`hash_directory`'s per-file digests."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"Cannot hash {path}: not a file.")
    resolved = str(path.resolve())
    cache_path = Path(cache_file).resolve() if cache_file is not None else None
    cached = _read_hash_cache(cache_path, resolved).get(path.name)
    stat = path.stat()
    identity = _stat_identity(stat)
    if (
        cached is not None
        and all(cached.get(k) == v for k, v in identity.items())
        and isinstance(cached.get("sha256"), str)
    ):
        return str(cached["sha256"])
    digest = _file_digest(path)
    if (
        cache_path is not None
        and time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > _RACY_NS
    ):
        _write_hash_cache(cache_path, resolved, {path.name: {**identity, "sha256": digest}})
    return digest


def _stat_identity(stat: os.stat_result) -> dict[str, int]:
    """What must be unchanged for a cached digest to be reused (ctime: set by the kernel)."""
    return {
        "dev": stat.st_dev,
        "ino": stat.st_ino,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
    }


def _regular_files(root: Path) -> list[tuple[str, Path]]:
    """``(posix relative path, path)`` of the files to hash, sorted by relative path."""
    found: list[tuple[str, Path]] = []
    for current, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
        for name in filenames:
            path = Path(current) / name
            if name.startswith(".") or not path.is_file():
                continue
            found.append((path.relative_to(root).as_posix(), path))
    found.sort()
    return found


def _file_digest(path: Path) -> str:
    """SHA-256 of a file's contents, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_hash_cache(cache_path: Path | None, root: str) -> dict[str, dict[str, Any]]:
    """The cached per-file digests for ``root``; empty when absent, stale or unreadable."""
    if cache_path is None or not cache_path.is_file():
        return {}
    try:
        data = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if (
        not isinstance(data, dict)
        or data.get("version") != _HASH_CACHE_VERSION
        or data.get("directory") != root
        or not isinstance(data.get("files"), dict)
    ):
        return {}
    return {k: v for k, v in data["files"].items() if isinstance(v, dict)}


def _write_hash_cache(cache_path: Path, root: str, files: dict[str, dict[str, Any]]) -> None:
    """Replace the cache file atomically; a cache that cannot be written is not an error."""
    payload = {"version": _HASH_CACHE_VERSION, "directory": root, "files": files}
    with contextlib.suppress(OSError):
        atomic_write_text(cache_path, json.dumps(payload, indent=0, sort_keys=True))
