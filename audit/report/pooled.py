"""The report's "Pooled over seeds" section (``[suite] seeds``; :mod:`audit.analysis.pooled`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from markupsafe import Markup

from audit.plugins import ReportSection
from audit.report.format import (
    CHANGE,
    cell_text,
    ci_text,
    comparison_cells,
    delta_class,
    html_table,
    num,
)
from audit.results import Results

NOTE = (
    "Every model built by an intervention ran once per seed (NAME.seedS). Here each metric and "
    "comparison is pooled over the seeds: the value over every item of every seed, and the "
    "paired change after − before with a stratified bootstrap interval (items resampled within "
    "each seed) and a stratified test (exact Mantel-Haenszel for matched pairs for rates, "
    "sign-flip permutation for means). Gates decide on these pooled rows. The interval is the "
    "items' uncertainty given these seeds; the per-seed column shows how much the seeds differ."
)


def _per_seed(rows: Any, key: str, signed: bool = False) -> str:
    if not isinstance(rows, Sequence):
        return "—"
    return " · ".join(
        f"s{cell_text(r.get('seed'))}: {num(r.get(key), signed=signed)}"
        for r in rows
        if isinstance(r, Mapping)
    )


def pooled_section(results: Results) -> ReportSection | None:
    """The section, or ``None`` when the run replicated nothing."""
    pooled = results.pooled or {}
    comparisons = [c for c in pooled.get("comparisons", []) if c.get("slice", "all") == "all"]
    metrics = [m for m in pooled.get("metrics", []) if m.get("slice", "all") == "all"]
    if not comparisons and not metrics:
        return None
    rows, classes = [], []
    for c in comparisons:
        metric = f"{cell_text(c.get('evaluator'))}.{cell_text(c.get('metric'))}"
        cells = comparison_cells(c, metric)
        del cells["slice"]  # slice "all" only
        rows.append({**cells, "change per seed": _per_seed(c.get("per_seed"), "delta", True)})
        classes.append({CHANGE: delta_class(c)})
    columns = list(rows[0]) if rows else ["model"]
    changes = html_table("pooled-comparisons", columns, rows, classes, empty="No comparisons.")
    values = [
        {
            "model": cell_text(m.get("model")),
            "metric": f"{cell_text(m.get('evaluator'))}.{cell_text(m.get('metric'))}",
            "value": num(m.get("value")),
            "interval": ci_text(m.get("ci_low"), m.get("ci_high")),
            "n": cell_text(m.get("n")),
            "value per seed": _per_seed(m.get("per_seed"), "value"),
        }
        for m in metrics
    ]
    value_columns = ["model", "metric", "value", "interval", "n", "value per seed"]
    table = html_table("pooled-metrics", value_columns, values, empty="No metrics.")
    body = Markup("<h3>Changes, pooled</h3>{}<h3>Values, pooled</h3>{}").format(changes, table)
    return ReportSection(id="pooled", title="Pooled over seeds", note=NOTE, body=body)
