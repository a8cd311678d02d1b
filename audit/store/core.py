"""The content-addressed store: one directory per step key, written atomically.

Layout under the store root (default ``.audit-cache/``)::

    entries/<key>/          a finished step: its files plus MANIFEST.json (size + sha256)
    tmp/<key>.<pid>.<rand>/ a step being written; renamed into entries/ when complete (one
                            left by a killed run is never read, and is removed by the next
                            run that builds that key)
    locks/<key>.lock        flock-ed while a step is computed, so two runs compute it once
                            (the kernel drops the lock when its process dies, even by SIGKILL)
    replies/<kk>/<key>.json an OpenAI-compatible endpoint's reply to one request, keyed by
                            what was asked (:mod:`audit.models.endpoint`), written atomically
    AUDIT-STORE.json        the store marker: ``{"format": "audit-store", "version": 1}``

Every command that writes into a store opens it with :func:`open_store`, which refuses a
directory that is not one: ``audit cache prune --cache ~`` must not take ``~/tmp`` for a killed
build's leftovers. A new store is made only in a directory that is absent or empty; a store of
an older audit (no marker, nothing but store folders) is adopted; anything else is refused.

An entry is only ever visible complete: it is built in ``tmp/``, fsynced, then renamed. On
read the manifest is checked; an entry that fails the check is moved aside and rebuilt.

Reading an entry marks it used (its directory's mtime) and takes a shared lock on
``locks/<key>.use`` that the reading process keeps until :meth:`Store.close`, so
``audit cache prune`` (:mod:`audit.store.prune`), which removes least-recently-used entries, skips
every entry a running process builds or uses.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from audit.errors import AuditError, InputError
from audit.faults import fault_point
from audit.files import atomic_write_text, fsync_dir

MANIFEST = "MANIFEST.json"
MARKER = "AUDIT-STORE.json"
STORE_FORMAT, STORE_VERSION = "audit-store", 1
_LAYOUT = frozenset({"entries", "tmp", "locks", "trash", "corrupt", "file-hashes", "replies"})
_FULL_HASH_LIMIT = 64 * 2**20  # files above this are checked by size on read


class StoreError(AuditError):
    """A store entry that is missing, corrupted or cannot be written."""


class NotAStoreError(StoreError, InputError):
    """A directory given as a store that is not one (or of an unknown format)."""


def open_store(root: Path, *, create: bool) -> Store:
    """The store at ``root``, checked to be one before anything is written there.

    With ``create``, an absent or empty directory becomes a new store. A directory holding only
    store folders (``entries/``, ``tmp/``, ``locks/`` …, a store of an audit from before the
    marker) is adopted: the marker is written. Raises :class:`NotAStoreError` for a file, a
    directory with anything else in it, or a marker of another format or a newer version.
    """
    root = Path(root)
    marker = root / MARKER
    if root.exists() and not root.is_dir():
        raise NotAStoreError(f"{root} is not a directory, so it cannot be a store")
    if marker.exists() or marker.is_symlink():
        _check_marker(marker)
        return Store(root)
    children = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    # another run making this store at the same moment: its marker's temporary file
    children = [c for c in children if not (c.startswith(f".{MARKER}.") and c.endswith(".tmp"))]
    # a store of an older audit: store folders only, and one only a store makes (not just tmp/)
    legacy = set(children) <= _LAYOUT and bool(set(children) & {"entries", "locks", "file-hashes"})
    if legacy or (create and not children):
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            marker, json.dumps({"format": STORE_FORMAT, "version": STORE_VERSION}) + "\n"
        )
        return Store(root)
    raise not_a_store(str(root), children, "directory")


def not_a_store(where: str, children: list[str], kind: str) -> NotAStoreError:
    """The error for ``where`` (a ``kind``: directory, prefix) without a store marker: nothing
    there, or ``children`` that are not a store's."""
    if not children:
        return NotAStoreError(f"no store at {where} (no {MARKER}): nothing to do")
    shown = ", ".join(children[:5]) + (" …" if len(children) > 5 else "")
    return NotAStoreError(
        f"{where} is not an audit store: it has no {MARKER} and holds other things ({shown}). "
        f"Refusing to write into it or to delete anything there; give an empty or new {kind}, "
        f"or the store's own {'directory' if kind == 'directory' else 'URL'}."
    )


def _check_marker(marker: Path) -> None:
    try:
        if not marker.is_file():
            raise ValueError("not a regular file")
        raw = marker.read_bytes()
    except (OSError, ValueError) as e:
        raise NotAStoreError(f"{marker}: unreadable store marker ({e})") from None
    check_marker(str(marker), raw)


def check_marker(where: str, raw: bytes) -> None:
    """Refuse a store marker (the bytes of ``where``) of another format or a newer version."""
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise NotAStoreError(f"{where}: unreadable store marker ({e})") from None
    if not isinstance(data, dict) or data.get("format") != STORE_FORMAT:
        raise NotAStoreError(f"{where}: not an audit store marker")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise NotAStoreError(f"{where}: store marker without a format version")
    if version < 1:  # no audit ever wrote one: not ours to write into or prune
        raise NotAStoreError(f"{where}: unknown store format {version}")
    if version > STORE_VERSION:
        raise NotAStoreError(
            f"{where}: store format {version}, written by a newer audit (this one reads "
            f"format {STORE_VERSION}); upgrade audit or use another store"
        )


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


