"""The report's "Gain vs cost" section (``[[tradeoffs]]``; :mod:`audit.analysis.tradeoffs`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from markupsafe import Markup

from audit.plugins import ReportSection
from audit.report.charts import scatter_chart
from audit.report.format import cell_text, ci_text, html_table, num, p_text
from audit.results import Results

NOTE = (
    "Each model placed by what it gained on the skill it was trained for (right: learned more) "
    "against what it cost (up: lost more), both paired changes against its baseline with 95% "
    "intervals. Filled points joined by the dashed line are the Pareto front: no other model "
    "gains as much at no more cost. A model that drifts less but also learned less sits to the "
    "left, not above."
)


def _estimate(cell: Any) -> tuple[float, float | None, float | None]:
    cell = cell if isinstance(cell, Mapping) else {}
    value = cell.get("value")
    return (
        float(value) if isinstance(value, int | float) else float("nan"),
        cell.get("ci_low"),
        cell.get("ci_high"),
    )


def _text(cell: Any) -> str:
    cell = cell if isinstance(cell, Mapping) else {}
    interval = ci_text(cell.get("ci_low"), cell.get("ci_high"), signed=True)
    return " ".join(filter(None, [num(cell.get("value"), signed=True), interval]))


def tradeoffs_section(results: Results) -> ReportSection | None:
    """The section, or ``None`` when the suite has no ``[[tradeoffs]]``."""
    tables = results.tradeoffs
    if not tables:
        return None
    parts = []
    for i, table in enumerate(tables):
        points = [p for p in table.get("points", []) if isinstance(p, Mapping)]
        label = {p["model"]: f"{p['model']} vs {p['baseline']}" for p in points}
        many = len({p["model"] for p in points}) < len(points)
        chart = scatter_chart(
            [
                (
                    label[p["model"]] if many else cell_text(p.get("model")),
                    _estimate(p.get("gain")),
                    _estimate(p.get("cost")),
                    bool(p.get("pareto")),
                )
                for p in points
            ],
            x_label=f"gain: {cell_text(table.get('gain'))}",
            y_label=f"cost: {cell_text(table.get('cost'))}",
        )
        rows = [
            {
                "model": cell_text(p.get("model")),
                "baseline": cell_text(p.get("baseline")),
                "gain [CI]": _text(p.get("gain")),
                "gain p": p_text((p.get("gain") or {}).get("p_value")),
                "cost [CI]": _text(p.get("cost")),
                "cost p": p_text((p.get("cost") or {}).get("p_value")),
                "Pareto front": "yes" if p.get("pareto") else "no",
            }
            for p in points
        ]
        columns = ["model", "baseline", "gain [CI]", "gain p", "cost [CI]", "cost p"]
        body = html_table(f"tradeoff-{i}", [*columns, "Pareto front"], rows, empty="No models.")
        parts.append(Markup("<h3>{}</h3>{}{}").format(cell_text(table.get("name")), chart, body))
    return ReportSection(
        id="tradeoffs", title="Gain vs cost", note=NOTE, body=Markup("").join(parts)
    )
