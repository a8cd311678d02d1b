"""Rows of public safety sets, in their own columns, as refusal-probe records.

Each converter takes the rows of one split (``dict`` per row, as ``datasets`` reads them) and
returns plain dicts with ``id``, ``prompt``, ``label`` (unsafe | safe | borderline) and
``category``, plus a few of the set's own columns kept as extra keys; :mod:`audit.data.records`
validates them as :class:`~audit.data.records.ProbeRecord`. A row that does not fit raises
:class:`FormatError` naming the row (1-based, in the order of the split).

``hf:`` data specs name a converter with ``format=NAME`` (:mod:`audit.data.hub`):

- ``columns`` (the default): the data's own columns, optionally renamed (``prompt=COL``,
  ``label=COL``, ``category=COL``, ``id=COL``) or with one label for every row
  (``fixed_label=unsafe``); it works for any record shape, not only probes;
- ``xstest``, ``harmbench``, ``strongreject``, ``jbb``: the public sets' native files, each
  checked against the file its docstring cites.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

LABELS = ("unsafe", "safe", "borderline")
LABEL_SYNONYMS = {
    "unsafe": "unsafe",
    "harmful": "unsafe",
    "safe": "safe",
    "benign": "safe",
    "harmless": "safe",
    "borderline": "borderline",
}
"""Label values the ``columns`` format accepts (case and surrounding spaces ignored)."""

PROBE_FIELDS = ("id", "prompt", "label", "category")

FORMATS_VERSION = 1
"""Bumped whenever a converter maps the same rows to different records (it is part of
:func:`audit.data.hub.hf_data_digest`)."""

Row = dict[str, Any]


class FormatError(ValueError):
    """Rows that do not fit the format they were read as."""


@dataclass(frozen=True)
class Context:
    """What a converter knows besides the rows.

    ``split`` is the split the rows come from (``None`` when the data has no named splits);
    ``columns`` maps record fields to the data's columns (``columns`` format only);
    ``fixed_label`` is one label for every row; ``fields`` / ``required`` are the record
    shape's fields and its required ones.
    """

    split: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    fixed_label: str | None = None
    fields: Sequence[str] = PROBE_FIELDS
    required: Sequence[str] = ("id", "prompt", "label")


@dataclass(frozen=True)
class Format:
    """A converter and what it makes."""

    name: str
    convert: Callable[[list[Row], Context], list[Row]]
    probes_only: bool
    """True when it makes refusal probes only (the named sets); ``columns`` makes any shape."""
    summary: str


def text(value: Any) -> str:
    """A cell as text: missing (``None``, NaN) is ``""``; numbers print as written."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _columns(rows: list[Row]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _need(rows: list[Row], fmt: str, required: Iterable[str]) -> None:
    have = _columns(rows)
    missing = [c for c in required if c not in have]
    if missing:
        raise FormatError(
            f"format {fmt!r} needs the column(s) {', '.join(missing)}; the data has: "
            f"{', '.join(have) or 'no columns'}"
        )


def _prompt(row: Row, column: str, n: int) -> str:
    value = text(row.get(column))
    if not value.strip():
        raise FormatError(f"row {n}: empty {column}")
    return value


def _extras(row: Row, names: dict[str, str]) -> Row:
    """The set's own columns worth keeping, under snake_case names (absent ones skipped)."""
    return {ours: text(row[theirs]) for theirs, ours in names.items() if theirs in row}


def xstest(rows: list[Row], ctx: Context) -> list[Row]:
    """XSTest (Röttger et al., NAACL 2024, arXiv:2308.01263): 250 safe prompts that look
    unsafe and 200 unsafe contrasts.

    Checked against ``xstest_prompts.csv`` of github.com/paul-rottger/exaggerated-safety
    (commit 475f10bf0a3d6a9dfb174b6de1a38afbfdff98a5, still the file at HEAD d7bb5bd): columns
    ``id,prompt,type,label,focus,note``; ``id`` runs 1…450 in file order; ``label`` is
    ``safe`` or ``unsafe``; ``type`` is one of 18 categories (``homonyms``,
    ``contrast_homonyms``, …, ``privacy_fictional``, ``contrast_privacy``), and every
    ``contrast_*`` type is ``unsafe`` (the repository's README: unsafe prompts "are those where
    the type starts with contrast_").

    ``type`` becomes the category; ``focus`` and ``note`` are kept. A copy without ``id``
    numbers the rows from 1 (the original ids); a copy without ``label`` takes it from the
    ``contrast_`` rule.
    """
    _need(rows, "xstest", ("prompt", "type"))
    out = []
    for n, row in enumerate(rows, start=1):
        kind = text(row.get("type")).strip()
        if "label" in row:
            label = text(row["label"]).strip().lower()
            if label not in ("safe", "unsafe"):
                raise FormatError(
                    f"row {n}: label {text(row['label'])!r}: XSTest labels are 'safe' or 'unsafe'"
                )
        else:
            label = "unsafe" if kind.startswith("contrast_") else "safe"
        out.append(
            {
                "id": text(row.get("id")).strip() or str(n),
                "prompt": _prompt(row, "prompt", n),
                "label": label,
                "category": kind or "none",
                **_extras(row, {"focus": "focus", "note": "note"}),
            }
        )
    return out


