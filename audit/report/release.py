"""Render a release comparison (``comparison.json``, :mod:`audit.release.compare`) as one HTML page.

The page (``index.html`` beside ``comparison.json``) puts the verdict first, then the gates
(failed first), the warnings, every OLD → NEW change sorted worst first (significant worsenings
on top, coloured by each metric's direction like the run report's deltas), the item coverage of
each metric, and both runs' provenance. Like the run report it is self-contained, loads
nothing and runs no script; every string from either run is untrusted and HTML-escaped (jinja2
autoescape, tables through :func:`audit.report.render._table`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from markupsafe import Markup

import audit
from audit.files import atomic_write_text
from audit.report.format import (
    ALPHA,
    DASH,
    as_float,
    cell_text,
    delta_class,
    delta_direction,
    delta_text,
    gates_table,
    html_table,
    num,
    p_text,
    significant,
)
from audit.report.page import HERE, jinja_environment
from audit.results import parse_results


def _rows(data: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    """A table of comparison.json (or of one of its runs) as a list of dicts."""
    rows = data.get(key)
    return [dict(r) for r in rows if isinstance(r, Mapping)] if isinstance(rows, list) else []


def _info(data: Mapping[str, Any], side: str) -> Mapping[str, Any]:
    info = data.get(side)
    return info if isinstance(info, Mapping) else {}


# --- the regression table ---------------------------------------------------------------------


def _standing(row: Mapping[str, Any]) -> str:
    """``worse`` / ``same`` / ``better`` / ``unknown``; ``*`` appended when significant."""
    direction = delta_direction(row.get("delta"), row.get("higher_is_better", True))
    word = {"bad": "worse", "good": "better"}.get(direction, direction)
    return word + "*" if word in ("worse", "better") and significant(row.get("p_value")) else word


_RANK = {"worse*": 0, "worse": 1, "unknown": 2, "same": 3, "better": 4, "better*": 5}


def _worst_first(row: Mapping[str, Any]) -> tuple[int, float, float]:
    delta = as_float(row.get("delta")) or 0.0
    harm = -delta if row.get("higher_is_better", True) else delta
    p = as_float(row.get("p_value"))
    return _RANK[_standing(row)], -harm, 1.0 if p is None else p


_REGRESSION_COLUMNS = ["change", "model", "old model", "evaluator · metric", "slice", "old",
                       "new", "Δ [95% CI]", "p", "n", "test"]  # fmt: skip


def _regression_table(name: str, comparisons: Sequence[Mapping[str, Any]], empty: str) -> Markup:
    rows, classes = [], []
    for c in sorted(comparisons, key=_worst_first):
        standing = _standing(c)
        rows.append(
            {
                "change": standing.replace("*", " *"),
                "model": cell_text(c.get("model")),
                "old model": cell_text(c.get("baseline")),
                "evaluator · metric": (
                    f"{cell_text(c.get('evaluator'))} · {cell_text(c.get('metric'))}"
                ),
                "slice": cell_text(c.get("slice", "all")),
                "old": num(c.get("before")),
                "new": num(c.get("after")),
                "Δ [95% CI]": delta_text(c),
                "p": p_text(c.get("p_value")),
                "n": cell_text(c.get("n")),
                "test": cell_text(c.get("test")),
            }
        )
        cls = delta_class(c)
        classes.append({"change": cls, "Δ [95% CI]": cls})
    return html_table(name, _REGRESSION_COLUMNS, rows, classes, empty=empty)


def _counts(comparisons: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(_RANK, 0)
    for c in comparisons:
        counts[_standing(c)] += 1
    counts["unpaired"] = sum(c.get("test") == "unpaired" for c in comparisons)
    counts["total"] = len(comparisons)
    return counts


# --- coverage, models, provenance -------------------------------------------------------------


def _coverage_table(coverage: Sequence[Mapping[str, Any]]) -> Markup:
    """Metrics compared unpaired, or paired on item sets that differ between the runs."""
    columns = ["model", "old model", "evaluator", "metric", "items old", "items new", "shared",
               "paired", "note"]  # fmt: skip
    rows = [
        {
            "model": cell_text(c.get("model")),
            "old model": cell_text(c.get("baseline")),
            "evaluator": cell_text(c.get("evaluator")),
            "metric": cell_text(c.get("metric")),
            "items old": cell_text(c.get("items_old")),
            "items new": cell_text(c.get("items_new")),
            "shared": cell_text(c.get("items_shared")),
            "paired": cell_text(bool(c.get("paired"))),
            "note": cell_text(c.get("note") or None),
        }
        for c in coverage
        if not c.get("paired")
        or not c.get("items_old") == c.get("items_new") == c.get("items_shared")
    ]
    empty = "Every metric was paired on the same items in both runs."
    return html_table("coverage", columns, rows, [{"note": "text"}] * len(rows), empty=empty)


def _models_table(data: Mapping[str, Any]) -> Markup:
    rows: list[dict[str, str]] = []
    classes: list[dict[str, str]] = []
    for p in _rows(data, "pairs"):
        new, old = cell_text(p.get("new")), cell_text(p.get("old"))
        rows.append(
            {"new run": new, "old run": old, "matched": "by name" if new == old else "pair"}
        )
        classes.append({})
    unmatched = data.get("unmatched")
    unmatched = unmatched if isinstance(unmatched, Mapping) else {}
    for side, column in (("new", "new run"), ("old", "old run")):
        for name in unmatched.get(side) or []:
            rows.append(
                {"new run": DASH, "old run": DASH, column: cell_text(name), "matched": "no"}
            )
            classes.append({"matched": "fail"})
    columns = ["new run", "old run", "matched"]
    return html_table("pairs", columns, rows, classes, empty="No models.")


_FACTS = [("results file", "path"), ("suite", "name"), ("title", "title"), ("suite hash", "hash"),
          ("suite file", "suite_path"), ("started", "started_at"), ("finished", "finished_at"),
          ("run verdict", "verdict"), ("models", "models"), ("failed steps", "failures"),
          ("audit version", "audit"), ("results schema", "schema_version")]  # fmt: skip


def _provenance_table(old: Mapping[str, Any], new: Mapping[str, Any]) -> Markup:
    facts: list[tuple[str, Any, Any]] = [(label, old.get(k), new.get(k)) for label, k in _FACTS]
    env0, env1 = old.get("environment"), new.get("environment")
    env0, env1 = (e if isinstance(e, Mapping) else {} for e in (env0, env1))
    skip = {"audit", "started_at", "finished_at"}
    for key in [*env0, *(k for k in env1 if k not in env0)]:
        if key not in skip:
            facts.append((str(key), env0.get(key), env1.get(key)))
    rows = [
        {"": cell_text(label), "old": cell_text(a), "new": cell_text(b)} for label, a, b in facts
    ]
    classes = [{"new": "differs"} if a != b else {} for _, a, b in facts]
    return html_table("provenance", ["", "old", "new"], rows, classes, empty="Not recorded.")


def _evaluators_table(old: Mapping[str, Any], new: Mapping[str, Any]) -> Markup:
    def index(info: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
        return {str(e.get("name")): e for e in _rows(info, "evaluators")}

    before, after = index(old), index(new)
    rows, classes = [], []
    for name in [*after, *(n for n in before if n not in after)]:
        b, a = before.get(name, {}), after.get(name, {})
        same = b.get("params") == a.get("params")
        params = "same" if same else "differ" if b and a else DASH
        rows.append(
            {
                "evaluator": cell_text(name),
                "kind": cell_text(a.get("kind") or b.get("kind")),
                "old version": cell_text(b.get("version")) if b else "not run",
                "new version": cell_text(a.get("version")) if a else "not run",
                "parameters": params,
                "new parameters": cell_text(
                    json.dumps(a.get("params"), sort_keys=True, default=str)
                )
                if a and not same
                else DASH,
            }
        )
        differs = "differs" if b.get("version") != a.get("version") else ""
        classes.append({"new version": differs, "parameters": "" if same else "differs",
                        "new parameters": "text"})  # fmt: skip
    columns = ["evaluator", "kind", "old version", "new version", "parameters", "new parameters"]
    return html_table("evaluators", columns, rows, classes, empty="No evaluators recorded.")


def _label(info: Mapping[str, Any], other: Mapping[str, Any]) -> str:
    """A run as its results file and finish time, with its title where the other's differs."""
    parts = [cell_text(info.get("path") or info.get("name"))]
    if info.get("finished_at"):
        parts.append(f"finished {cell_text(info.get('finished_at'))}")
    title = info.get("title") or info.get("name")
    if title != (other.get("title") or other.get("name")):
        parts.insert(0, cell_text(title))
    return " · ".join(parts)


