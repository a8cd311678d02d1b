"""The report's "Forgetting" section: per lineage, the accuracy matrix, BWT and forgetting."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from audit.report.render import _ci, _num, _rows, _table, _text


@dataclass
class LineageSection:
    """One lineage: its heading, measures and accuracy-matrix table."""

    name: str
    evaluator: str
    bwt: str
    forgetting: str
    error: str | None
    matrix: Markup


def _matrix(number: int, row: Mapping[str, Any]) -> Markup:
    tasks = [_text(t) for t in row.get("tasks") or []]
    lineage = [_text(m) for m in row.get("lineage") or []]
    matrix = row.get("matrix") or []
    counts = row.get("n") or []
    columns = ["step", "model", *tasks]
    table = []
    for j, model in enumerate(lineage):
        values = matrix[j] if j < len(matrix) and isinstance(matrix[j], list) else []
        cells = {t: _num(values[i]) if i < len(values) else "—" for i, t in enumerate(tasks)}
        learned = tasks[j] if j < len(tasks) else "—"
        table.append({"step": f"{j + 1} (learns {learned})", "model": model, **cells})
    if counts:
        sizes = {t: _text(n) for t, n in zip(tasks, counts, strict=False)}
        table.append({"step": "n (items)", "model": "", **sizes})
    return _table(f"forgetting-{number}", columns, table, empty="No models in the lineage.")


def forgetting_sections(results: Mapping[str, Any]) -> list[LineageSection]:
    """One section per lineage of ``results["forgetting"]`` (empty when there is none)."""
    sections = []
    for number, row in enumerate(_rows(results, "forgetting"), start=1):
        error = row.get("error")
        sections.append(
            LineageSection(
                name=_text(row.get("name")),
                evaluator=_text(row.get("evaluator")),
                bwt=f"{_num(row.get('bwt'), signed=True)} "
                f"{_ci(row.get('bwt_ci_low'), row.get('bwt_ci_high'), signed=True)}".strip(),
                forgetting=f"{_num(row.get('forgetting'))} "
                f"{_ci(row.get('forgetting_ci_low'), row.get('forgetting_ci_high'))}".strip(),
                error=_text(error) if error else None,
                matrix=_matrix(number, row),
            )
        )
    return sections