HARMBENCH_CONTEXT_SEPARATOR = "\n\n---\n\n"


def harmbench(rows: list[Row], ctx: Context) -> list[Row]:
    """HarmBench text behaviours (Mazeika et al., 2024, arXiv:2402.04249); every row unsafe.

    Checked against ``data/behavior_datasets/harmbench_behaviors_text_all.csv`` of
    github.com/centerforaisafety/HarmBench, read through a verbatim copy at
    github.com/busycalibrating/AdversariaLLM (same path, commit
    e9b12411166deddbc9b0c994f71e302944c9bb88): columns
    ``Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID``;
    ``FunctionalCategory`` is ``standard``, ``contextual`` or ``copyright``;
    ``SemanticCategory`` e.g. ``chemical_biological``, ``illegal``,
    ``misinformation_disinformation``, ``harassment_bullying``, ``cybercrime_intrusion``,
    ``harmful``, ``copyright``; contextual rows carry a (often multi-line, quoted)
    ``ContextString``, other rows leave it empty.

    The prompt is built as HarmBench's ``DirectRequest`` baseline builds its test case
    (``baselines/direct_request/direct_request.py``, read through the copy at
    github.com/JiaweiLian/SRA, commit ebfe756226ea17814e184b4b69c6d352cb20abe2): the behaviour,
    or ``f"{context}\\n\\n---\\n\\n{behavior}"`` when there is a context. ``BehaviorID`` is the
    id, ``SemanticCategory`` the category; ``FunctionalCategory`` and ``Tags`` are kept. Rows
    of the multimodal file (an ``ImageFileName``) are refused: the probes are text only.
    """
    _need(rows, "harmbench", ("Behavior", "SemanticCategory"))
    out = []
    for n, row in enumerate(rows, start=1):
        if text(row.get("ImageFileName")).strip():
            raise FormatError(f"row {n}: a multimodal behaviour (ImageFileName); probes are text")
        behavior = _prompt(row, "Behavior", n)
        context = text(row.get("ContextString"))
        prompt = (
            f"{context}{HARMBENCH_CONTEXT_SEPARATOR}{behavior}" if context.strip() else behavior
        )
        out.append(
            {
                "id": text(row.get("BehaviorID")).strip() or str(n),
                "prompt": prompt,
                "label": "unsafe",
                "category": text(row.get("SemanticCategory")).strip() or "none",
                **_extras(row, {"FunctionalCategory": "functional_category", "Tags": "tags"}),
            }
        )
    return out


def strongreject(rows: list[Row], ctx: Context) -> list[Row]:
    """StrongREJECT forbidden prompts (Souly et al., NeurIPS 2024, arXiv:2402.10260); every row
    unsafe.

    Checked against ``strongreject_dataset/strongreject_dataset.csv`` (and
    ``strongreject_small_dataset.csv``) of github.com/alexandrasouly/strongreject: columns
    ``category,source,forbidden_prompt`` and no id column (313 rows, per the
    walledai/StrongREJECT card). The upstream repository was not readable here, so no commit is
    pinned; the header is the one the authors' own loader reads (``strong_reject/
    load_datasets.py`` loads that raw CSV with ``datasets.load_dataset("csv", ...)`` and uses
    ``forbidden_prompt``) and the one the walledai/StrongREJECT card (which links this file)
    and PyRIT's loader (microsoft/PyRIT pull request 1800) describe. Categories are e.g.
    ``Disinformation and deception``, ``Hate, harassment and discrimination`` (quoted: it has
    commas), ``Illegal goods and services``, ``Non-violent crimes``, ``Sexual content``,
    ``Violence``; ``source`` names where a prompt came from (``custom``, ``AdvBench``,
    ``DAN``, …) and is kept. Rows are numbered from 1 for their ids.
    """
    _need(rows, "strongreject", ("forbidden_prompt", "category"))
    return [
        {
            "id": str(n),
            "prompt": _prompt(row, "forbidden_prompt", n),
            "label": "unsafe",
            "category": text(row.get("category")).strip() or "none",
            **_extras(row, {"source": "source"}),
        }
        for n, row in enumerate(rows, start=1)
    ]


JBB_SPLITS = {"harmful": "unsafe", "benign": "safe"}


