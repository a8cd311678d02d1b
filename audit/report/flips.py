"""Flipped prompts: the items whose judgment changed between a model and its baseline, paired
from samples.jsonl, and the drill-down tables that show them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from audit.report.format import (
    DASH,
    Row,
    as_float,
    cell_text,
    ci_text,
    cut,
    delta_direction,
    html_table,
    item_value,
    num,
)
from audit.report.read import MetricInfo, parents_of
from audit.results import Results


def value_text(row: Mapping[str, Any] | None) -> str:
    """``value [low, high]``, or a dash when the value is missing."""
    if row is None or as_float(row.get("value")) is None:
        return DASH
    interval = ci_text(row.get("ci_low"), row.get("ci_high"))
    return f"{num(row.get('value'))} {interval}".strip()


# --- flipped samples --------------------------------------------------------------------------

SampleIndex = dict[tuple[str, str], dict[tuple[str, str], Mapping[str, Any]]]


def index_samples(samples: Iterable[Mapping[str, Any]]) -> SampleIndex:
    """(model, evaluator) -> (metric, item_id) -> the first sample seen for that item."""
    index: SampleIndex = {}
    for s in samples:
        if not isinstance(s, Mapping):
            continue
        items = index.setdefault((cell_text(s.get("model")), cell_text(s.get("evaluator"))), {})
        items.setdefault((cell_text(s.get("metric")), cell_text(s.get("item_id"))), s)
    return index


def _same(a: Any, b: Any) -> bool:
    fa, fb = as_float(a), as_float(b)
    if fa is None or fb is None:
        return fa is None and fb is None and a == b
    return fa == fb


def flipped_samples(
    samples: Iterable[Mapping[str, Any]], evaluator: str, model: str, baseline: str
) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(before, after) sample pairs whose value differs between ``baseline`` and ``model``.

    Items are paired on ``(metric, item_id)`` within ``evaluator``, in the baseline's order.
    """
    index = index_samples(samples)
    return flips_of(index, evaluator, model, baseline)[1]


def flips_of(
    index: SampleIndex, evaluator: str, model: str, baseline: str
) -> tuple[int, list[tuple[Mapping[str, Any], Mapping[str, Any]]]]:
    before = index.get((baseline, evaluator), {})
    after = index.get((model, evaluator), {})
    paired = [(b, after[k]) for k, b in before.items() if k in after]
    return len(paired), [(b, a) for b, a in paired if not _same(b.get("value"), a.get("value"))]


def judged(sample: Mapping[str, Any]) -> str:
    judgment = sample.get("judgment")
    value = item_value(sample.get("value"))
    return f"{value} ({judgment})" if judgment not in (None, "") else value


def comparison_pairs(results: Results, evaluator: str, index: SampleIndex) -> list[tuple[str, str]]:
    """(model, parent) pairs to drill into: parent comparisons, then the models' lineage."""
    pairs: list[tuple[str, str]] = []
    for c in results.rows("comparisons"):
        if c.get("relation") == "parent" and cell_text(c.get("evaluator")) == evaluator:
            pair = (cell_text(c.get("model")), cell_text(c.get("baseline")))
            if pair not in pairs:
                pairs.append(pair)
    for model, parents in parents_of(results).items():
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
class Drilldown:
    summary: Markup
    pairs: list[_PairFlips]
    shown: int
    total: int


_FLIP_COLUMNS = ["metric · slice", "item", "input", "before output", "after output",
                 "before → after"]  # fmt: skip
_FLIP_CLASSES = {"input": "text", "before output": "text", "after output": "text"}
_ORDER = {"bad": 0, "good": 1}


def _flip_direction(before: Mapping[str, Any], after: Mapping[str, Any], hib: bool) -> str:
    change = (as_float(after.get("value")) or 0) - (as_float(before.get("value")) or 0)
    return delta_direction(change, hib)


def _flip_row(before: Mapping[str, Any], after: Mapping[str, Any]) -> Row:
    return {
        "metric · slice": (
            f"{cell_text(before.get('metric'))} · {cell_text(before.get('slice', 'all'))}"
        ),
        "item": cell_text(before.get("item_id")),
        "input": cut(before.get("input")),
        "before output": cut(before.get("output")),
        "after output": cut(after.get("output")),
        "before → after": f"{judged(before)} → {judged(after)}",
    }


def drilldown(
    number: int,
    results: Results,
    evaluator: str,
    metrics: list[MetricInfo],
    index: SampleIndex,
    limit: int,
) -> Drilldown:
    """Per (model, parent) pair: how many items flipped each way, and (up to ``limit`` items
    over all pairs) which ones, the worsenings first."""
    hib = {m.name: m.higher_is_better for m in metrics}
    summary: list[Row] = []
    pairs: list[_PairFlips] = []
    total = shown = 0
    for k, (model, parent) in enumerate(comparison_pairs(results, evaluator, index)):
        paired, flips = flips_of(index, evaluator, model, parent)
        directed = sorted(
            (
                (_flip_direction(b, a, hib.get(cell_text(b.get("metric")), True)), b, a)
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
            table = html_table(f"e{number}-flips-{k}", _FLIP_COLUMNS, rows, classes, empty=capped)
            pairs.append(_PairFlips(model, parent, worse, better, len(flips), len(rows), table))
    summary_columns = ["model", "parent", "paired items", "flipped", "better", "worse"]
    no_pairs = "No model was compared with a parent on this evaluator."
    return Drilldown(
        summary=html_table(f"e{number}-pairs", summary_columns, summary, empty=no_pairs),
        pairs=pairs,
        shown=shown,
        total=total,
    )
