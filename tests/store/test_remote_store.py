"""The object-store store (:mod:`audit.store.remote`, :mod:`audit.store.open`) against a real S3
server on loopback (moto's), plus ``memory://`` and ``file://``: each machine (a local cache)
finds what another built, uploads are published by their manifest, tampering is caught, a step
is built once under the lease lock, and a dead holder's lock is broken."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from s3_server import S3Server, s3_server

from audit.errors import InputError
from audit.store.core import MARKER, NotAStoreError, Store
from audit.store.open import default_local_cache, is_url, open_any_store
from audit.store.remote import RemoteStore, url_fs

Build = Callable[[Path], dict[str, Any]]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server("audit-store", tmp_path_factory.mktemp("aws")) as server:
        yield server


@pytest.fixture
def url(s3: S3Server) -> str:
    """A fresh prefix in the test bucket."""
    return f"s3://{s3.bucket}/store-{uuid.uuid4().hex[:8]}"


class Recording(RemoteStore):
    """A remote store that records what it reports."""

    def __init__(self, url: str, local: Path, **kwargs: Any):
        super().__init__(url, local, **{"poll_s": 0.05, **kwargs})
        self.waits: list[str] = []
        self.corrupt: list[tuple[str, str]] = []

    def on_wait(self, key: str) -> None:
        self.waits.append(key)

    def on_corrupt(self, key: str, why: str) -> None:
        self.corrupt.append((key, why))


def _builder(payload: str, calls: list[str], sleep: float = 0.0) -> Build:
    def build(tmp: Path) -> dict[str, Any]:
        calls.append(payload)
        time.sleep(sleep)
        (tmp / "result.json").write_text(json.dumps({"payload": payload}))
        (tmp / "model").mkdir()
        (tmp / "model" / "weights.bin").write_bytes(hashlib.sha256(payload.encode()).digest() * 64)
        return {"kind": "test", "payload": payload}

    return build


def _never(tmp: Path) -> dict[str, Any]:
    raise AssertionError("built, though the entry was in the store")


def _tree(entry: Path) -> dict[str, bytes]:
    return {str(p.relative_to(entry)): p.read_bytes() for p in entry.rglob("*") if p.is_file()}


def _remote(url: str) -> tuple[Any, str]:
    fs, base = url_fs(url)
    fs.invalidate_cache()
    return fs, base


def _remote_files(url: str) -> list[str]:
    fs, base = _remote(url)
    return sorted(p[len(base) + 1 :] for p in fs.find(base))


def _lock(url: str, key: str, heartbeat: float, owner: str = "elsewhere:1:dead") -> None:
    fs, base = _remote(url)
    fs.pipe_file(f"{base}/locks/{key}.lock", json.dumps({"owner": owner, "heartbeat": heartbeat}))


# one machine builds, another downloads


def test_built_once_then_downloaded_by_another_machine(url: str, tmp_path: Path) -> None:
    calls: list[str] = []
    a = Recording(url, tmp_path / "a")
    entry, cached = a.get_or_build("k1", _builder("one", calls))
    assert not cached and entry == tmp_path / "a" / "entries" / "k1"
    assert _remote_files(url) == [
        "entries/k1/MANIFEST.json",
        "entries/k1/model/weights.bin",
        "entries/k1/result.json",
    ]  # and the lock is gone
    b = Recording(url, tmp_path / "b")
    got, cached = b.get_or_build("k1", _never)
    assert cached and got == tmp_path / "b" / "entries" / "k1"
    assert _tree(got) == _tree(entry)  # byte-identical, the manifest included
    assert b.meta("k1") == {"kind": "test", "payload": "one"}
    assert b.verify("k1") == (True, "")
    assert b.get("k1") == got  # local from now on
    assert b.get_or_build("k1", _never) == (got, True)
    assert calls == ["one"] and not b.waits and not b.corrupt
    a.close()
    b.close()


def test_get_reads_only_the_local_copy(url: str, tmp_path: Path) -> None:
    Recording(url, tmp_path / "a").get_or_build("k1", _builder("one", []))
    assert Recording(url, tmp_path / "b").get("k1") is None


def test_upload_stopped_before_the_manifest_is_invisible_and_rebuilt(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = Recording(url, tmp_path / "a")

    def cut(path: str, data: bytes) -> None:
        raise ConnectionError("connection lost")

    monkeypatch.setattr(a, "_write_manifest_remote", cut)
    with pytest.raises(ConnectionError):
        a.get_or_build("k2", _builder("old", []))
    assert a.get("k2") is None  # not kept here either: a rerun here builds and uploads it
    fs, base = _remote(url)
    fs.pipe_file(f"{base}/entries/k2/stray.bin", b"left by a killed upload")
    assert _remote_files(url) == [
        "entries/k2/model/weights.bin",
        "entries/k2/result.json",
        "entries/k2/stray.bin",
    ]  # files without a manifest, and no lock
    calls: list[str] = []
    b = Recording(url, tmp_path / "b")
    entry, cached = b.get_or_build("k2", _builder("new", calls))
    assert not cached and calls == ["new"] and not b.corrupt
    assert "entries/k2/stray.bin" not in _remote_files(url)
    got, cached = Recording(url, tmp_path / "c").get_or_build("k2", _never)
    assert cached and _tree(got) == _tree(entry)


@pytest.mark.parametrize(
    ("damage", "why"),
    [("same-size", "checksum mismatch"), ("truncate", "wrong size"), ("delete", "missing")],
)
def test_tampered_remote_entry_is_detected_and_rebuilt(
    url: str, tmp_path: Path, damage: str, why: str
) -> None:
    Recording(url, tmp_path / "a").get_or_build("k3", _builder("one", []))
    fs, base = _remote(url)
    target = f"{base}/entries/k3/model/weights.bin"
    data = fs.cat_file(target)
    if damage == "delete":
        fs.rm_file(target)
    else:
        fs.pipe_file(target, bytes([data[0] ^ 1]) + data[1:] if damage == "same-size" else data[:9])
    calls: list[str] = []
    b = Recording(url, tmp_path / "b")
    entry, cached = b.get_or_build("k3", _builder("two", calls))
    assert not cached and calls == ["two"]
    assert b.corrupt == [("k3", f"remote model/weights.bin: {why}")]
    assert not list((tmp_path / "b" / "tmp").iterdir())  # the rejected download is gone
    c = Recording(url, tmp_path / "c")
    got, cached = c.get_or_build("k3", _never)
    assert cached and not c.corrupt and _tree(got) == _tree(entry)
    assert json.loads((got / "result.json").read_text()) == {"payload": "two"}


def test_manifest_naming_a_file_outside_the_entry_is_refused(url: str, tmp_path: Path) -> None:
    fs, base = _remote(url)
    sha = hashlib.sha256(b"x").hexdigest()
    manifest = {"meta": {}, "files": {"../../escape": {"size": 1, "sha256": sha}}}
    fs.pipe_file(f"{base}/entries/k4/MANIFEST.json", json.dumps(manifest).encode())
    b = Recording(url, tmp_path / "b")
    entry, cached = b.get_or_build("k4", _builder("ok", []))
    assert not cached and b.corrupt and "outside the entry" in b.corrupt[0][1]
    assert not (tmp_path / "escape").exists() and not (tmp_path / "b" / "escape").exists()


def test_failed_build_uploads_nothing_and_frees_the_lock(url: str, tmp_path: Path) -> None:
    def boom(tmp: Path) -> dict[str, Any]:
        (tmp / "half.json").write_text("{")
        raise RuntimeError("crash mid-step")

    a = Recording(url, tmp_path / "a")
    with pytest.raises(RuntimeError, match="crash mid-step"):
        a.get_or_build("k5", boom)
    assert _remote_files(url) == []
    assert a.get("k5") is None
    entry, cached = Recording(url, tmp_path / "b").get_or_build("k5", _builder("ok", []))
    assert not cached and (entry / "result.json").exists()


# the lease lock


def test_two_machines_build_once(url: str, tmp_path: Path) -> None:
    calls: list[str] = []
    stores = [Recording(url, tmp_path / name) for name in ("a", "b")]
    start = threading.Barrier(2)
    results: dict[int, tuple[Path, bool]] = {}

    def run(i: int) -> None:
        start.wait()
        results[i] = stores[i].get_or_build("k6", _builder(f"by-{i}", calls, sleep=0.5))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert len(calls) == 1 and len(results) == 2
    builder = int(calls[0][-1])
    other = 1 - builder
    assert results[builder][1] is False and results[other][1] is True
    assert stores[other].waits == ["k6"] and not stores[builder].waits
    assert _tree(results[0][0]) == _tree(results[1][0])
    assert not [p for p in _remote_files(url) if p.startswith("locks/")]


def test_two_machines_break_a_dead_lock_and_build_once(url: str, tmp_path: Path) -> None:
    _lock(url, "k11", heartbeat=time.time() - 1000)
    calls: list[str] = []
    stores = [Recording(url, tmp_path / name, lease_s=30) for name in ("a", "b")]
    start = threading.Barrier(2)
    results: list[bool] = []

    def run(i: int) -> None:
        start.wait()
        results.append(stores[i].get_or_build("k11", _builder(f"by-{i}", calls, sleep=0.3))[1])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert len(calls) == 1 and sorted(results) == [False, True]
    assert not [p for p in _remote_files(url) if p.startswith("locks/")]


def test_a_builder_killed_mid_upload_leaves_nothing_visible(url: str, tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from audit.store.remote import RemoteStore\n"
        "def build(tmp):\n"
        "    (tmp / 'result.json').write_text('{}')\n"
        "    return {}\n"
        "RemoteStore(sys.argv[1], Path(sys.argv[2])).get_or_build('k12', build)\n"
    )
    env = {**os.environ, "AUDIT_KILL_AT": "remote.upload"}
    child = subprocess.run(
        [sys.executable, "-c", script, url, str(tmp_path / "a")], env=env, timeout=60
    )
    assert child.returncode == -signal.SIGKILL
    assert _remote_files(url) == ["entries/k12/result.json", "locks/k12.lock"]
    calls: list[str] = []
    b = Recording(url, tmp_path / "b", lease_s=60)
    started = time.monotonic()
    _, cached = b.get_or_build("k12", _builder("new", calls))  # breaks the dead one's lock
    assert not cached and calls == ["new"]
    # its holder was a process of this machine, gone: broken at once, not after the lease
    assert time.monotonic() - started < 30 and not b.waits
    assert _remote_files(url) == [
        "entries/k12/MANIFEST.json",
        "entries/k12/model/weights.bin",
        "entries/k12/result.json",
    ]


def test_the_holder_keeps_its_lock_alive(url: str, tmp_path: Path) -> None:
    fs, base = _remote(url)
    beats: list[float] = []

    def build(tmp: Path) -> dict[str, Any]:
        for _ in range(2):
            beats.append(json.loads(fs.cat_file(f"{base}/locks/k7.lock"))["heartbeat"])
            time.sleep(0.5)
        (tmp / "out").write_text("x")
        return {}

    Recording(url, tmp_path / "a", lease_s=0.4).get_or_build("k7", build)
    assert beats[1] > beats[0]  # rewritten every lease_s / 4 while held


def test_a_dead_holders_lock_is_broken(url: str, tmp_path: Path) -> None:
    _lock(url, "k8", heartbeat=time.time() - 1000)
    a = Recording(url, tmp_path / "a", lease_s=30)
    started = time.monotonic()
    entry, cached = a.get_or_build("k8", _builder("one", []))
    assert not cached and time.monotonic() - started < 10
    assert not a.waits  # broken at once, not waited for
    assert not [p for p in _remote_files(url) if p.startswith("locks/")]  # tombstone gone too


def test_a_lock_seen_unchanged_for_a_lease_is_broken(url: str, tmp_path: Path) -> None:
    _lock(url, "k9", heartbeat=time.time() + 1000)  # the dead holder's clock ran ahead
    a = Recording(url, tmp_path / "a", lease_s=0.5)
    started = time.monotonic()
    _, cached = a.get_or_build("k9", _builder("one", []))
    assert not cached and a.waits == ["k9"]
    assert time.monotonic() - started >= 0.5


def test_a_live_lock_is_waited_for(url: str, tmp_path: Path) -> None:
    fs, base = _remote(url)
    _lock(url, "k10", heartbeat=time.time())
    calls: list[str] = []
    a = Recording(url, tmp_path / "a")
    done: list[tuple[Path, bool]] = []
    waiter = threading.Thread(
        target=lambda: done.append(a.get_or_build("k10", _builder("one", calls)))
    )
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and a.waits == ["k10"] and not calls
    fs.rm_file(f"{base}/locks/k10.lock")  # the holder failed: the waiter builds
    waiter.join(timeout=10)
    assert done and done[0][1] is False and calls == ["one"] and a.waits == ["k10"]


# opening a store by URL


def test_a_new_prefix_becomes_a_store(url: str, tmp_path: Path) -> None:
    store = open_any_store(url, create=True, local_cache=tmp_path / "c")
    assert isinstance(store, RemoteStore) and store.url == url
    assert store.root == (tmp_path / "c").resolve() and (store.root / MARKER).is_file()
    fs, base = _remote(url)
    assert json.loads(fs.cat_file(f"{base}/{MARKER}")) == {"format": "audit-store", "version": 1}
    again = open_any_store(url, create=False, local_cache=tmp_path / "d")
    assert isinstance(again, RemoteStore)


def test_a_prefix_holding_other_things_is_refused(url: str, tmp_path: Path) -> None:
    fs, base = _remote(url)
    fs.pipe_file(f"{base}/data.csv", b"a,b\n")
    with pytest.raises(NotAStoreError, match=r"not an audit store.*data\.csv"):
        open_any_store(url, create=True, local_cache=tmp_path / "c")
    assert _remote_files(url) == ["data.csv"]


def test_no_store_without_create_is_refused(url: str, tmp_path: Path) -> None:
    with pytest.raises(NotAStoreError, match="no store at"):
        open_any_store(url, create=False, local_cache=tmp_path / "c")
    assert _remote_files(url) == []


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ({"format": "audit-store", "version": 2}, "newer audit"),
        ({"format": "something-else", "version": 1}, "not an audit store marker"),
        ({"format": "audit-store"}, "without a format version"),
    ],
)
def test_a_marker_this_audit_cannot_read_is_refused(
    url: str, tmp_path: Path, marker: dict[str, Any], message: str
) -> None:
    fs, base = _remote(url)
    fs.pipe_file(f"{base}/{MARKER}", json.dumps(marker).encode())
    with pytest.raises(NotAStoreError, match=message):
        open_any_store(url, create=True, local_cache=tmp_path / "c")


def test_the_default_local_cache(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIT_REMOTE_CACHE", str(tmp_path / "caches"))
    store = open_any_store(url, create=True)
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    assert store.root == default_local_cache(url) == (tmp_path / "caches" / digest).resolve()


def test_plain_paths_and_file_urls_open_a_local_store(tmp_path: Path) -> None:
    store = open_any_store(tmp_path / "p", create=True)
    assert type(store) is Store and store.root == (tmp_path / "p").resolve()
    store = open_any_store(str(tmp_path / "p"), create=False)
    assert type(store) is Store
    store = open_any_store(f"file://{tmp_path / 'p'}", create=False)
    assert type(store) is Store and store.root == (tmp_path / "p").resolve()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(NotAStoreError):
        open_any_store(tmp_path / "other", create=True)


def test_is_url() -> None:
    assert is_url("s3://bucket/prefix") and is_url("memory://x") and is_url("file:///tmp/x")
    assert not is_url("/tmp/x") and not is_url("relative/dir") and not is_url(Path("s3:/x"))


def test_a_filesystem_that_is_not_installed_is_named(tmp_path: Path) -> None:
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match=r"gs:// store needs the package gcsfs"):
            open_any_store("gs://bucket/prefix", create=True, local_cache=tmp_path / "c")
    with pytest.raises(InputError, match="no filesystem for nosuch://"):
        open_any_store("nosuch://bucket/prefix", create=True, local_cache=tmp_path / "c")


# other filesystems


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_other_filesystems(scheme: str, tmp_path: Path) -> None:
    if scheme == "memory":
        url = f"memory://audit-{uuid.uuid4().hex[:8]}/store"
        a = open_any_store(url, create=True, local_cache=tmp_path / "a")
    else:  # open_any_store takes file:// for a local store: the remote protocol on a directory
        url = f"file://{tmp_path / 'remote'}"
        a = RemoteStore(url, tmp_path / "a")
    entry, cached = a.get_or_build("k", _builder("one", []))
    assert not cached
    b = Recording(url, tmp_path / "b")
    got, cached = b.get_or_build("k", _never)
    assert cached and _tree(got) == _tree(entry)
    assert not [p for p in _remote_files(url) if "locks/" in p or ".tmp" in p]
