"""Data sets named in suites: ``path:FILE.jsonl``, ``organism:NAME`` or a shipped set's name.

Every data set is a jsonl file of flat records validated with pydantic; a malformed line is a
:class:`DataError` naming the file and the line. Record shapes:

- :class:`PairRecord` (``id``, ``prompt``, ``response``): fine-tuning data and task items;
- :class:`ProbeRecord` (``id``, ``prompt``, ``label`` = unsafe | safe | borderline,
  ``category``): refusal probes;
- :class:`PreferenceRecord` (``id``, ``prompt``, ``chosen``, ``rejected``): preference data
  (``somf`` trains with DPO on it).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

Split = Literal["train", "eval"]
R = TypeVar("R", bound=BaseModel)


class DataError(Exception):
    """A data set that cannot be used, with the file and line at fault."""


class Record(BaseModel):
    """Base of record shapes: extra keys are kept, so users may carry their own columns."""

    model_config = ConfigDict(extra="allow", frozen=True)


class PairRecord(Record):
    """A prompt and the response a model should give."""

    id: str
    prompt: str
    response: str


class PreferenceRecord(Record):
    """A prompt with a preferred (``chosen``) and a dispreferred (``rejected``) response."""

    id: str
    prompt: str
    chosen: str
    rejected: str


class ProbeRecord(Record):
    """A request to a chat model, labelled with whether a safe model should refuse it."""

    id: str
    prompt: str
    label: Literal["unsafe", "safe", "borderline"]
    category: str = "none"


def shipped_names() -> list[str]:
    """Names of the data sets shipped with the package (``audit/data/*.jsonl``)."""
    folder = resources.files("audit.data")
    return sorted(p.name[: -len(".jsonl")] for p in folder.iterdir() if p.name.endswith(".jsonl"))


def resolve_path(spec: str, *, suite_dir: Path) -> Path | None:
    """The file a ``path:`` or shipped-name spec points to (``None`` for ``organism:``)."""
    if spec.startswith("organism:"):
        return None
    if spec.startswith("path:"):
        path = Path(spec[len("path:") :]).expanduser()
        return path if path.is_absolute() else (suite_dir / path)
    if spec in shipped_names():
        return Path(str(resources.files("audit.data") / f"{spec}.jsonl"))
    known = ", ".join(shipped_names()) or "none"
    raise DataError(
        f"unknown data set {spec!r}: use 'path:FILE.jsonl', 'organism:NAME' or a shipped set "
        f"({known})"
    )


def read_jsonl(path: Path, shape: type[R]) -> list[R]:
    """Read and validate a jsonl file; the first malformed line raises :class:`DataError`."""
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    records: list[R] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(raw, dict):
                raise DataError(
                    f"{path}:{lineno}: expected a JSON object, got {type(raw).__name__}"
                )
            raw.setdefault("id", f"{path.stem}-{lineno}")
            try:
                record = shape.model_validate(raw)
            except ValidationError as e:
                err = e.errors()[0]
                where = ".".join(str(p) for p in err["loc"]) or "record"
                raise DataError(f"{path}:{lineno}: {where}: {err['msg']}") from None
            rid = str(getattr(record, "id", lineno))
            if rid in seen:
                raise DataError(f"{path}:{lineno}: duplicate id {rid!r}")
            seen.add(rid)
            records.append(record)
    if not records:
        raise DataError(f"{path}: no records")
    return records


def load_records(spec: str, shape: type[R], *, suite_dir: Path, split: Split = "eval") -> list[R]:
    """Load the data set ``spec`` as records of ``shape``.

    ``split`` matters for ``organism:`` sets only: interventions train on ``train``, evaluators
    score ``eval`` (held-out templates and slots). User files are used whole.
    """
    path = resolve_path(spec, suite_dir=suite_dir)
    if path is None:
        from audit.organism.datasets import organism_records

        rows = organism_records(spec[len("organism:") :], split=split)
        return [shape.model_validate(r) for r in rows]
    return read_jsonl(path, shape)
