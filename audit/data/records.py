"""Data sets named in suites: ``path:FILE.jsonl``, ``organism:NAME``, ``hf:SOURCE`` or a shipped
set's name.

A data set is a jsonl file of flat records validated with pydantic; a malformed line is a
:class:`DataError` naming the file and the line. ``hf:`` sets (:mod:`audit.data.hub`) are read
through ``datasets`` from local files or the local Hugging Face cache and converted from the
public safety sets' own columns (:mod:`audit.data.converters`); a row that does not fit is a
:class:`DataError` naming the spec and the row. Record shapes:

- :class:`PairRecord` (``id``, ``prompt``, ``response``): fine-tuning data and task items;
- :class:`ProbeRecord` (``id``, ``prompt``, ``label`` = unsafe | safe | borderline,
  ``category``): refusal probes;
- :class:`PreferenceRecord` (``id``, ``prompt``, ``chosen``, ``rejected``): preference data
  (``somf`` trains with DPO on it).
"""

from __future__ import annotations

import codecs
import json
import re
from importlib import resources
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from audit.errors import InputError

Split = Literal["train", "eval"]
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
R = TypeVar("R", bound=BaseModel)


class DataError(InputError):
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
    """The file a ``path:`` or shipped-name spec points to (``None`` for ``organism:`` and
    ``hf:``, which name no jsonl file)."""
    if spec.startswith(("organism:", "hf:")):
        return None
    if spec.startswith("path:"):
        path = Path(spec[len("path:") :])
        try:
            path = path.expanduser()
        except RuntimeError:  # "~user/…" for a user this machine does not know
            raise DataError(f"{spec!r}: cannot expand '~' (no such user)") from None
        return path if path.is_absolute() else (suite_dir / path)
    if spec in shipped_names():
        return Path(str(resources.files("audit.data") / f"{spec}.jsonl"))
    known = ", ".join(shipped_names()) or "none"
    raise DataError(
        f"unknown data set {spec!r}: use 'path:FILE.jsonl', 'organism:NAME', 'hf:SOURCE' or a "
        f"shipped set ({known})"
    )


def read_jsonl(path: Path, shape: type[R]) -> list[R]:
    """Read and validate a jsonl file; the first malformed line raises :class:`DataError`.

    Lines end at ``\\n`` (a ``\\r\\n`` ending is fine); blank lines are skipped; a UTF-8 byte
    order mark at the start of the file is ignored. Bytes that are not UTF-8, numbers too long
    to convert, and nesting too deep to parse are errors of their line, never a crash.
    """
    try:
        found = path.is_file()
    except (OSError, ValueError) as e:  # a name too long for the file system, a NUL byte
        raise DataError(f"{path}: cannot read data file ({e})") from None
    if not found:
        raise DataError(f"{path}: data file not found")
    records: list[R] = []
    seen: set[str] = set()
    try:
        with open(path, "rb") as f:
            for lineno, data in enumerate(f, start=1):
                record = _parse_line(path, lineno, data, shape)
                if record is None:
                    continue
                rid = str(getattr(record, "id", lineno))
                if rid in seen:
                    raise DataError(f"{path}:{lineno}: duplicate id {rid!r}")
                seen.add(rid)
                records.append(record)
    except OSError as e:
        raise DataError(f"{path}: cannot read data file ({e.strerror or e})") from None
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _parse_line(path: Path, lineno: int, data: bytes, shape: type[R]) -> R | None:
    """One line of a jsonl file as a record of ``shape``; ``None`` for a blank line."""
    if lineno == 1 and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        line = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}:{lineno}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column {e.start + 1})"
        ) from None
    if not line.strip():
        return None
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as e:
        msg = e.msg.removesuffix(" at")
        raise DataError(f"{path}:{lineno}: not valid JSON ({msg} at column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{path}:{lineno}: not valid JSON (nested too deeply)") from None
    except ValueError:  # an integer literal beyond Python's int/str digit limit
        raise DataError(
            f"{path}:{lineno}: not valid JSON (a number with too many digits)"
        ) from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(raw).__name__}")
    if _SURROGATE_ESCAPE.search(line):  # "\ud800" alone parses, but is no character to write
        try:
            json.dumps(raw, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(
                f"{path}:{lineno}: not valid text (a \\u escape of a lone surrogate)"
            ) from None
    raw.setdefault("id", f"{path.stem}-{lineno}")
    try:
        return shape.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "record"
        raise DataError(f"{path}:{lineno}: {where}: {err['msg']}") from None


def load_records(spec: str, shape: type[R], *, suite_dir: Path, split: Split = "eval") -> list[R]:
    """Load the data set ``spec`` as records of ``shape``.

    ``split`` matters for ``organism:`` sets only: interventions train on ``train``, evaluators
    score ``eval`` (held-out templates and slots). User files are used whole; an ``hf:`` spec
    names its own split (``?split=NAME``).
    """
    if spec.startswith("hf:"):
        return read_hf(spec, shape, suite_dir=suite_dir)
    path = resolve_path(spec, suite_dir=suite_dir)
    if path is None:
        from audit.organism.datasets import organism_records

        rows = organism_records(spec[len("organism:") :], split=split)
        return [shape.model_validate(r) for r in rows]
    return read_jsonl(path, shape)


def read_hf(spec: str, shape: type[R], *, suite_dir: Path) -> list[R]:
    """Read and validate an ``hf:`` data set (:mod:`audit.data.hub`) as records of ``shape``.

    Any problem is a :class:`DataError` naming the spec: its syntax, data missing from the
    local files or cache (the hub is never contacted), a row that does not fit its format or
    ``shape`` (1-based row of the split), a duplicate id.
    """
    from audit.data.hub import HfDataError, hf_rows

    fields = list(shape.model_fields)
    required = [name for name, info in shape.model_fields.items() if info.is_required()]
    try:
        rows = hf_rows(
            spec,
            suite_dir=suite_dir,
            fields=fields,
            required=required,
            probes=issubclass(shape, ProbeRecord),
        )
    except HfDataError as e:
        raise DataError(str(e)) from None
    records: list[R] = []
    seen: dict[str, int] = {}
    for n, row in enumerate(rows, start=1):
        try:
            record = shape.model_validate(row)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "record"
            raise DataError(f"{spec}: row {n}: {where}: {err['msg']}") from None
        rid = str(getattr(record, "id", n))
        if rid in seen:
            raise DataError(f"{spec}: row {n}: duplicate id {rid!r} (also row {seen[rid]})")
        seen[rid] = n
        records.append(record)
    return records
