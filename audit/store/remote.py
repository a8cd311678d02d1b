"""A store in an object store (``s3://bucket/prefix``, any fsspec URL), shared by every worker of
a cluster, read through a local store on each machine.

Layout under the URL::

    AUDIT-STORE.json                 the store marker, as a local store's (:mod:`.open`)
    entries/<key>/<files...>         a step's files, named relative to the entry
    entries/<key>/MANIFEST.json      written last: the entry exists once it does
    locks/<key>.lock                 ``{"owner": "host:pid:uuid", "heartbeat": epoch}``
    locks/<key>.lock.broken-<hash>   held for a moment by whoever breaks a dead holder's lock

Each machine keeps a local store (:class:`~audit.store.core.Store`, :attr:`RemoteStore.root`):
entries are downloaded into it and read from there, and ``replies/`` (endpoint replies) and
``file-hashes/`` stay local to the machine; ``audit cache prune`` on it prunes only the copy.

**Publishing.** Object stores have no rename, so an entry cannot appear at once as a directory
does locally. Instead a builder uploads every file of the entry, then ``MANIFEST.json`` (the
local manifest's bytes: meta, and each file's size and sha256). Readers look only at the
manifest: files of an upload that stopped before it are invisible, and the next builder removes
them before uploading its own. A PUT is atomic and S3 is strongly consistent read-after-write
(since December 2020; GCS and Azure are too), so a reader that sees the manifest sees the files
it names. A reader downloads the manifest, then every file, checks the size and sha256 of each
(whatever its size) and only then publishes the entry into its local store (built in ``tmp/``,
renamed into ``entries/``) under the local step lock. An entry that fails the check is reported
(:meth:`RemoteStore.on_corrupt`) and rebuilt: the builder deletes the old manifest, then the
old files, uploads the new files, then the new manifest. An entry built here whose upload fails
is removed from the local copy as well, so a rerun here builds and uploads it again.

**Computing once.** A step is built under a lease on ``locks/<key>.lock``, taken by an exclusive
create (``open(path, "xb")``: on S3, s3fs sends ``PutObject`` with ``If-None-Match: *``, which AWS
honours since August 2024 and moto's server does too; ``O_EXCL`` on ``file://``). Its holder
rewrites the heartbeat every ``lease_s / 4`` seconds. A lock whose heartbeat is older than
``lease_s`` (or whose content this process has seen unchanged for ``lease_s``, which also covers
a holder whose clock runs ahead) belongs to a dead holder and is broken: the breaker exclusively
creates ``<lock>.broken-<hash of what it read>``, checks that the lock still holds what it read,
deletes it, then its tombstone, and competes for the lock like anyone else; so two breakers
never both delete, and a live holder's fresh lock is never taken for a dead one's. Others wait
(:meth:`RemoteStore.on_wait`, once), polling every ``poll_s`` for the manifest or the lock's
release. Between the files and the manifest of an upload is the fault point ``remote.upload``
(:mod:`audit.faults`).

**Limits.** Unlike a local flock, a lock does not die with its process: a lock whose holder
was a process of this machine (its host name) that no longer exists is broken at once, but
after a holder on another machine is killed, the next builder of that step waits up to
``lease_s`` before breaking its lock (a new process reusing the dead one's pid would delay it
as long). The
lease is advisory and time-based: a holder frozen for longer than ``lease_s`` (SIGSTOP, a
suspended VM) loses its lock, and the step may then be built twice. Two uploads of one key may
then interleave, and a reader may see one's manifest with the other's files: the check rejects
that (unless both builds are byte-identical, in which case it is correct), and the entry is
rebuilt. Wall clocks of the machines must agree to well within ``lease_s`` (NTP does).
Exclusive create on ``memory://`` is not atomic between threads (it is for tests); on other
backends (``gs://``, ``az://`` …) it is what their fsspec filesystem makes of mode ``"x"``.
Credentials and endpoint come from the environment, read by fsspec's backend
(``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3`` …); none is logged or
stored.

:meth:`RemoteStore.get` reads only the local copy, and :meth:`RemoteStore.get_or_build` returns
an entry found there without looking remotely (so an entry only in the local copy is not
uploaded); it is what downloads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from audit.faults import fault_point
from audit.files import fsync_dir
from audit.store.core import MANIFEST, Store, file_sha256, open_store

__all__ = ["RemoteStore", "url_fs"]


def url_fs(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path within it (no trailing slash)."""
    import fsspec.core

    fs, path = fsspec.core.url_to_fs(url)
    return fs, str(path).rstrip("/")