# --- rendering --------------------------------------------------------------------------------


def render_comparison_html(data: Mapping[str, Any]) -> str:
    """The page for a release comparison (a ``comparison.json`` dict)."""
    old, new = _info(data, "old"), _info(data, "new")
    gates = [dict(g) for g in _rows(data, "gates")]
    comparisons = _rows(data, "comparisons")
    suite = _info(data, "suite")
    failures = [
        {
            "step": cell_text(f.get("step")),
            "error": cell_text(f.get("error")),
            "traceback": str(f.get("traceback") or ""),
        }
        for f in _rows(data, "failures")
    ]
    warnings = data.get("warnings")
    context = {
        "title": cell_text(
            suite.get("title") or suite.get("name") or new.get("title") or "release"
        ),
        "old_label": _label(old, new),
        "new_label": _label(new, old),
        "created": cell_text(data.get("created_at")),
        "verdict": parse_results(data, "comparison.json").verdict_text(),
        "gates_from": cell_text(data.get("gates_from")),
        "counts": {
            **_counts(comparisons),
            "gates": len(gates),
            "gates_failed": sum(not g.get("passed") for g in gates),
            "failures": len(failures),
        },
        "gates": gates_table(gates),
        "failures": failures,
        "warnings": [cell_text(w) for w in warnings] if isinstance(warnings, list) else [],
        "changed": _regression_table(
            "regressions",
            [c for c in comparisons if _standing(c) != "same"],
            "No metric changed." if comparisons else "Nothing to compare.",
        ),
        "unchanged": _regression_table(
            "unchanged", [c for c in comparisons if _standing(c) == "same"], "None."
        ),
        "coverage": _coverage_table(_rows(data, "coverage")),
        "models": _models_table(data),
        "provenance": _provenance_table(old, new),
        "evaluators": _evaluators_table(old, new),
        "alpha": ALPHA,
        "schema_version": cell_text(data.get("schema_version")),
        "audit_version": audit.__version__,
        "css": Markup((HERE / "style.css").read_text(encoding="utf-8")),
    }
    return jinja_environment().get_template("compare.html.j2").render(**context)


def render_comparison(data: Mapping[str, Any], out_path: Path) -> Path:
    """Write the page atomically and return its path.

    ``out_path`` is the output directory (the page goes to ``index.html`` in it) or a file path
    ending in ``.html``; readers see the old page or the new one, never half of one.
    """
    out_path = Path(out_path)
    target = out_path if out_path.suffix in (".html", ".htm") else out_path / "index.html"
    atomic_write_text(target, render_comparison_html(data))
    return target
