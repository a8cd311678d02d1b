"""Open the store a command is given: a directory (:func:`audit.store.core.open_store`) or an
object-store URL such as ``s3://bucket/prefix`` (:class:`audit.store.remote.RemoteStore`).

A URL's store is checked as a directory's is before anything is written there: a prefix with
the marker ``AUDIT-STORE.json`` of this format is a store; with ``create``, an empty or absent
prefix becomes one (the marker is written first, by an exclusive create); a prefix holding
anything else, a marker of another format or of a newer version, or (without ``create``) no
store at all is refused with :class:`~audit.store.core.NotAStoreError`.

Each machine reads a remote store through a local store: ``local_cache`` if given, else
``$AUDIT_REMOTE_CACHE/<hash of the URL>``, else ``~/.cache/audit/remote/<hash of the URL>``.
``file://PATH`` is the directory ``PATH``, opened as a local store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from audit.errors import InputError
from audit.store.core import (
    MARKER,
    STORE_FORMAT,
    STORE_VERSION,
    Store,
    check_marker,
    not_a_store,
    open_store,
)

__all__ = ["default_local_cache", "is_url", "open_any_store"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_url(location: str | Path) -> bool:
    """Whether ``location`` is a URL (``scheme://…``, ``file://`` included), not a plain path."""
    return isinstance(location, str) and _SCHEME.match(location) is not None


def default_local_cache(url: str) -> Path:
    """Where this machine keeps its copy of the remote store at ``url``."""
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    base = os.environ.get("AUDIT_REMOTE_CACHE") or "~/.cache/audit/remote"
    return Path(base).expanduser().resolve() / digest


def open_any_store(location: str | Path, *, create: bool, local_cache: Path | None = None) -> Store:
    """The store at ``location`` (a path or a URL), checked to be one before anything is written.

    ``create``: make a new store where there is none (an absent or empty directory or prefix).
    ``local_cache``: for a URL, the local store it is read through (default:
    :func:`default_local_cache`). Raises :class:`~audit.store.core.NotAStoreError` for what is
    not a store, :class:`~audit.errors.InputError` for a URL whose filesystem is not installed.
    """
    if not is_url(location):
        return open_store(Path(location).resolve(), create=create)
    url = str(location)
    if url.lower().startswith("file://"):
        return open_store(_file_path(url), create=create)
    from audit.store.remote import RemoteStore

    fs, base = _filesystem(url)
    _open_remote_marker(fs, base, url, create=create)
    local = Path(local_cache).expanduser().resolve() if local_cache else default_local_cache(url)
    return RemoteStore(url, local, fs=fs)


def _file_path(url: str) -> Path:
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise InputError(f"{url}: a file:// URL on another host ({parsed.netloc}); give a path")
    return Path(url2pathname(parsed.path)).resolve()


def _filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the store's path in it."""
    from audit.store.remote import url_fs

    scheme = url.split("://", 1)[0].lower()
    try:
        return url_fs(url)
    except ImportError:
        package = _package(scheme)
        raise InputError(
            f"{url}: a {scheme}:// store needs the package {package} (pip install {package})"
        ) from None
    except ValueError as e:
        raise InputError(f"{url}: no filesystem for {scheme}:// URLs ({e})") from None


def _package(scheme: str) -> str:
    """The package that provides fsspec's filesystem for ``scheme`` (``s3`` → ``s3fs``)."""
    from fsspec.registry import known_implementations

    impl = known_implementations.get(scheme, {})
    return str(impl.get("class", "an fsspec filesystem")).split(".")[0]


def _open_remote_marker(fs: Any, base: str, url: str, *, create: bool) -> None:
    """Check the store marker at ``url``, or (``create``, nothing there) write it."""
    from audit.store.remote import read_remote

    marker = f"{base}/{MARKER}"
    raw = read_remote(fs, marker)
    if raw is not None:
        check_marker(f"{url.rstrip('/')}/{MARKER}", raw)
        return
    children = _children(fs, base)
    if create and not children:
        body = json.dumps({"format": STORE_FORMAT, "version": STORE_VERSION}) + "\n"
        try:
            with fs.open(marker, "xb") as f:
                f.write(body.encode())
        except FileExistsError:  # another run made this store at the same moment
            check_marker(f"{url.rstrip('/')}/{MARKER}", read_remote(fs, marker) or b"")
        except OSError as e:
            raise InputError(f"cannot create a store at {url}: {e}") from None
        return
    raise not_a_store(url, children, "prefix")


def _children(fs: Any, base: str) -> list[str]:
    """The names directly under ``base`` (none if it does not exist)."""
    with contextlib.suppress(AttributeError):
        fs.invalidate_cache(base)
    try:
        listing = fs.ls(base, detail=False)
    except FileNotFoundError:
        return []
    return sorted(PurePosixPath(str(p).rstrip("/")).name for p in listing)
