"""What the ``forgetting`` evaluator adds to the run page: the "Forgetting" section, per lineage
the accuracy matrix, BWT and forgetting (from results.json ``analyses["forgetting"]``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from audit.plugins import ReportSection
from audit.report.format import cell_text, ci_text, html_table, num
from audit.results import Results


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
    tasks = [cell_text(t) for t in row.get("tasks") or []]
    lineage = [cell_text(m) for m in row.get("lineage") or []]
    matrix = row.get("matrix") or []
    counts = row.get("n") or []
    columns = ["step", "model", *tasks]
    table = []
    for j, model in enumerate(lineage):
        values = matrix[j] if j < len(matrix) and isinstance(matrix[j], list) else []
        cells = {t: num(values[i]) if i < len(values) else "—" for i, t in enumerate(tasks)}
        learned = tasks[j] if j < len(tasks) else "—"
        table.append({"step": f"{j + 1} (learns {learned})", "model": model, **cells})
    if counts:
        sizes = {t: cell_text(n) for t, n in zip(tasks, counts, strict=False)}
        table.append({"step": "n (items)", "model": "", **sizes})
    return html_table(f"forgetting-{number}", columns, table, empty="No models in the lineage.")


NOTE = (
    "Continual chains of fine-tunes: row j of a matrix is the accuracy on each task after step j "
    "(the diagonal is each task just after it was learned). BWT = mean over earlier tasks of "
    "(final accuracy − accuracy just after learning the task) (Lopez-Paz & Ranzato 2017; "
    "negative: later steps undid earlier ones). Forgetting = mean over earlier tasks of (best "
    "accuracy before the last step − final accuracy) (Chaudhry et al. 2018). Intervals are "
    "paired percentile bootstraps over items, stratified by task."
)


def lineage_sections(results: Results) -> list[LineageSection]:
    """One section per lineage of ``analyses["forgetting"]`` (empty when there is none)."""
    sections = []
    for number, row in enumerate(results.table("forgetting"), start=1):
        error = row.get("error")
        sections.append(
            LineageSection(
                name=cell_text(row.get("name")),
                evaluator=cell_text(row.get("evaluator")),
                bwt=f"{num(row.get('bwt'), signed=True)} "
                f"{ci_text(row.get('bwt_ci_low'), row.get('bwt_ci_high'), signed=True)}".strip(),
                forgetting=f"{num(row.get('forgetting'))} "
                f"{ci_text(row.get('forgetting_ci_low'), row.get('forgetting_ci_high'))}".strip(),
                error=cell_text(error) if error else None,
                matrix=_matrix(number, row),
            )
        )
    return sections


def lm_eval_conventions(results: Results) -> list[str]:
    """One sentence per ``forgetting`` evaluator with lm-eval tasks: the convention its lm-eval
    numbers used (chat template or not, few-shot, system instruction)."""
    out = []
    for e in results.rows("evaluators"):
        params = e.get("params")
        if e.get("kind") != "forgetting" or not isinstance(params, Mapping):
            continue
        tasks = [t for t in params.get("tasks") or [] if str(t).startswith("lm_eval")]
        if not tasks:
            continue
        chat = params.get("chat", True)
        fewshot = params.get("fewshot")
        system = params.get("system_instruction")
        out.append(
            f"Evaluator {cell_text(e.get('name'))}: lm-eval tasks "
            + (
                "formatted with the model's chat template (audit's convention; lm-eval's CLI "
                "number needs chat = false)"
                if chat
                else "without a chat template (lm-eval's own convention, as its CLI)"
            )
            + f", few-shot {'the task default' if fewshot is None else cell_text(fewshot)}"
            + f", system instruction {'none' if not system else repr(cell_text(system))}."
        )
    return out


def report_sections(results: Results) -> list[ReportSection]:
    """The "Forgetting" section: how lm-eval numbers were taken, then BWT and forgetting of
    every lineage; none when the run has neither."""
    parts = [Markup('<p class="note">{}</p>').format(c) for c in lm_eval_conventions(results)]
    for lineage in lineage_sections(results):
        parts.append(Markup("<h3>{}</h3>").format(lineage.name))
        if lineage.error:
            parts.append(Markup('<p class="empty">Not computed: {}</p>').format(lineage.error))
        else:
            parts.append(
                Markup(
                    '<p>BWT {} · forgetting {} <span class="note">(evaluator {})</span></p>'
                ).format(lineage.bwt, lineage.forgetting, lineage.evaluator)
            )
        parts.append(lineage.matrix)
    if not parts:
        return []
    return [ReportSection("forgetting", "Forgetting", NOTE, Markup("\n").join(parts))]