def jbb(rows: list[Row], ctx: Context) -> list[Row]:
    """JailbreakBench JBB-Behaviors (Chao et al., NeurIPS 2024 D&B, arXiv:2404.01318).

    Checked against the Hugging Face dataset JailbreakBench/JBB-Behaviors (its card: config
    ``behaviors`` with splits ``harmful`` = ``data/harmful-behaviors.csv`` and ``benign`` =
    ``data/benign-behaviors.csv``; commit d72ab3e "Add Index column name") and the rows of a
    copy of both files at github.com/Baisayan/hack (``data/harmful-behaviors.csv``,
    ``data/benign-behaviors.csv``, commit 2b37da1c255e43e16a74ecd3e51c99ea992b5237): columns
    ``Index,Goal,Target,Behavior,Category,Source`` (that copy writes them in lower case, which
    is accepted too); ``Index`` counts from 0 in that copy; ``Goal`` is the request,
    ``Target`` an affirmative answer, ``Behavior`` a short name shared by a harmful row and its
    benign twin (same ``Index``), ``Category`` e.g. ``Harassment/Discrimination``,
    ``Malware/Hacking``, ``Privacy``, ``Source`` ``Original``, ``AdvBench`` or
    ``TDC/HarmBench``.

    Both files have the same columns, so the label comes from the split: ``harmful`` → unsafe,
    ``benign`` → safe (or from ``fixed_label``). ``Goal`` is the prompt, ``Index`` the id,
    ``Category`` the category; ``Behavior`` and ``Source`` are kept.
    """
    rows = [{_JBB_COLUMNS.get(k, k): v for k, v in row.items()} for row in rows]
    _need(rows, "jbb", ("Goal", "Category"))
    label = ctx.fixed_label or JBB_SPLITS.get((ctx.split or "").lower())
    if label is None:
        where = f"split {ctx.split!r}" if ctx.split else "data without a named split"
        raise FormatError(
            f"JBB-Behaviors rows carry no label and {where} does not give one: read split=harmful "
            "or split=benign, or set fixed_label=unsafe|safe"
        )
    return [
        {
            "id": text(row.get("Index")).strip() or str(n),
            "prompt": _prompt(row, "Goal", n),
            "label": label,
            "category": text(row.get("Category")).strip() or "none",
            **_extras(row, {"Behavior": "behavior", "Source": "source"}),
        }
        for n, row in enumerate(rows, start=1)
    ]


_JBB_COLUMNS = {c.lower(): c for c in ("Index", "Goal", "Target", "Behavior", "Category", "Source")}


def columns(rows: list[Row], ctx: Context) -> list[Row]:
    """The data's own columns as record fields, renamed where ``ctx.columns`` says.

    Every column is kept (as an extra key where it is no field); a field named in
    ``ctx.columns`` takes that column's value. ``id`` defaults to the row number; ``label``
    values may be written as in :data:`LABEL_SYNONYMS`, or replaced by ``fixed_label``; an
    empty ``category`` is left to the record's default.
    """
    have = _columns(rows)
    for fname, column in ctx.columns.items():
        if column not in have:
            raise FormatError(
                f"{fname}={column}: no column {column!r}; the data has: {', '.join(have)}"
            )
    for fname in ctx.required:
        if fname == "id" or (fname == "label" and ctx.fixed_label):
            continue
        if ctx.columns.get(fname, fname) not in have:
            raise FormatError(
                f"no {fname!r} column: name the column that holds it with {fname}=COLUMN; "
                f"the data has: {', '.join(have) or 'no columns'}"
            )
    out = []
    for n, row in enumerate(rows, start=1):
        record = dict(row)
        for fname in ctx.fields:
            column = ctx.columns.get(fname, fname)
            if column in row:
                record[fname] = row[column]
        record["id"] = text(record.get("id")).strip() or str(n)
        if "label" in ctx.fields:
            if ctx.fixed_label:
                record["label"] = ctx.fixed_label
            elif "label" in record:
                raw = text(record["label"])
                label = LABEL_SYNONYMS.get(raw.strip().lower())
                if label is None:
                    raise FormatError(
                        f"row {n}: label {raw!r}: write unsafe, safe or borderline (or harmful "
                        "/ benign / harmless)"
                    )
                record["label"] = label
        if "category" in ctx.fields and "category" in record:
            category = text(record["category"]).strip()
            if category:
                record["category"] = category
            else:
                del record["category"]
        out.append(record)
    return out


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("columns", columns, False, "the data's own columns (renamed with FIELD=COLUMN)"),
        Format("xstest", xstest, True, "XSTest: id, prompt, type, label"),
        Format("harmbench", harmbench, True, "HarmBench behaviours: all unsafe"),
        Format("strongreject", strongreject, True, "StrongREJECT: all unsafe"),
        Format("jbb", jbb, True, "JailbreakBench JBB-Behaviors: harmful/benign split"),
    )
}
"""Formats by name (``format=NAME`` in an ``hf:`` spec)."""
