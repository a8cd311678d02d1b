"""The report's "Scaling laws" section: fitted forgetting laws, their points and a chart."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from markupsafe import Markup

from audit.report.charts import power_law_chart
from audit.report.format import DASH, cell_text, ci_text, html_table, num
from audit.results import Results


def _estimate(e: Mapping[str, Any] | None, signed: bool = False) -> str:
    if not e:
        return DASH
    return f"{num(e.get('value'), signed=signed)} {ci_text(e.get('ci_low'), e.get('ci_high'))}"


def _fits_table(index: int, row: Mapping[str, Any]) -> Markup:
    table = []
    for fit in row.get("fits") or []:
        chi2, dof = fit.get("chi2"), fit.get("dof")
        table.append(
            {
                "sweep": cell_text(fit.get("sweep")),
                "intervention": cell_text(fit.get("intervention")),
                "points": str(len(fit.get("points") or [])),
                "A": _estimate(fit.get("A")),
                "β": _estimate(fit.get("beta")),
                "E": _estimate(fit.get("E"), signed=True),
                "χ² (dof)": DASH if chi2 is None else f"{num(chi2, 2)} ({dof})",
                "note": cell_text(fit.get("error") or fit.get("note") or ""),
            }
        )
    columns = ["sweep", "intervention", "points", "A", "β", "E", "χ² (dof)", "note"]
    return html_table(f"scaling-fits-{index}", columns, table)


def _points_table(index: int, row: Mapping[str, Any]) -> Markup:
    table = []
    for fit in row.get("fits") or []:
        for p in fit.get("points") or []:
            table.append(
                {
                    "sweep": cell_text(fit.get("sweep")),
                    "model": cell_text(p.get("model")),
                    cell_text(fit.get("param")) or "value": cell_text(p.get("value")),
                    "tokens D": cell_text(p.get("tokens")),
                    "drift [95% CI]": f"{num(p.get('drift'), signed=True)} "
                    f"{ci_text(p.get('ci_low'), p.get('ci_high'), signed=True)}",
                    "n": cell_text(p.get("n")),
                }
            )
    columns = list(dict.fromkeys(k for r in table for k in r)) if table else ["model"]
    return html_table(f"scaling-points-{index}", columns, table, empty="No sweep member has data.")


def scaling_sections(results: Results) -> list[dict[str, Any]]:
    """Per ``[[scaling]]`` entry: its name, metric, chart and tables."""
    sections = []
    for i, row in enumerate(results.scaling):
        unit = float(row.get("tokens_unit") or 1000.0)
        series = []
        for fit in row.get("fits") or []:
            estimates = [fit.get(k) for k in ("A", "beta", "E")]
            series.append(
                {
                    "label": f"{fit.get('sweep')} ({fit.get('intervention') or '?'})",
                    "points": [
                        {
                            "name": p.get("model"),
                            "x": p.get("tokens"),
                            "y": p.get("drift"),
                            "low": p.get("ci_low"),
                            "high": p.get("ci_high"),
                        }
                        for p in fit.get("points") or []
                    ],
                    "fit": None
                    if not all(estimates)
                    else {
                        "A": estimates[0]["value"],
                        "beta": estimates[1]["value"],
                        "E": estimates[2]["value"],
                    },
                }
            )
        metric = f"{row.get('evaluator')}.{row.get('metric')}"
        sections.append(
            {
                "name": cell_text(row.get("name")),
                "metric": metric,
                "slice": cell_text(row.get("slice")),
                "unit": num(unit, 0),
                "worse": "fall" if row.get("higher_is_better", True) else "rise",
                "chart": power_law_chart(
                    series,
                    x_label="fine-tuning tokens D (log scale)",
                    y_label=f"drift in {metric}",
                    unit=unit,
                ),
                "fits": _fits_table(i, row),
                "points": _points_table(i, row),
            }
        )
    return sections
