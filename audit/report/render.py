"""Render a run's results as one self-contained HTML report (``index.html``).

The page is built from the results contract (:mod:`audit.results`) and the run's samples:
jinja2 (autoescape on) lays out the sections, pandas' Styler renders the tables. Every string a
run produces -- model names, prompts, outputs, error messages -- is untrusted: it is HTML-escaped
before it reaches the page. The page loads nothing; its one inline script (sorting tables) is
allowed by its hash in the Content-Security-Policy, so no other script can run, and every
section reads the same with JavaScript off.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from markupsafe import Markup
from pandas.io.formats.style import Styler

import audit
from audit.faults import fault_point
from audit.report.text import clean

ALPHA = 0.05
"""A paired test below this p-value counts as significant (bold and starred)."""
MAX_FLIPS = 50
"""Flipped items listed per evaluator; the rest are counted and left to samples.jsonl."""
MAX_CHARS = 500
"""Prompts and outputs longer than this are cut, with :data:`TRUNCATED` appended."""
DASH = "—"
TRUNCATED = "… (truncated)"

_HERE = Path(__file__).parent
SCRIPT = (_HERE / "sort.js").read_text(encoding="utf-8").strip()
"""The page's only script (click a column heading to sort); the CSP allows it by its hash."""
SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
_EMPTY_STYLE = re.compile(r'<style type="text/css">\s*</style>\s*')
Row = dict[str, str]


# --- values -> display text -------------------------------------------------------------------


def _clean(text: str) -> str:
    """``text`` as a plain str HTML can carry (:func:`audit.report.text.clean`)."""
    return clean(text)