class _Rejected(Exception):
    """A remote entry that does not match its manifest."""


@dataclass
class _Lease:
    """A held remote lock, kept alive by a heartbeat thread until :meth:`release`."""

    fs: Any
    path: str
    owner: str
    interval: float
    lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> _Lease:
        self._thread = threading.Thread(
            target=self._beat, name=f"audit-lease-{self.path}", daemon=True
        )
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if _owner(read_remote(self.fs, self.path)) != self.owner:
                    self.lost = True  # broken by another: it believed us dead
                    return
                self.fs.pipe_file(self.path, _lock_body(self.owner))
            except Exception:  # a transient error (network): the next beat tries again
                continue

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(OSError):
            if _owner(read_remote(self.fs, self.path)) == self.owner:
                self.fs.rm_file(self.path)


def _dead_here(owner: str | None) -> bool:
    """Whether ``owner`` (``host:pid:…``) is a process of this machine that has exited: its lock
    is broken at once, as a local flock dies with its process, instead of after the lease."""
    host, _, rest = (owner or "").partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, someone else's
        return False
    return False


def _lock_body(owner: str) -> bytes:
    return json.dumps({"owner": owner, "heartbeat": time.time()}).encode()


def _parse_lock(raw: bytes | None) -> dict[str, Any]:
    try:
        data = json.loads(raw or b"")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _owner(raw: bytes | None) -> str | None:
    owner = _parse_lock(raw).get("owner")
    return owner if isinstance(owner, str) else None


def read_remote(fs: Any, path: str) -> bytes | None:
    """The bytes of a remote file, or ``None`` if there is none."""
    try:
        data: bytes = fs.cat_file(path)
    except FileNotFoundError:
        return None
    return data


def _safe_rel(rel: object) -> str:
    """A manifest's file name, refused if it would leave the entry."""
    if not isinstance(rel, str) or not rel or "\\" in rel:
        raise _Rejected(f"{rel!r}: not a file name")
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or ".." in parts or rel.endswith("/") or rel == MANIFEST:
        raise _Rejected(f"{rel!r}: names a file outside the entry")
    return rel