class Store:
    """Step results and derived models, addressed by step key."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._held: dict[str, Any] = {}  # key → open use-lock file (shared flock)

    def _entry(self, key: str) -> Path:
        return self.root / "entries" / key

    def _write_manifest(self, directory: Path, meta: dict[str, Any]) -> None:
        files = {
            str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in _files(directory)
        }
        manifest = {"meta": meta, "files": files}
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        for p in [*_files(directory), directory / MANIFEST]:
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        for d in [*(p for p in directory.rglob("*") if p.is_dir()), directory]:
            fsync_dir(d)  # the files' names too, before the rename publishes them

    def verify(self, key: str) -> tuple[bool, str]:
        """Whether the entry for ``key`` is complete and intact, and why not."""
        entry = self._entry(key)
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
        except (OSError, ValueError):
            return False, "manifest missing or unreadable"
        for rel, want in manifest.get("files", {}).items():
            p = entry / rel
            if not p.is_file() or p.stat().st_size != want["size"]:
                return False, f"{rel}: missing or wrong size"
            if want["size"] <= _FULL_HASH_LIMIT and file_sha256(p) != want["sha256"]:
                return False, f"{rel}: checksum mismatch"
        return True, ""

    def get(self, key: str, *, quarantine: bool = True) -> Path | None:
        """The entry directory for ``key`` if it exists and verifies, else ``None``.

        A corrupted entry is moved to ``corrupt/`` (kept for inspection) and reported as absent;
        with ``quarantine=False`` it is only reported absent (callers without the step lock must
        not move an entry that another run may be rebuilding in place).
        """
        entry = self._entry(key)
        if not entry.exists():
            return None
        self._hold(key)  # before the check: once held, a prune cannot take the entry away
        if not entry.exists():
            self._release(key)
            return None
        ok, why = self.verify(key)
        if ok:
            with contextlib.suppress(OSError):  # last use, for `audit cache prune`
                os.utime(entry)
            return entry
        self._release(key)
        if not quarantine:
            return None
        corrupt = self.root / "corrupt" / f"{key}.{uuid.uuid4().hex[:8]}"
        corrupt.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.replace(entry, corrupt)
        self.on_corrupt(key, why)
        return None

    def _hold(self, key: str) -> None:
        """Hold ``key``'s use lock (shared) until :meth:`close`; a prune skips held entries.

        A store this process cannot write (a read-only cache) is read without the lock.
        """
        if key in self._held:
            return
        path = self.root / "locks" / f"{key}.use"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(path, "a")  # noqa: SIM115 - kept open until close()
        except OSError:
            return
        try:
            fcntl.flock(f, fcntl.LOCK_SH)
        except OSError:
            f.close()
            return
        self._held[key] = f

    def _release(self, key: str) -> None:
        f = self._held.pop(key, None)
        if f is not None:
            f.close()

    def close(self) -> None:
        """Release every entry this process used (a run calls it when done; exit does too)."""
        for key in list(self._held):
            self._release(key)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    @contextlib.contextmanager
    def exclusive(self, key: str) -> Iterator[bool]:
        """Try, without waiting, to hold ``key`` alone: its step lock and its use lock.

        Yields whether both were taken: ``False`` while any process builds or uses the entry.
        """
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{key}.lock", "a") as step, open(locks / f"{key}.use", "a") as use:
            try:
                fcntl.flock(step, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(use, fcntl.LOCK_EX | fcntl.LOCK_NB)
                taken = True
            except BlockingIOError:
                taken = False
            yield taken  # closing the files releases the locks

    def on_corrupt(self, key: str, why: str) -> None:
        """Called when an entry fails verification; the runner reports it."""

    def on_wait(self, key: str) -> None:
        """Called when another process holds ``key``'s step lock; the runner reports it."""

    def meta(self, key: str) -> dict[str, Any]:
        """The metadata stored with an entry."""
        meta: dict[str, Any] = json.loads((self._entry(key) / MANIFEST).read_text())["meta"]
        return meta

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the per-step lock (released by the OS if the process dies)."""
        path = self.root / "locks" / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.on_wait(key)
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def put(self, key: str, build: Callable[[Path], dict[str, Any]]) -> Path:
        """Build the entry for ``key`` with ``build(tmp_dir) -> meta`` and publish it atomically.

        Nothing is published if ``build`` raises; the temporary directory is removed.
        """
        tmp_root = self.root / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        tmp = tmp_root / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            meta = build(tmp)
            self._write_manifest(tmp, meta)
            fault_point("store.publish")
            entry = self._entry(key)
            entry.parent.mkdir(parents=True, exist_ok=True)
            if entry.exists():  # never deleted in place: readers see it whole or not at all
                old = tmp_root / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old"
                os.replace(entry, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, entry)
            fsync_dir(entry.parent)
            return entry
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def get_or_build(self, key: str, build: Callable[[Path], dict[str, Any]]) -> tuple[Path, bool]:
        """The entry for ``key``, building it under the step lock if needed; (path, was_cached).

        Under the lock, a corrupted entry is moved aside and ``tmp/`` directories of ``key`` left
        by a killed builder are removed (every builder holds the lock, so they are dead ones').
        """
        entry = self.get(key, quarantine=False)
        if entry is not None:
            return entry, True
        with self.lock(key):
            entry = self.get(key)
            if entry is not None:
                return entry, True
            for stale in (self.root / "tmp").glob(f"{key}.*"):
                shutil.rmtree(stale, ignore_errors=True)
            self._hold(key)
            return self.put(key, build), False
