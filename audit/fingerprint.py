"""Content fingerprints of the data a step reads, for its store key.

A step's result depends on its parameters *and* on the bytes of every file they name, so a
step key hashes both: relabelling one line of a probes file, or changing one response of a
fine-tuning set, changes the key of every step that reads it (and of every step downstream).

What counts as "a file a plug-in reads", found in its parameters:

- a data-set field (``PairData``, ``ProbeData``, ``SafetyData``) naming a shipped set: that
  jsonl file's sha256;
- any string parameter, at any depth (lists, nested tables, ``judge_params``), written
  ``path:X``: the sha256 of file ``X``, or of every file of directory ``X``
  (:func:`audit.models.hashing.hash_directory`), relative to the suite's directory;
- ``lm_eval_dir:DIR``: the files of ``DIR``; ``lm_eval:TASK``: the shipped lm-eval task
  folder and the installed lm-eval version (a task of lm-eval's own reads its data through
  lm-eval);
- ``organism:NAME`` naming an organism data set: the sha256 of the records it generates (both
  splits), so an edit of the generator changes the key even without a version bump.

Data files are hashed whole on every run (they are small next to a checkpoint, and a stat-based
shortcut is what let a swapped file go unnoticed). Directories named with ``path:`` (e.g. a
classifier judge's checkpoint) use the per-checkpoint hash cache, keyed on each file's inode,
size, mtime and ctime. A name that does not resolve gives a fingerprint saying so, never an
error: validation reports missing files, and a later run that finds the file gets a new key.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from audit.plugins import Params

__all__ = ["data_fingerprints", "organism_data_digest"]


def data_fingerprints(params: Params | None, suite_dir: Path, hash_cache: Path) -> dict[str, str]:
    """``{spec: fingerprint}`` of every data set and local file ``params`` name."""
    if params is None:
        return {}
    from audit.suite.refs import data_refs

    data = {spec for _, spec, _ in data_refs(params) if isinstance(spec, str)}
    specs = data | set(_strings(params.model_dump(mode="json")))
    out: dict[str, str] = {}
    for spec in sorted(specs):
        if spec.startswith("hf:"):  # a data set read through `datasets` (not a model id)
            from audit.data.hub import hf_data_digest

            if spec in data:
                out[spec] = hf_data_digest(spec, suite_dir=suite_dir)
            continue
        digest = _fingerprint(spec, suite_dir, hash_cache)
        if digest is not None:
            out[spec] = digest
    return out


def _strings(value: Any) -> list[str]:
    """Every string in a JSON value, at any depth."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _fingerprint(spec: str, suite_dir: Path, hash_cache: Path) -> str | None:
    scheme, sep, rest = spec.partition(":")
    if sep and scheme == "organism":
        from audit.organism.datasets import organism_dataset_names

        return organism_data_digest(rest) if rest in organism_dataset_names() else None
    if sep and scheme == "path":
        return _path_digest(_resolve(rest, suite_dir), hash_cache)
    if sep and scheme == "lm_eval_dir":
        return _path_digest(_resolve(rest, suite_dir), hash_cache)
    if sep and scheme == "lm_eval":
        from audit.evaluators.lm_eval_tasks import SHIPPED_DIR

        return f"lm-eval {_lm_eval_version()}; shipped {_path_digest(SHIPPED_DIR, hash_cache)}"
    if sep:
        return None
    from audit.data.records import shipped_names

    if spec in shipped_names():
        from audit.data.records import resolve_path

        path = resolve_path(spec, suite_dir=suite_dir)
        return None if path is None else _path_digest(path, hash_cache)
    return None


def _resolve(rest: str, suite_dir: Path) -> Path:
    try:
        path = Path(rest).expanduser()
    except RuntimeError:  # "~user" for an unknown user: validation reports it
        path = Path(rest)
    return path if path.is_absolute() else Path(suite_dir) / path


def _path_digest(path: Path, hash_cache: Path) -> str:
    """sha256 of a file's bytes, or of a directory's files; ``missing`` when neither."""
    from audit.store.core import file_sha256

    try:
        if path.is_file():
            return "file " + file_sha256(path)
        if path.is_dir():
            from audit.models.hashing import hash_directory

            cache_name = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
            return "dir " + hash_directory(path, cache_file=hash_cache / f"{cache_name}.json")
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    except ValueError:  # a NUL byte or a name the file system cannot take
        return "unreadable"
    return "missing"


@cache
def organism_data_digest(name: str) -> str:
    """sha256 of the records of organism data set ``name``, both splits."""
    from audit.organism.datasets import organism_records

    records = {split: organism_records(name, split=split) for split in ("train", "eval")}
    blob = json.dumps(records, sort_keys=True, ensure_ascii=False)
    return "organism " + hashlib.sha256(blob.encode()).hexdigest()


def _lm_eval_version() -> str:
    try:
        return version("lm-eval")
    except PackageNotFoundError:
        return "absent"
