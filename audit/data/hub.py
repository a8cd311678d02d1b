"""``hf:`` data sets: read through ``datasets`` from local files or the local Hugging Face cache.

Syntax (one string, like every data spec)::

    hf:SOURCE[?KEY=VALUE&KEY=VALUE...]

``SOURCE`` is

- a local file (``.csv``, ``.tsv``, ``.json``, ``.jsonl``, ``.parquet``, ``.arrow``) or
  folder, relative to the suite file: ``hf:./xstest_prompts.csv``, ``hf:data/jbb``. A folder
  written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` is read with
  ``load_from_disk``; any other folder as a dataset repository (its ``README.md`` configs, or
  its data files); a path that starts with ``.``, ``/`` or ``~`` or ends in one of those
  suffixes is always a path;
- or a hub id, ``ORG/NAME`` (optionally ``@REVISION``): read from the local cache only, never
  from the network: the hub cache (``HF_HUB_CACHE``, e.g. filled by
  ``hf download ORG/NAME --repo-type dataset``), else the ``datasets`` cache
  (``HF_DATASETS_CACHE``, filled by an earlier ``datasets.load_dataset("ORG/NAME")``).

Keys: ``config`` (the dataset's configuration), ``split`` (needed when there are several; for
a single local file it names the file's split), ``format`` (a converter of
:mod:`audit.data.converters`: ``columns`` by default, or ``xstest``, ``harmbench``,
``strongreject``, ``jbb``) and, for ``format=columns``, ``FIELD=COLUMN`` to take a record field
from another column (``prompt=Behavior``) and ``fixed_label=unsafe|safe|borderline``
(also for ``jbb``). Keys and values are percent-decoded (``prompt=forbidden%20prompt``).

Examples::

    hf:walledai/XSTest?split=test&format=xstest
    hf:JailbreakBench/JBB-Behaviors?config=behaviors&split=benign&format=jbb
    hf:./harmbench_behaviors_text_all.csv?format=harmbench
    hf:./my_probes.parquet?prompt=text&fixed_label=unsafe&category=topic
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from audit.data.converters import FORMATS, FORMATS_VERSION, LABELS, Context, FormatError, Row
from audit.errors import InputError

__all__ = ["HfDataError", "HfSpec", "hf_data_digest", "hf_rows", "parse_hf_spec"]

LOCAL_SUFFIXES: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {"keep_default_na": False}),
    ".tsv": ("csv", {"sep": "\t", "keep_default_na": False}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
    ".arrow": ("arrow", {}),
}
"""Local data files by suffix: the ``datasets`` builder and its options. CSV cells are read as
written (``keep_default_na=False``): an empty cell is ``""`` and a prompt ``NA`` stays ``NA``."""

RECORD_FIELDS = ("id", "prompt", "label", "category", "response", "chosen", "rejected")
"""Fields of the record shapes a ``format=columns`` spec may map to a column."""

KEYS = ("config", "split", "format", "fixed_label", *RECORD_FIELDS)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,255}")
_MAX_ERROR_CHARS = 400


class HfDataError(InputError):
    """An ``hf:`` data spec that cannot be read: its syntax, its source or its rows."""


@dataclass(frozen=True)
class HfSpec:
    """A parsed ``hf:`` spec: where the data is and how to read it."""

    text: str
    path: Path | None = None
    """The local file or folder; ``None`` for a hub id."""
    repo_id: str | None = None
    revision: str | None = None
    config: str | None = None
    split: str | None = None
    format: str = "columns"
    columns: dict[str, str] = field(default_factory=dict)
    fixed_label: str | None = None


def _error(spec: str, message: str) -> HfDataError:
    return HfDataError(f"{spec}: {message}")


def _suggest(word: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_hf_spec(spec: str, *, suite_dir: Path) -> HfSpec:
    """Parse ``spec`` (``hf:SOURCE?KEY=VALUE&...``); a syntax error is an :class:`HfDataError`.

    Parsing touches the file system only to tell a relative local path from a hub id (a
    relative name that exists next to the suite file is a path).
    """
    if not spec.startswith("hf:"):
        raise _error(spec, "not an hf: data spec")
    source, sep, query = spec[len("hf:") :].partition("?")
    if not source.strip():
        raise _error(spec, "names no data set: write hf:ORG/NAME or hf:./FILE")
    options: dict[str, str] = {}
    if sep:
        if not query:
            raise _error(spec, "nothing after '?': write KEY=VALUE pairs joined by '&'")
        for part in query.split("&"):
            key, eq, value = part.partition("=")
            key, value = unquote(key).strip(), unquote(value)
            if not eq or not key or not value:
                raise _error(spec, f"option {part!r}: write KEY=VALUE")
            if key not in KEYS:
                raise _error(
                    spec, f"unknown option {key!r}{_suggest(key, KEYS)}; options: {', '.join(KEYS)}"
                )
            if key in options:
                raise _error(spec, f"option {key!r} given twice")
            options[key] = value
    fmt = options.pop("format", "columns")
    if fmt not in FORMATS:
        names = ", ".join(FORMATS)
        raise _error(
            spec, f"unknown format {fmt!r}{_suggest(fmt, list(FORMATS))}; formats: {names}"
        )
    fixed_label = options.pop("fixed_label", None)
    if fixed_label is not None:
        if fixed_label not in LABELS:
            raise _error(spec, f"fixed_label={fixed_label}: write one of {', '.join(LABELS)}")
        if fmt not in ("columns", "jbb"):
            raise _error(spec, f"fixed_label: format {fmt!r} labels its rows itself")
    config, split = options.pop("config", None), options.pop("split", None)
    columns = options  # what is left are FIELD=COLUMN mappings
    if columns and fmt != "columns":
        raise _error(
            spec,
            f"{', '.join(f'{k}=' for k in columns)}: column mappings are for format=columns; "
            f"format {fmt!r} knows its columns",
        )
    if "label" in columns and fixed_label is not None:
        raise _error(spec, "label= and fixed_label= both given: keep one")
    common: dict[str, Any] = {
        "text": spec,
        "config": config,
        "split": split,
        "format": fmt,
        "columns": columns,
        "fixed_label": fixed_label,
    }
    path = _local_path(spec, source, suite_dir)
    if path is not None:
        return HfSpec(path=path, **common)
    repo_id, at, revision = source.partition("@")
    if not _HUB_ID.fullmatch(repo_id):
        raise _error(
            spec,
            f"{repo_id!r} is neither a local path nor a hub id (ORG/NAME); write a path as "
            f"hf:./{source}",
        )
    if at and not _REVISION.fullmatch(revision):
        raise _error(spec, f"revision {revision!r}: write ORG/NAME@REVISION")
    return HfSpec(repo_id=repo_id, revision=revision or None, **common)


def _local_path(spec: str, source: str, suite_dir: Path) -> Path | None:
    """The local path ``source`` names, or ``None`` when it is a hub id."""
    explicit = source.startswith((".", "/", "~")) or Path(source).suffix.lower() in LOCAL_SUFFIXES
    try:
        path = Path(source).expanduser()
    except RuntimeError:  # "~user/…" for a user this machine does not know
        raise _error(spec, "cannot expand '~' (no such user)") from None
    path = path if path.is_absolute() else Path(suite_dir) / path
    if explicit:
        return path
    try:
        return path if path.exists() else None
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return None


def hf_rows(
    spec: str,
    *,
    suite_dir: Path,
    fields: Sequence[str],
    required: Sequence[str],
    probes: bool,
) -> list[Row]:
    """The rows of ``spec`` converted to raw records with ``fields`` (``required`` among them).

    ``probes`` says whether the records are refusal probes (the named formats make only
    those). Raises :class:`HfDataError` for a bad spec, data that is not there (never a
    network lookup), or rows that do not fit the format.
    """
    parsed = parse_hf_spec(spec, suite_dir=suite_dir)
    fmt = FORMATS[parsed.format]
    if fmt.probes_only and not probes:
        raise _error(
            spec,
            f"format {parsed.format!r} makes refusal probes (id, prompt, label, category); this "
            f"parameter takes records with {', '.join(fields)}: use format=columns",
        )
    unknown = [k for k in parsed.columns if k not in fields]
    if unknown:
        raise _error(
            spec,
            f"{', '.join(f'{k}=' for k in unknown)}: these records have no such field; their "
            f"fields: {', '.join(fields)}",
        )
    split, rows = _read(parsed)
    if not rows:
        raise _error(spec, f"no rows{f' in split {split!r}' if split else ''}")
    ctx = Context(
        split=split,
        columns=dict(parsed.columns),
        fixed_label=parsed.fixed_label,
        fields=tuple(fields),
        required=tuple(required),
    )
    try:
        return fmt.convert(rows, ctx)
    except FormatError as e:
        raise _error(spec, str(e)) from None


def hf_data_digest(spec: str, *, suite_dir: Path) -> str:
    """A fingerprint of the rows ``spec`` reads (with the options that read them and
    :data:`~audit.data.converters.FORMATS_VERSION`), for store keys: ``hf`` + sha256, or
    ``missing (…)`` when they cannot be read (never an error)."""
    try:
        parsed = parse_hf_spec(spec, suite_dir=suite_dir)
        split, rows = _read(parsed)
    except HfDataError as e:
        return f"missing ({e})"
    blob = json.dumps(
        {"spec": spec, "formats_version": FORMATS_VERSION, "split": split, "rows": rows},
        sort_keys=True,
        default=str,
        ensure_ascii=False,
    )
    return "hf " + hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


@contextmanager
def _quiet() -> Iterator[None]:
    """``datasets`` without progress bars and cache notices, restored afterwards."""
    import datasets
    from datasets.utils import logging as dlog

    verbosity = dlog.get_verbosity()
    bars_off = datasets.are_progress_bars_disabled()
    dlog.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        dlog.set_verbosity(verbosity)
        if not bars_off:
            datasets.enable_progress_bars()


def _short(e: BaseException) -> str:
    message = " ".join(str(e).split()) or type(e).__name__
    if len(message) > _MAX_ERROR_CHARS:
        message = message[:_MAX_ERROR_CHARS] + "…"
    return message


def _read(parsed: HfSpec) -> tuple[str | None, list[Row]]:
    """(split name, rows) of the data ``parsed`` names, read offline."""
    with _quiet(), tempfile.TemporaryDirectory(prefix="audit-hf-") as tmp:
        table = _load_local(parsed, tmp) if parsed.path is not None else _load_cached(parsed, tmp)
        split, dataset = _pick_split(parsed, table)
        try:
            rows: list[Row] = dataset.to_list()
        except Exception as e:  # an unreadable table is the data's fault
            raise _error(parsed.text, f"cannot read the rows ({_short(e)})") from None
        del table, dataset  # the arrow files live in tmp
    return split, rows


def _load_local(parsed: HfSpec, tmp: str) -> Any:
    spec, path = parsed.text, parsed.path
    assert path is not None
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except (OSError, ValueError) as e:
        raise _error(spec, f"cannot read {path} ({e})") from None
    if is_dir:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            if parsed.config:
                raise _error(
                    spec, f"config={parsed.config}: {path} is a save_to_disk folder (no configs)"
                )
            import datasets

            try:
                return datasets.load_from_disk(str(path))
            except Exception as e:  # a broken folder is the data's fault
                raise _error(
                    spec, f"cannot read the save_to_disk folder {path} ({_short(e)})"
                ) from None
        return _build_folder(spec, str(path.resolve()), tmp, parsed.config)
    if not is_file:
        raise _error(spec, f"no such file or folder: {path}")
    builder = LOCAL_SUFFIXES.get(path.suffix.lower())
    if builder is None:
        known = ", ".join(LOCAL_SUFFIXES)
        raise _error(spec, f"cannot read {path.name}: local files are {known} (or a folder)")
    if parsed.config:
        raise _error(spec, f"config={parsed.config}: a single file has no configs")
    module, options = builder
    files = {parsed.split or "train": str(path.resolve())}
    return _build_file(spec, path, module, tmp, files, options)


def _build_folder(spec: str, folder: str, tmp: str, config: str | None) -> Any:
    """Every split of a dataset folder (a repository layout), prepared in ``tmp``.

    ``load_dataset_builder`` on a folder reads its README configs or data files and never
    touches the network; CSV cells are read as written, as for single files.
    """
    import datasets

    try:
        builder = datasets.load_dataset_builder(folder, name=config, cache_dir=tmp)
        if builder.name == "csv":
            builder = datasets.load_dataset_builder(
                folder, name=config, cache_dir=tmp, keep_default_na=False
            )
        builder.download_and_prepare()
        return builder.as_dataset()
    except Exception as e:  # datasets raises many kinds for unreadable data
        raise _error(spec, f"cannot read {folder} ({_short(e)})") from None


def _build_file(
    spec: str, path: Path, module: str, tmp: str, files: dict[str, str], options: dict[str, Any]
) -> Any:
    """The one split of a local file, prepared in ``tmp`` (the user's cache untouched).

    The builder class is made directly: ``load_dataset_builder("csv", ...)`` would first ping
    the hub to count a download (a network call, unless offline mode is set).
    """
    from datasets.packaged_modules.arrow.arrow import Arrow
    from datasets.packaged_modules.csv.csv import Csv
    from datasets.packaged_modules.json.json import Json
    from datasets.packaged_modules.parquet.parquet import Parquet

    classes: dict[str, Any] = {"csv": Csv, "json": Json, "parquet": Parquet, "arrow": Arrow}
    try:
        builder = classes[module](cache_dir=tmp, data_files=files, **options)
        builder.download_and_prepare()
        if not any(split.num_examples for split in (builder.info.splits or {}).values()):
            raise _error(spec, f"no rows in {path.name}")
        return builder.as_dataset()
    except HfDataError:
        raise
    except Exception as e:  # datasets raises many kinds for unreadable data
        raise _error(spec, f"cannot read {path.name} ({_short(e)})") from None


def _load_cached(parsed: HfSpec, tmp: str) -> Any:
    """A hub dataset from the local caches only: the hub snapshot, then the datasets cache."""
    spec, repo_id = parsed.text, parsed.repo_id
    assert repo_id is not None
    from huggingface_hub import constants, snapshot_download

    problems: list[str] = []
    try:
        snapshot: str | None = snapshot_download(
            repo_id, repo_type="dataset", revision=parsed.revision, local_files_only=True
        )
    except Exception:  # not cached (or a broken cache entry): try the next
        snapshot = None
    if snapshot is not None:
        try:
            return _build_folder(spec, snapshot, tmp, parsed.config)
        except HfDataError as e:
            problems.append(f"the hub cache has {snapshot}, but {str(e).removeprefix(spec + ': ')}")
    if parsed.revision is None:
        import datasets.config
        from datasets.packaged_modules.cache.cache import Cache

        try:
            builder = Cache(
                dataset_name=repo_id.split("/")[-1],
                repo_id=repo_id,
                config_name=parsed.config,
                version="auto",
                hash="auto",
            )
            builder.download_and_prepare()
            return builder.as_dataset()
        except Exception as e:  # not cached, or cached for other configs
            message = _short(e)
            if not message.startswith("Couldn't find cache for") or "Available configs" in message:
                problems.append(f"the datasets cache: {message}")
        datasets_cache = f" or the datasets cache ({datasets.config.HF_DATASETS_CACHE})"
    else:
        datasets_cache = " (a pinned revision is looked up there only)"
    if problems:
        raise _error(spec, "found in the local cache but not readable: " + "; ".join(problems))
    name = repo_id + (f"@{parsed.revision}" if parsed.revision else "")
    rev = f" --revision {parsed.revision}" if parsed.revision else ""
    raise _error(
        spec,
        f"{name} is not in the local Hugging Face cache: not in the hub cache "
        f"({constants.HF_HUB_CACHE}){datasets_cache}; the hub itself is never contacted. Put it "
        f"there on a machine with hub access and the same HF_HOME: `hf download {repo_id} "
        f"--repo-type dataset{rev}` (or load it once with datasets.load_dataset), or download "
        "its files and name them here: hf:./FILE.csv or hf:./FOLDER",
    )


def _pick_split(parsed: HfSpec, table: Any) -> tuple[str | None, Any]:
    """The split ``parsed`` asks for (or the only one) of a DatasetDict; a Dataset as is."""
    import datasets

    spec = parsed.text
    if not isinstance(table, datasets.DatasetDict):
        return parsed.split, table
    names = list(table)
    if parsed.split is not None:
        if parsed.split not in table:
            raise _error(
                spec,
                f"no split {parsed.split!r}{_suggest(parsed.split, names)}; splits: "
                f"{', '.join(names)}",
            )
        return parsed.split, table[parsed.split]
    if len(names) == 1:
        return names[0], table[names[0]]
    raise _error(spec, f"has the splits {', '.join(names)}: name one with split=NAME")