def _float(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, NaN or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _num(value: Any, digits: int = 3, signed: bool = False) -> str:
    number = _float(value)
    if number is None:
        return DASH
    if math.isinf(number):
        return ("+∞" if signed else "∞") if number > 0 else "-∞"
    sign = "+" if signed else ""
    if number != 0 and (abs(number) >= 1e5 or abs(number) < 10**-digits):
        return f"{number:{sign}.{digits}g}"
    return f"{number:{sign}.{digits}f}"


def _item_value(value: Any) -> str:
    """A per-item value: ``1`` / ``0`` for rates, three decimals otherwise."""
    number = _float(value)
    if number is not None and number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return _num(value)


def _ci(low: Any, high: Any, signed: bool = False) -> str:
    if _float(low) is None or _float(high) is None:
        return ""
    return f"[{_num(low, signed=signed)}, {_num(high, signed=signed)}]"


def _p(value: Any) -> str:
    p = _float(value)
    if p is None:
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _text(value: Any) -> str:
    """Any value as plain text (never markup): ``—`` for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value) if value else DASH
    if isinstance(value, Mapping):
        return _clean(json.dumps(value, sort_keys=True, default=str, ensure_ascii=False))
    return _clean(str(value)) if str(value) else DASH


def _cut(text: Any, limit: int = MAX_CHARS) -> str:
    plain = "" if text is None else _clean(str(text))
    return plain if len(plain) <= limit else plain[:limit] + TRUNCATED


def _significant(p_value: Any) -> bool:
    p = _float(p_value)
    return p is not None and p < ALPHA


def _direction(delta: Any, higher_is_better: Any) -> str:
    """``good`` / ``bad`` / ``same`` for a change, given the metric's direction."""
    number = _float(delta)
    if number is None:
        return "unknown"
    if number == 0:
        return "same"
    return "good" if (number > 0) == bool(higher_is_better) else "bad"


def _delta_text(row: Mapping[str, Any]) -> str:
    mark = " *" if _significant(row.get("p_value")) else ""
    interval = _ci(row.get("ci_low"), row.get("ci_high"), signed=True)
    return " ".join(filter(None, [_num(row.get("delta"), signed=True) + mark, interval]))


def _delta_class(row: Mapping[str, Any]) -> str:
    classes = ["delta", _direction(row.get("delta"), row.get("higher_is_better", True))]
    if _significant(row.get("p_value")):
        classes.append("sig")
    return " ".join(classes)


# --- tables -----------------------------------------------------------------------------------


def _table(
    name: str,
    columns: Sequence[str],
    rows: Sequence[Mapping[str, str]],
    classes: Sequence[Mapping[str, str]] | None = None,
    empty: str = "None.",
) -> Markup:
    """Rows of plain text rendered by Styler; every cell and label is HTML-escaped."""
    if not rows:
        return Markup('<p class="empty">{}</p>').format(empty)
    labels = _unique([_clean(col) for col in columns])
    data = [[_clean(str(row.get(col, DASH))) for col in columns] for row in rows]
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
    return Markup('<div class="table-wrap">{}</div>').format(Markup(_EMPTY_STYLE.sub("", html)))


def _unique(labels: list[str]) -> list[str]:
    """Column labels made unique (Styler needs them so) by numbering repeats."""
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return unique


def _rows(results: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    rows = results.get(key)
    return [dict(r) for r in rows if isinstance(r, Mapping)] if isinstance(rows, list) else []


def verdict(results: Mapping[str, Any]) -> str:
    """``PASS`` / ``FAIL`` / ``ERROR``: the run's own verdict, else derived like its exit code.

    ``ERROR`` when a step crashed, else ``FAIL`` when a gate failed, else ``PASS``.
    """
    given = str(results.get("verdict") or "").upper()
    if given in ("PASS", "FAIL", "ERROR"):
        return given
    if _rows(results, "failures"):
        return "ERROR"
    return "FAIL" if any(not g.get("passed") for g in _rows(results, "gates")) else "PASS"


MAX_CARDS = 12
"""Failed gates explained as cards at the top of the report; all of them are in the table."""


def _fired(gates: list[dict[str, Any]]) -> list[Row]:
    """The failed gates, each with what was observed, the threshold, and why it fired."""
    return [
        {
            "name": _text(g.get("name")),
            "model": _text(g.get("model")),
            "baseline": _text(g.get("baseline")) if g.get("baseline") else "",
            "rule": _text(g.get("rule")),
            "observed": _num(g.get("observed")),
            "threshold": _num(g.get("threshold")),
            "detail": _text(g.get("detail")),
        }
        for g in gates
        if not g.get("passed")
    ][:MAX_CARDS]


def _gates_table(gates: list[dict[str, Any]]) -> Markup:
    ordered = sorted(gates, key=lambda g: bool(g.get("passed")))
    columns = ["result", "gate", "rule", "model", "baseline", "observed", "threshold", "detail"]
    rows, classes = [], []
    for g in ordered:
        ok = bool(g.get("passed"))
        rows.append(
            {
                "result": "PASS" if ok else "FAIL",
                "gate": _text(g.get("name")),
                "rule": _text(g.get("rule")),
                "model": _text(g.get("model")),
                "baseline": _text(g.get("baseline")),
                "observed": _num(g.get("observed")),
                "threshold": _num(g.get("threshold")),
                "detail": _text(g.get("detail")),
            }
        )
        classes.append({"result": "pass" if ok else "fail", "detail": "text"})
    return _table("gates", columns, rows, classes, empty="No gates defined.")


@dataclass(frozen=True)
class _MetricInfo:
    evaluator: str
    name: str
    higher_is_better: bool
    description: str
    kind: str
    headline: bool


EvaluatorInfo = tuple[str, str, list[_MetricInfo]]
"""An evaluator's name, kind and metrics."""


def _evaluators(results: Mapping[str, Any]) -> list[EvaluatorInfo]:
    """(name, kind, metrics) per evaluator: the declared ones, then any seen only in rows."""
    found: dict[str, tuple[str, list[_MetricInfo]]] = {}
    for spec in _rows(results, "evaluators"):
        name = _text(spec.get("name"))
        metrics = [
            _MetricInfo(
                evaluator=name,
                name=_text(m.get("name")),
                higher_is_better=bool(m.get("higher_is_better", True)),
                description=str(m.get("description") or ""),
                kind=str(m.get("kind") or ""),
                headline=bool(m.get("headline", True)),
            )
            for m in spec.get("metrics") or []
            if isinstance(m, Mapping)
        ]
        found.setdefault(name, (str(spec.get("kind") or ""), metrics))
    for row in _rows(results, "metrics") + _rows(results, "comparisons"):
        name, metric = _text(row.get("evaluator")), _text(row.get("metric"))
        kind, metrics = found.setdefault(name, ("", []))
        if all(m.name != metric for m in metrics):
            hib = bool(row.get("higher_is_better", True))
            metrics.append(_MetricInfo(name, metric, hib, "", "", True))
    return [(name, kind, metrics) for name, (kind, metrics) in found.items()]


def _model_names(results: Mapping[str, Any]) -> list[str]:
    names = [_text(m.get("name")) for m in _rows(results, "models")]
    for row in _rows(results, "metrics"):
        if _text(row.get("model")) not in names:
            names.append(_text(row.get("model")))
    return names


def _parents(results: Mapping[str, Any]) -> dict[str, list[str]]:
    """Each model's parents: from the models table, then from parent comparisons."""
    parents: dict[str, list[str]] = {}
    for m in _rows(results, "models"):
        parents[_text(m.get("name"))] = [_text(p) for p in m.get("parents") or []]
    for c in _rows(results, "comparisons"):
        if c.get("relation") == "parent":
            found = parents.setdefault(_text(c.get("model")), [])
            if _text(c.get("baseline")) not in found:
                found.append(_text(c.get("baseline")))
    return parents


def _scorecard(results: Mapping[str, Any], evaluators: list[EvaluatorInfo]) -> Markup:
    """Models x headline metrics on slice ``all``: value [CI], then the delta vs each parent."""
    headline = [m for _, _, metrics in evaluators for m in metrics if m.headline]
    values = {
        (_text(r.get("model")), _text(r.get("evaluator")), _text(r.get("metric"))): r
        for r in _rows(results, "metrics")
        if r.get("slice", "all") == "all"
    }
    deltas = {
        (
            _text(c.get("model")),
            _text(c.get("baseline")),
            _text(c.get("evaluator")),
            _text(c.get("metric")),
        ): c
        for c in _rows(results, "comparisons")
        if c.get("relation") == "parent" and c.get("slice", "all") == "all"
    }
    labels = {(m.evaluator, m.name): f"{m.evaluator} · {m.name}" for m in headline}
    columns = ["model", "vs parent", *labels.values()]
    parents = _parents(results)
    rows, classes = [], []
    for model in _model_names(results):
        targets: list[str | None] = [*parents.get(model, [])] or [None]
        for parent in targets:
            row = {"model": model, "vs parent": DASH if parent is None else parent}
            cls: Row = {}
            for m in headline:
                label = labels[(m.evaluator, m.name)]
                text = _value_text(values.get((model, m.evaluator, m.name)))
                comparison = deltas.get((model, parent or "", m.evaluator, m.name))
                if comparison is not None:
                    text += (
                        f"\n{_num(comparison.get('before'))} → {_num(comparison.get('after'))}"
                        f"  Δ {_delta_text(comparison)}"
                    )
                    cls[label] = "multi " + _delta_class(comparison)
                row[label] = text
            rows.append(row)
            classes.append(cls)
    return _table("scorecard", columns, rows, classes, empty="No models.")


def _value_text(row: Mapping[str, Any] | None) -> str:
    """``value [low, high]``, or a dash when the value is missing."""
    if row is None or _float(row.get("value")) is None:
        return DASH
    interval = _ci(row.get("ci_low"), row.get("ci_high"))
    return f"{_num(row.get('value'))} {interval}".strip()


def _descriptions_table(index: int, metrics: list[_MetricInfo]) -> Markup:
    rows = [
        {
            "metric": m.name,
            "direction": "higher is better" if m.higher_is_better else "lower is better",
            "kind": m.kind or DASH,
            "description": m.description or DASH,
        }
        for m in metrics
    ]
    columns = ["metric", "direction", "kind", "description"]
    return _table(f"e{index}-about", columns, rows, [{"description": "text"}] * len(rows))


def _order(names: Sequence[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(names)}


def _metric_rows_table(
    index: int, rows: list[dict[str, Any]], models: dict[str, int], metrics: dict[str, int]
) -> Markup:
    def key(r: dict[str, Any]) -> tuple[int, int, bool, str]:
        slice_ = _text(r.get("slice", "all"))
        return (
            models.get(_text(r.get("model")), len(models)),
            metrics.get(_text(r.get("metric")), len(metrics)),
            slice_ != "all",
            slice_,
        )

    columns = ["model", "metric", "slice", "value", "interval", "n"]
    table = [
        {
            "model": _text(r.get("model")),
            "metric": _text(r.get("metric")),
            "slice": _text(r.get("slice", "all")),
            "value": _num(r.get("value")),
            "interval": _ci(r.get("ci_low"), r.get("ci_high")) or DASH,
            "n": _text(r.get("n")),
        }
        for r in sorted(rows, key=key)
    ]
    return _table(f"e{index}-metrics", columns, table, empty="No metric rows.")


def _comparisons_table(index: int, rows: list[dict[str, Any]]) -> Markup:
    columns = [
        "model",
        "baseline",
        "relation",
        "metric",
        "slice",
        "before",
        "after",
        "delta [CI]",
        "p",
        "n",
        "test",
    ]
    table, classes = [], []
    for c in rows:
        table.append(
            {
                "model": _text(c.get("model")),
                "baseline": _text(c.get("baseline")),
                "relation": _text(c.get("relation")),
                "metric": _text(c.get("metric")),
                "slice": _text(c.get("slice", "all")),
                "before": _num(c.get("before")),
                "after": _num(c.get("after")),
                "delta [CI]": _delta_text(c),
                "p": _p(c.get("p_value")),
                "n": _text(c.get("n")),
                "test": _text(c.get("test")),
            }
        )
        classes.append({"delta [CI]": _delta_class(c)})
    return _table(f"e{index}-comparisons", columns, table, classes, empty="No comparisons.")


# --- flipped samples --------------------------------------------------------------------------

SampleIndex = dict[tuple[str, str], dict[tuple[str, str], Mapping[str, Any]]]


def _index_samples(samples: Iterable[Mapping[str, Any]]) -> SampleIndex:
    """(model, evaluator) -> (metric, item_id) -> the first sample seen for that item."""
    index: SampleIndex = {}
    for s in samples:
        if not isinstance(s, Mapping):
            continue
        items = index.setdefault((_text(s.get("model")), _text(s.get("evaluator"))), {})
        items.setdefault((_text(s.get("metric")), _text(s.get("item_id"))), s)
    return index


def _same(a: Any, b: Any) -> bool:
    fa, fb = _float(a), _float(b)
    if fa is None or fb is None:
        return fa is None and fb is None and a == b
    return fa == fb


def flipped_samples(
    samples: Iterable[Mapping[str, Any]], evaluator: str, model: str, baseline: str
) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(before, after) sample pairs whose value differs between ``baseline`` and ``model``.

    Items are paired on ``(metric, item_id)`` within ``evaluator``, in the baseline's order.
    """
    index = _index_samples(samples)
    return _flips(index, evaluator, model, baseline)[1]


def _flips(
    index: SampleIndex, evaluator: str, model: str, baseline: str
) -> tuple[int, list[tuple[Mapping[str, Any], Mapping[str, Any]]]]:
    before = index.get((baseline, evaluator), {})
    after = index.get((model, evaluator), {})
    paired = [(b, after[k]) for k, b in before.items() if k in after]
    return len(paired), [(b, a) for b, a in paired if not _same(b.get("value"), a.get("value"))]


def _judged(sample: Mapping[str, Any]) -> str:
    judgment = sample.get("judgment")
    value = _item_value(sample.get("value"))
    return f"{value} ({judgment})" if judgment not in (None, "") else value


def _comparison_pairs(
    results: Mapping[str, Any], evaluator: str, index: SampleIndex
) -> list[tuple[str, str]]:
    """(model, parent) pairs to drill into: parent comparisons, then the models' lineage."""
    pairs: list[tuple[str, str]] = []
    for c in _rows(results, "comparisons"):
        if c.get("relation") == "parent" and _text(c.get("evaluator")) == evaluator:
            pair = (_text(c.get("model")), _text(c.get("baseline")))
            if pair not in pairs:
                pairs.append(pair)
    for model, parents in _parents(results).items():
        for parent in parents:
            has_both = (model, evaluator) in index and (parent, evaluator) in index
            if has_both and (model, parent) not in pairs:
                pairs.append((model, parent))
    return pairs


@dataclass
class _PairFlips:
    model: str
    parent: str
    worse: int
    better: int
    total: int
    shown: int
    table: Markup


@dataclass
class _Drilldown:
    summary: Markup
    pairs: list[_PairFlips]
    shown: int
    total: int


_FLIP_COLUMNS = ["metric · slice", "item", "input", "before output", "after output",
                 "before → after"]  # fmt: skip
_FLIP_CLASSES = {"input": "text", "before output": "text", "after output": "text"}
_ORDER = {"bad": 0, "good": 1}


def _flip_direction(before: Mapping[str, Any], after: Mapping[str, Any], hib: bool) -> str:
    change = (_float(after.get("value")) or 0) - (_float(before.get("value")) or 0)
    return _direction(change, hib)


def _flip_row(before: Mapping[str, Any], after: Mapping[str, Any]) -> Row:
    return {
        "metric · slice": f"{_text(before.get('metric'))} · {_text(before.get('slice', 'all'))}",
        "item": _text(before.get("item_id")),
        "input": _cut(before.get("input")),
        "before output": _cut(before.get("output")),
        "after output": _cut(after.get("output")),
        "before → after": f"{_judged(before)} → {_judged(after)}",
    }


def _drilldown(
    number: int,
    results: Mapping[str, Any],
    evaluator: str,
    metrics: list[_MetricInfo],
    index: SampleIndex,
    limit: int,
) -> _Drilldown:
    """Per (model, parent) pair: how many items flipped each way, and (up to ``limit`` items
    over all pairs) which ones, the worsenings first."""
    hib = {m.name: m.higher_is_better for m in metrics}
    summary: list[Row] = []
    pairs: list[_PairFlips] = []
    total = shown = 0
    for k, (model, parent) in enumerate(_comparison_pairs(results, evaluator, index)):
        paired, flips = _flips(index, evaluator, model, parent)
        directed = sorted(
            (
                (_flip_direction(b, a, hib.get(_text(b.get("metric")), True)), b, a)
                for b, a in flips
            ),
            key=lambda item: _ORDER.get(item[0], 2),
        )
        directions = [d for d, _, _ in directed]
        worse, better = directions.count("bad"), directions.count("good")
        summary.append(
            {
                "model": model,
                "parent": parent,
                "paired items": str(paired),
                "flipped": str(len(flips)),
                "better": str(better),
                "worse": str(worse),
            }
        )
        total += len(flips)
        room = max(limit - shown, 0)
        rows = [_flip_row(b, a) for _, b, a in directed[:room]]
        classes = [{**_FLIP_CLASSES, "before → after": f"delta {d}"} for d in directions[:room]]
        shown += len(rows)
        if flips:
            capped = f"Not listed: the report lists {limit} flipped items per evaluator."
            table = _table(f"e{number}-flips-{k}", _FLIP_COLUMNS, rows, classes, empty=capped)
            pairs.append(_PairFlips(model, parent, worse, better, len(flips), len(rows), table))
    summary_columns = ["model", "parent", "paired items", "flipped", "better", "worse"]
    no_pairs = "No model was compared with a parent on this evaluator."
    return _Drilldown(
        summary=_table(f"e{number}-pairs", summary_columns, summary, empty=no_pairs),
        pairs=pairs,
        shown=shown,
        total=total,
    )


@dataclass
class _EvaluatorSection:
    anchor: str
    name: str
    kind: str
    about: Markup
    metrics: Markup
    comparisons: Markup
    flips: _Drilldown
    figures: list[Any]


def _evaluator_sections(
    results: Mapping[str, Any],
    evaluators: list[EvaluatorInfo],
    samples: Iterable[Mapping[str, Any]],
    limit: int,
) -> list[_EvaluatorSection]:
    index = _index_samples(samples)
    models = _order(_model_names(results))
    sections = []
    for i, (name, kind, metrics) in enumerate(evaluators, start=1):
        metric_rows = [r for r in _rows(results, "metrics") if _text(r.get("evaluator")) == name]
        comparisons = [
            c for c in _rows(results, "comparisons") if _text(c.get("evaluator")) == name
        ]
        sections.append(
            _EvaluatorSection(
                anchor=f"evaluator-{i}",
                name=name,
                kind=kind,
                about=_descriptions_table(i, metrics),
                metrics=_metric_rows_table(
                    i, metric_rows, models, _order([m.name for m in metrics])
                ),
                comparisons=_comparisons_table(i, comparisons),
                flips=_drilldown(i, results, name, metrics, index, limit),
                figures=_figures(results, name, kind),
            )
        )
    return sections


# --- models and provenance --------------------------------------------------------------------


def _models_table(models: list[dict[str, Any]]) -> Markup:
    columns = ["model", "parents", "source / intervention", "params", "trained on", "status", "key"]
    rows, classes = [], []
    for m in models:
        origin = (
            f"source: {m['source']}"
            if m.get("source")
            else f"intervention: {m['intervention']}"
            if m.get("intervention")
            else DASH
        )
        params = m.get("params")
        rows.append(
            {
                "model": _text(m.get("name")),
                "parents": _text(m.get("parents") or None),
                "source / intervention": origin,
                "params": _cut(_text(params), 300) if params else DASH,
                "trained on": _training(m.get("training")),
                "status": _text(m.get("status")),
                "key": _text(m.get("key"))[:12],
            }
        )
        classes.append({"status": f"status-{_status_class(m.get('status'))}", "params": "text"})
    return _table("models", columns, rows, classes, empty="No models.")


def _training(info: Any) -> str:
    if not isinstance(info, Mapping) or info.get("tokens") is None:
        return DASH
    steps = f", {info['steps']} steps" if info.get("steps") is not None else ""
    return f"{_text(info.get('tokens'))} tokens{steps}"


def _status_class(status: Any) -> str:
    return status if status in ("ok", "failed", "skipped") else "unknown"


def _steps_table(steps: list[dict[str, Any]]) -> Markup:
    columns = ["step", "kind", "status", "cached", "duration", "key"]
    rows, classes = [], []
    for s in steps:
        duration = _float(s.get("duration_s"))
        rows.append(
            {
                "step": _text(s.get("step")),
                "kind": _text(s.get("kind")),
                "status": _text(s.get("status")),
                "cached": _text(bool(s.get("cached"))) if "cached" in s else DASH,
                "duration": DASH if duration is None else _seconds(duration),
                "key": _text(s.get("key")),
            }
        )
        classes.append({"status": f"status-{_status_class(s.get('status'))}", "key": "text"})
    return _table("steps", columns, rows, classes, empty="No steps ran.")


def _seconds(duration: float) -> str:
    if duration < 60:
        return f"{duration:.2f} s"
    minutes, seconds = divmod(round(duration), 60)
    return (
        f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"
        if minutes >= 60
        else f"{minutes}:{seconds:02d} min"
    )


def _run_facts(results: Mapping[str, Any], env: Mapping[str, Any]) -> list[tuple[str, str]]:
    """How the run went: steps executed, cache hits, failures, time spent, seed and device."""
    steps = _rows(results, "steps")
    executed = [s for s in steps if s.get("status") == "ok" and not s.get("cached")]
    spent = sum(_float(s.get("duration_s")) or 0.0 for s in executed)
    facts = [
        ("steps", str(len(steps))),
        ("executed", f"{len(executed)} ({_seconds(spent)})"),
        ("cache hits", str(sum(bool(s.get("cached")) for s in steps))),
        ("failed", str(sum(s.get("status") == "failed" for s in steps))),
        ("skipped", str(sum(s.get("status") == "skipped" for s in steps))),
    ]
    facts += [(k, _text(env.get(k))) for k in ("seed", "device") if env.get(k) is not None]
    return facts


def _suite_facts(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The suite's path and reference model, where the run recorded them."""
    suite = results.get("suite")
    if not isinstance(suite, Mapping):
        return []
    facts = [("file", suite.get("path")), ("reference model", suite.get("reference"))]
    return [(label, _text(value)) for label, value in facts if value]


def _elapsed(start: Any, end: Any) -> float | None:
    """Seconds between two ISO timestamps, or None when either is missing or unreadable."""
    try:
        delta = datetime.fromisoformat(str(end)) - datetime.fromisoformat(str(start))
    except (TypeError, ValueError):
        return None
    return max(delta.total_seconds(), 0.0)


def _max_flips(results: Mapping[str, Any]) -> int:
    """The suite's ``[report] max_flipped``, else :data:`MAX_FLIPS`."""
    suite = results.get("suite")
    parsed = suite.get("parsed") if isinstance(suite, Mapping) else None
    report = parsed.get("report") if isinstance(parsed, Mapping) else None
    value = report.get("max_flipped") if isinstance(report, Mapping) else None
    return (
        value
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0
        else MAX_FLIPS
    )


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            items.extend(_flatten(value, f"{name}."))
        else:
            items.append((name, value))
    return items


def _environment_table(environment: Mapping[str, Any]) -> Markup:
    rows = [{"setting": k, "value": _text(v)} for k, v in _flatten(environment)]
    return _table("environment", ["setting", "value"], rows, empty="Not recorded.")


def _suite_info(results: Mapping[str, Any]) -> tuple[str, str, str]:
    """The report's title, the suite's hash and its text (as written, else its parsed form)."""
    suite = results.get("suite")
    if not isinstance(suite, Mapping):
        return "audit run", DASH, ""
    inner = suite.get("suite")
    name = (
        suite.get("title")
        or suite.get("name")
        or (inner.get("name") if isinstance(inner, Mapping) else None)
    )
    digest = suite.get("hash") or suite.get("sha256")
    text = suite.get("text")
    if isinstance(text, str):
        text = str(text)  # a plain str, never markup
    else:
        rest = {k: v for k, v in suite.items() if k not in ("hash", "sha256", "text")}
        text = json.dumps(rest, indent=2, sort_keys=True, default=str, ensure_ascii=False)
        text = "" if text == "{}" else text
    return _text(name or "audit run"), _text(digest), text


# --- rendering --------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_finalize,
    )


def _finalize(value: Any) -> Any:
    """Every template output passes here: plain strings are cleaned, then autoescaped."""
    return _clean(value) if isinstance(value, str) and not isinstance(value, Markup) else value


def _scaling(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    from audit.report.sections.scaling import scaling_sections

    return scaling_sections(results)


def _backdoors(results: Mapping[str, Any]) -> dict[str, Markup] | None:
    from audit.report.sections.backdoor import backdoor_tables

    return backdoor_tables(results)


def _figures(results: Mapping[str, Any], evaluator: str, kind: str) -> list[Any]:
    from audit.report.figures import evaluator_figures

    return evaluator_figures(results, evaluator, kind)


def _lineage(results: Mapping[str, Any]) -> Markup:
    from audit.report.lineage import lineage_svg

    return lineage_svg(results)


def _forgetting(results: Mapping[str, Any]) -> list[Any]:
    from audit.report.sections.forgetting import forgetting_sections

    return forgetting_sections(results)


def render_html(
    results: Mapping[str, Any],
    samples: Iterable[Mapping[str, Any]],
    *,
    max_flips: int | None = None,
) -> str:
    """The report for ``results`` (a results.json dict) and its samples, as one HTML page.

    ``max_flips`` caps the flipped items listed per evaluator (default: the suite's
    ``[report] max_flipped``, else :data:`MAX_FLIPS`).
    """
    if max_flips is None:
        max_flips = _max_flips(results)
    evaluators = _evaluators(results)
    env = results.get("environment")
    env = env if isinstance(env, Mapping) else {}
    name, digest, suite_text = _suite_info(results)
    gates = _rows(results, "gates")
    failures = [
        {
            "step": _text(f.get("step")),
            "error": _text(f.get("error")),
            "traceback": str(f.get("traceback") or ""),
        }
        for f in _rows(results, "failures")
    ]
    started = env.get("started_at") or env.get("start_time") or results.get("started_at")
    took = _float(env.get("duration_s", results.get("duration_s")))
    if took is None:
        took = _elapsed(started, env.get("finished_at"))
    context = {
        "title": name,
        "started": _text(started),
        "took": None if took is None else _seconds(took),
        "verdict": verdict(results),
        "counts": {
            "models": len(_model_names(results)),
            "gates": len(gates),
            "gates_failed": sum(not g.get("passed") for g in gates),
            "failures": len(failures),
        },
        "gates": _gates_table(gates),
        "fired": _fired(gates),
        "gates_passed": sum(bool(g.get("passed")) for g in gates),
        "lineage": _lineage(results),
        "run_facts": _run_facts(results, env),
        "failures": failures,
        "scorecard": _scorecard(results, evaluators),
        "alpha": ALPHA,
        "evaluators": _evaluator_sections(results, evaluators, samples, max_flips),
        "scaling": _scaling(results),
        "backdoors": _backdoors(results),
        "forgetting": _forgetting(results),
        "models": _models_table(_rows(results, "models")),
        "suite_hash": digest,
        "suite_facts": _suite_facts(results),
        "suite_text": suite_text,
        "environment": _environment_table(env),
        "steps": _steps_table(_rows(results, "steps")),
        "schema_version": _text(results.get("schema_version")),
        "audit_version": audit.__version__,
        "max_chars": MAX_CHARS,
        "css": Markup((_HERE / "style.css").read_text(encoding="utf-8")),
        "script": Markup(SCRIPT),
        "script_hash": SCRIPT_HASH,
    }
    return _environment().get_template("report.html.j2").render(**context)


def render_report(
    results: Mapping[str, Any],
    samples: Iterable[Mapping[str, Any]],
    out_path: Path,
    *,
    max_flips: int | None = None,
) -> Path:
    """Write the report atomically and return its path.

    ``out_path`` is the output directory (the page goes to ``index.html`` in it) or a file path
    ending in ``.html``. The page is written to a temporary file beside it, then renamed over
    it, so readers see the old report or the new one, never half of one.
    """
    out_path = Path(out_path)
    target = out_path if out_path.suffix in (".html", ".htm") else out_path / "index.html"
    return write_page(target, render_html(results, samples, max_flips=max_flips))


def write_page(target: Path, page: str) -> Path:
    """Write ``page`` to ``target`` through a temporary file beside it and a rename (readable
    by all, like any published page): readers see the old page or the new one, never half."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
            f.write(page)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        fault_point(f"write:{target.name}")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
