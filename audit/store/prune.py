"""``audit cache prune``: remove least-recently-used store entries, never one in use.

An entry's last use is its directory's mtime, which :meth:`Store.get` sets on every read (and
a build sets by writing it). Pruning picks entries last used more than ``older_than_days`` ago,
then, while the store is larger than ``max_size`` bytes, the least recently used of the rest.
Entries set aside as corrupt (``corrupt/``) are candidates like any other; ``tmp/`` directories
that no build holds (left by a killed run) are always removed.

Each entry is removed only if its step lock and its use lock can both be taken without waiting
(:meth:`Store.exclusive`): an entry that a running process is building, or has read and still
holds, is skipped and reported. Under those locks the entry is renamed into ``trash/`` (one
atomic step: a reader sees it whole or not at all), and the locks are released before the trash
is deleted. Lock files are left in place (deleting a lock file another process may open would
let two processes hold "the" lock at once).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from audit.store.core import Store

_DAY = 86400.0


@dataclass
class PruneItem:
    """One store entry considered by a prune."""

    key: str
    path: Path
    size: int
    last_used: float  # epoch seconds
    reason: str = ""  # why it was chosen: "age" | "size" | "stale"
    status: str = "kept"  # kept | removed | would remove | in use | gone


@dataclass
class PruneResult:
    """What a prune removed (or, in a dry run, would remove) and what it had to skip."""

    items: list[PruneItem] = field(default_factory=list)
    size_before: int = 0

    @property
    def chosen(self) -> list[PruneItem]:
        """The items picked for removal (a ``tmp/`` directory being built is not one)."""
        return [i for i in self.items if i.reason and (i.reason, i.status) != ("stale", "in use")]

    @property
    def freed(self) -> int:
        return sum(i.size for i in self.items if i.status in ("removed", "would remove"))

    @property
    def size_after(self) -> int:
        return self.size_before - self.freed


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def _items(store: Store) -> list[PruneItem]:
    """Every entry (and set-aside corrupt entry), least recently used first."""
    items = []
    for folder in ("entries", "corrupt"):
        base = store.root / folder
        if not base.is_dir():
            continue
        for path in base.iterdir():
            try:
                if not path.is_dir() or path.is_symlink():
                    continue
                last_used = path.stat().st_mtime
            except OSError:
                continue
            items.append(PruneItem(path.name, path, _size(path), last_used))
    return sorted(items, key=lambda i: (i.last_used, i.key))


def _empty_trash(trash: Path) -> None:
    if trash.is_dir():
        for leftover in trash.iterdir():  # what an interrupted prune renamed but did not delete
            shutil.rmtree(leftover, ignore_errors=True)


def _stale(store: Store) -> list[PruneItem]:
    """``tmp/`` directories: a build in progress, or what a killed build left behind."""
    tmp = store.root / "tmp"
    items = []
    if tmp.is_dir():
        for path in tmp.iterdir():
            try:
                if path.is_dir() and not path.is_symlink():
                    key = path.name.split(".", 1)[0]
                    items.append(PruneItem(key, path, _size(path), path.stat().st_mtime))
            except OSError:
                continue
    return items


def _remove(store: Store, item: PruneItem, trash: Path, dry_run: bool) -> str:
    # A set-aside corrupt entry is read by no one; an entry, or a tmp/ directory (every
    # builder holds its key's step lock), only when no process holds its key.
    corrupt = item.path.parent.name == "corrupt"
    with contextlib.nullcontext(True) if corrupt else store.exclusive(item.key) as free:
        if not free:
            return "in use"
        if dry_run:
            return "would remove"
        target = trash / f"{item.path.name}.{uuid.uuid4().hex[:8]}"
        try:
            os.replace(item.path, target)  # one atomic step, under the locks
        except OSError:  # removed or replaced meanwhile
            return "gone"
    shutil.rmtree(target, ignore_errors=True)
    return "removed"


def prune(
    store: Store,
    *,
    older_than_days: float | None = None,
    max_size: int | None = None,
    dry_run: bool = False,
    now: float | None = None,
) -> PruneResult:
    """Remove entries unused for ``older_than_days``, then LRU entries down to ``max_size``."""
    now = time.time() if now is None else now
    trash = store.root / "trash"
    if not dry_run:
        _empty_trash(trash)
        trash.mkdir(parents=True, exist_ok=True)
    stale = _stale(store)
    items = _items(store)
    result = PruneResult([*stale, *items], size_before=sum(i.size for i in [*stale, *items]))
    for item in stale:  # left by killed builds: garbage whatever the criteria
        item.reason = "stale"
        item.status = _remove(store, item, trash, dry_run)
    if older_than_days is not None:
        cutoff = now - older_than_days * _DAY
        for item in items:
            if item.last_used < cutoff:
                item.reason = "age"
                item.status = _remove(store, item, trash, dry_run)
    if max_size is not None:
        for item in items:  # least recently used first
            if result.size_after <= max_size:
                break
            if not item.reason:
                item.reason = "size"
                item.status = _remove(store, item, trash, dry_run)
    return result