class RemoteStore(Store):
    """A store at an fsspec URL, read through the local store at ``local`` (:attr:`root`).

    ``lease_s``: how long a build lock lives without a heartbeat before it is broken;
    ``poll_s``: how often a process waiting for another's build looks again. ``fs``: the
    filesystem to use (default: the URL's own, configured from the environment).
    """

    def __init__(
        self,
        url: str,
        local: Path,
        fs: Any = None,
        lease_s: float = 120.0,
        poll_s: float = 1.0,
    ):
        open_store(Path(local), create=True)  # refuses a local directory that is not a store
        super().__init__(Path(local))
        self.url = url
        if fs is None:
            fs, self._base = url_fs(url)
        else:
            self._base = str(fs._strip_protocol(url)).rstrip("/")
        self.fs = fs
        self.lease_s = lease_s
        self.poll_s = poll_s
        self._local_fs = any(p in ("file", "local") for p in _protocols(self.fs))
        self._rejected: dict[str, set[str]] = {}  # key → digests of manifests that failed

    def __repr__(self) -> str:
        return f"RemoteStore({self.url!r}, local={str(self.root)!r})"

    # remote paths

    def _remote(self, *parts: str) -> str:
        return "/".join([self._base, *parts])

    def _remote_entry(self, key: str) -> str:
        return self._remote("entries", key)

    def _remote_lock(self, key: str) -> str:
        return self._remote("locks", f"{key}.lock")

    # get_or_build

    def get_or_build(self, key: str, build: Callable[[Path], dict[str, Any]]) -> tuple[Path, bool]:
        """The local entry for ``key``: the local copy, else the remote entry downloaded, else
        built here under the remote lock and uploaded; ``(local path, was_cached)``.

        If ``build`` raises, nothing is uploaded and the lock is released; if the upload fails,
        the new local entry is removed too and the error raised.
        """
        entry = self.get(key, quarantine=False)
        if entry is not None:
            return entry, True
        found = self._pull_or_lock(key)
        if isinstance(found, Path):
            return found, True
        try:
            entry = self._pull(key)  # published between our last look and the lock
            if entry is not None:
                return entry, True
            entry, cached = super().get_or_build(key, build)
            try:
                self._upload(key, entry)
            except BaseException:
                self._unpublish(key)  # a local copy only of what the remote store has
                raise
            return entry, cached
        finally:
            found.release()

    def _pull_or_lock(self, key: str) -> Path | _Lease:
        """The entry, downloaded once it is published remotely, or the remote lock for ``key``."""
        path = self._remote_lock(key)
        waited = False
        seen: tuple[bytes, float] | None = None  # the lock as last read, since when (monotonic)
        while True:
            entry = self._pull(key)
            if entry is not None:
                return entry
            raw = read_remote(self.fs, path)  # read before writing: a GET costs less than a PUT
            if raw is None:
                lease = self._try_lock(path)
                if lease is not None:
                    return lease
                continue  # another took it first: look at theirs
            if seen is None or seen[0] != raw:
                seen = (raw, time.monotonic())
            if self._stale(raw, time.monotonic() - seen[1]):
                self._break(path, raw)
                continue
            if not waited:
                self.on_wait(key)
                waited = True
            time.sleep(self.poll_s)

    def _try_lock(self, path: str) -> _Lease | None:
        """The lock at ``path`` if an exclusive create takes it, else ``None``."""
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self._mkparent(path)
        try:
            with self.fs.open(path, "xb") as f:
                f.write(_lock_body(owner))
        except FileExistsError:
            return None
        return _Lease(self.fs, path, owner, self.lease_s / 4).start()

    def _stale(self, raw: bytes, unchanged_s: float) -> bool:
        """Whether a lock's holder is dead: a process of this machine that no longer exists, an
        old heartbeat, or no change seen for a lease."""
        if _dead_here(_owner(raw)):
            return True
        heartbeat = _parse_lock(raw).get("heartbeat")
        if isinstance(heartbeat, int | float) and time.time() - heartbeat > self.lease_s:
            return True
        return unchanged_s > self.lease_s

    def _break(self, path: str, raw: bytes) -> None:
        """Delete the dead lock that read as ``raw``, unless another breaker does."""
        tomb = f"{path}.broken-{hashlib.sha256(raw).hexdigest()[:16]}"
        try:
            with self.fs.open(tomb, "xb") as f:
                f.write(_lock_body(f"{socket.gethostname()}:{os.getpid()}"))
        except FileExistsError:
            return
        try:
            if read_remote(self.fs, path) == raw:
                self.fs.rm_file(path)
        finally:
            with contextlib.suppress(OSError):
                self.fs.rm_file(tomb)

    # download

    def _pull(self, key: str) -> Path | None:
        """The remote entry for ``key`` in the local store, downloaded and checked; ``None`` if
        there is none remotely, or it fails the check (reported once per manifest)."""
        raw = read_remote(self.fs, self._remote("entries", key, MANIFEST))
        if raw is None:
            return None
        digest = hashlib.sha256(raw).hexdigest()
        if digest in self._rejected.get(key, set()):
            return None
        with self.lock(key):  # one download per machine; others find it local
            entry = self.get(key)
            if entry is not None:
                return entry
            for stale in (self.root / "tmp").glob(f"{key}.*"):
                shutil.rmtree(stale, ignore_errors=True)
            try:
                return self._download(key, raw)
            except _Rejected as e:
                self._rejected.setdefault(key, set()).add(digest)
                self.on_corrupt(key, f"remote {e}")
                return None

    def _download(self, key: str, raw: bytes) -> Path:
        """Download the entry ``raw`` (its manifest) describes into ``tmp/``, check every file,
        and publish it into the local store."""
        files = _manifest_files(raw)
        tmp = self.root / "tmp" / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            for rel, want in files.items():
                self._fetch(key, rel, want, tmp / rel)
            (tmp / MANIFEST).write_bytes(raw)
            _fsync_tree(tmp)
            self._hold(key)
            return self._publish(key, tmp)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _fetch(self, key: str, rel: str, want: dict[str, Any], dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.fs.get_file(self._remote("entries", key, rel), str(dst))
        except FileNotFoundError:
            raise _Rejected(f"{rel}: missing") from None
        if not dst.is_file() or dst.stat().st_size != want["size"]:
            raise _Rejected(f"{rel}: wrong size")
        if file_sha256(dst) != want["sha256"]:
            raise _Rejected(f"{rel}: checksum mismatch")

    def _publish(self, key: str, tmp: Path) -> Path:
        """Rename the complete entry ``tmp`` into ``entries/`` (as :meth:`Store.put` does)."""
        entry = self._entry(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        if entry.exists():  # never deleted in place: readers see it whole or not at all
            old = tmp.with_name(f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old")
            os.replace(entry, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, entry)
        fsync_dir(entry.parent)
        return entry

    def _unpublish(self, key: str) -> None:
        """Take the local entry for ``key`` away (renamed aside, then deleted, as a replaced
        entry is), so that a rerun here builds and uploads it again."""
        self._release(key)
        with self.lock(key):
            entry = self._entry(key)
            old = self.root / "tmp" / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old"
            with contextlib.suppress(OSError):
                os.replace(entry, old)
            shutil.rmtree(old, ignore_errors=True)

    # upload

    def _upload(self, key: str, entry: Path) -> None:
        """Publish the local ``entry`` remotely: old entry removed, files, then the manifest."""
        remote = self._remote_entry(key)
        manifest = (entry / MANIFEST).read_bytes()
        self._remove_remote(remote)
        for rel in sorted(json.loads(manifest)["files"]):
            target = f"{remote}/{rel}"
            self._mkparent(target)
            self.fs.put_file(str(entry / rel), target)
        fault_point("remote.upload")
        self._write_manifest_remote(f"{remote}/{MANIFEST}", manifest)

    def _remove_remote(self, remote: str) -> None:
        """Remove a remote entry's manifest (first: it is invisible from then on), then the rest
        (an interrupted upload's files, or a rejected entry's)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(f"{remote}/{MANIFEST}")
        self.fs.invalidate_cache(remote)
        with contextlib.suppress(FileNotFoundError):
            if self.fs.find(remote):
                self.fs.rm(remote, recursive=True)

    def _write_manifest_remote(self, path: str, data: bytes) -> None:
        if not self._local_fs:  # an object PUT is atomic
            self.fs.pipe_file(path, data)
            return
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"  # a file is written in place: rename it
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, path)

    def _mkparent(self, path: str) -> None:
        """Make ``path``'s directory on a filesystem that has them (an object store has not)."""
        if self._local_fs:
            self.fs.makedirs(self.fs._parent(path), exist_ok=True)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _manifest_files(raw: bytes) -> dict[str, dict[str, Any]]:
    """The files a remote manifest lists, each checked to be a file name within the entry."""
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise _Rejected("manifest unreadable") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or "meta" not in manifest:
        raise _Rejected("manifest without meta or files")
    for rel, want in files.items():
        _safe_rel(rel)
        if not (
            isinstance(want, dict)
            and isinstance(want.get("size"), int)
            and isinstance(want.get("sha256"), str)
        ):
            raise _Rejected(f"{rel}: manifest entry without size or sha256")
    return files


def _fsync_tree(directory: Path) -> None:
    """Flush every file under ``directory`` and every directory's names, before a rename."""
    for p in directory.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in [*(p for p in directory.rglob("*") if p.is_dir()), directory]:
        fsync_dir(d)
