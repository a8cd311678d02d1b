"""Values to display text for the report pages: numbers, intervals, p-values, cut text, and
the pandas-styled HTML table every section uses."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pandas as pd
from markupsafe import Markup
from pandas.io.formats.style import Styler

from audit.report.text import clean

ALPHA = 0.05
"""A paired test below this p-value counts as significant (bold and starred)."""
MAX_CHARS = 500
"""Prompts and outputs longer than this are cut, with :data:`TRUNCATED` appended."""
DASH = "—"
TRUNCATED = "… (truncated)"
EMPTY_STYLE = re.compile(r'<style type="text/css">\s*</style>\s*')
Row = dict[str, str]


# --- values -> display text -------------------------------------------------------------------


def clean_text(text: str) -> str:
    """``text`` as a plain str HTML can carry (:func:`audit.report.text.clean`)."""
    return clean(text)


def as_float(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, NaN or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def num(value: Any, digits: int = 3, signed: bool = False) -> str:
    number = as_float(value)
    if number is None:
        return DASH
    if math.isinf(number):
        return ("+∞" if signed else "∞") if number > 0 else "-∞"
    sign = "+" if signed else ""
    if number != 0 and (abs(number) >= 1e5 or abs(number) < 10**-digits):
        return f"{number:{sign}.{digits}g}"
    return f"{number:{sign}.{digits}f}"


def item_value(value: Any) -> str:
    """A per-item value: ``1`` / ``0`` for rates, three decimals otherwise."""
    number = as_float(value)
    if number is not None and number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return num(value)


def ci_text(low: Any, high: Any, signed: bool = False) -> str:
    if as_float(low) is None or as_float(high) is None:
        return ""
    return f"[{num(low, signed=signed)}, {num(high, signed=signed)}]"


def p_text(value: Any) -> str:
    p = as_float(value)
    if p is None:
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def cell_text(value: Any) -> str:
    """Any value as plain text (never markup): ``—`` for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return num(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(cell_text(v) for v in value) if value else DASH
    if isinstance(value, Mapping):
        return clean_text(json.dumps(value, sort_keys=True, default=str, ensure_ascii=False))
    return clean_text(str(value)) if str(value) else DASH


def cut(text: Any, limit: int = MAX_CHARS) -> str:
    plain = "" if text is None else clean_text(str(text))
    return plain if len(plain) <= limit else plain[:limit] + TRUNCATED


def significant(p_value: Any) -> bool:
    p = as_float(p_value)
    return p is not None and p < ALPHA


def delta_direction(delta: Any, higher_is_better: Any) -> str:
    """``good`` / ``bad`` / ``same`` for a change, given the metric's direction."""
    number = as_float(delta)
    if number is None:
        return "unknown"
    if number == 0:
        return "same"
    return "good" if (number > 0) == bool(higher_is_better) else "bad"


def delta_text(row: Mapping[str, Any]) -> str:
    mark = " *" if significant(row.get("p_value")) else ""
    interval = ci_text(row.get("ci_low"), row.get("ci_high"), signed=True)
    return " ".join(filter(None, [num(row.get("delta"), signed=True) + mark, interval]))


CHANGE = "change after − before [CI]"
"""The column of a comparison's paired change and its interval."""


def comparison_cells(row: Mapping[str, Any], metric: str | None = None) -> dict[str, str]:
    """A comparison row's cells: model, baseline, relation, metric (``metric`` given: in its
    place), slice, before, after, the change with its interval, p, n and the test."""
    return {
        "model": cell_text(row.get("model")),
        "baseline": cell_text(row.get("baseline")),
        "relation": cell_text(row.get("relation")),
        "metric": cell_text(row.get("metric")) if metric is None else metric,
        "slice": cell_text(row.get("slice", "all")),
        "before": num(row.get("before")),
        "after": num(row.get("after")),
        CHANGE: delta_text(row),
        "p": p_text(row.get("p_value")),
        "n": cell_text(row.get("n")),
        "test": cell_text(row.get("test")),
    }


def delta_class(row: Mapping[str, Any]) -> str:
    classes = ["delta", delta_direction(row.get("delta"), row.get("higher_is_better", True))]
    if significant(row.get("p_value")):
        classes.append("sig")
    return " ".join(classes)


# --- tables -----------------------------------------------------------------------------------


def html_table(
    name: str,
    columns: Sequence[str],
    rows: Sequence[Mapping[str, str]],
    classes: Sequence[Mapping[str, str]] | None = None,
    empty: str = "None.",
) -> Markup:
    """Rows of plain text rendered by Styler; every cell and label is HTML-escaped."""
    if not rows:
        return Markup('<p class="empty">{}</p>').format(empty)
    labels = unique_labels([clean_text(col) for col in columns])
    data = [[clean_text(str(row.get(col, DASH))) for col in columns] for row in rows]
    frame = pd.DataFrame(data, columns=labels, dtype=object)
    styler = (
        Styler(frame, uuid=name, cell_ids=False)
        .hide(axis="index")
        .format(escape="html", na_rep=DASH)
        .format_index(escape="html", axis=1)
    )
    if classes is not None:
        css = [[cls.get(col, "") for col in columns] for cls in classes]
        styler = styler.set_td_classes(pd.DataFrame(css, columns=labels))
    with pd.option_context("styler.render.max_elements", 10**8):
        html = styler.to_html(table_attributes=f'class="tbl {name}"')
    return Markup('<div class="table-wrap">{}</div>').format(Markup(EMPTY_STYLE.sub("", html)))


def unique_labels(labels: list[str]) -> list[str]:
    """Column labels made unique (Styler needs them so) by numbering repeats."""
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return unique


MAX_CARDS = 12
"""Failed gates explained as cards at the top of the report; all of them are in the table."""


def fired_gates(gates: list[dict[str, Any]]) -> list[Row]:
    """The failed gates, each with what was observed, the threshold, and why it fired."""
    return [
        {
            "name": cell_text(g.get("name")),
            "model": cell_text(g.get("model")),
            "baseline": cell_text(g.get("baseline")) if g.get("baseline") else "",
            "rule": cell_text(g.get("rule")),
            "observed": num(g.get("observed")),
            "threshold": num(g.get("threshold")),
            "detail": cell_text(g.get("detail")),
        }
        for g in gates
        if not g.get("passed")
    ][:MAX_CARDS]


def gates_table(gates: list[dict[str, Any]]) -> Markup:
    ordered = sorted(gates, key=lambda g: bool(g.get("passed")))
    columns = ["result", "gate", "rule", "model", "baseline", "observed", "threshold", "detail"]
    rows, classes = [], []
    for g in ordered:
        ok = bool(g.get("passed"))
        rows.append(
            {
                "result": "PASS" if ok else "FAIL",
                "gate": cell_text(g.get("name")),
                "rule": cell_text(g.get("rule")),
                "model": cell_text(g.get("model")),
                "baseline": cell_text(g.get("baseline")),
                "observed": num(g.get("observed")),
                "threshold": num(g.get("threshold")),
                "detail": cell_text(g.get("detail")),
            }
        )
        classes.append({"result": "pass" if ok else "fail", "detail": "text"})
    return html_table("gates", columns, rows, classes, empty="No gates defined.")


def seconds_text(duration: float) -> str:
    if duration < 60:
        return f"{duration:.2f} s"
    minutes, seconds = divmod(round(duration), 60)
    return (
        f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"
        if minutes >= 60
        else f"{minutes}:{seconds:02d} min"
    )


def elapsed_s(start: Any, end: Any) -> float | None:
    """Seconds between two ISO timestamps, or None when either is missing or unreadable."""
    try:
        delta = datetime.fromisoformat(str(end)) - datetime.fromisoformat(str(start))
    except (TypeError, ValueError):
        return None
    return max(delta.total_seconds(), 0.0)
