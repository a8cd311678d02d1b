"""What the ``backdoor`` evaluator adds to the run page: the "Backdoors" section (succession
and transfer of backdoors through merges, from results.json ``analyses["succession"]``) and the
attack-success chart of its own section."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from markupsafe import Markup

from audit.plugins import ReportSection
from audit.report.charts import dot_chart
from audit.report.figures import Figure, metric_values
from audit.report.format import cell_text, ci_text, html_table, num
from audit.results import Results

COLUMNS = [
    "merged model",
    "contributor",
    "evaluator",
    "slice",
    "ASR merged",
    "ASR contributor",
    "ratio [95% CI]",
    "n",
]


def _table_of(name: str, rows: list[dict[str, Any]], empty: str) -> Markup:
    table = [
        {
            "merged model": cell_text(r.get("model")),
            "contributor": cell_text(r.get("contributor")),
            "evaluator": cell_text(r.get("evaluator")),
            "slice": cell_text(r.get("slice")),
            "ASR merged": num(r.get("asr_model")),
            "ASR contributor": num(r.get("asr_contributor")),
            "ratio [95% CI]": f"{num(r.get('ratio'))} {ci_text(r.get('ci_low'), r.get('ci_high'))}",
            "n": cell_text(r.get("n")),
        }
        for r in rows
    ]
    return html_table(name, COLUMNS, table, empty=empty)


NOTE = (
    "Succession: a merged model's attack success rate (ASR) on a contributor's backdoor divided "
    "by the contributor's own, over the items scored on both (ratio 1: the backdoor survived the "
    "merge intact; 0: it was removed). Transfer: the same ratio for the trigger placed on other "
    "tasks' inputs. Intervals are paired percentile bootstraps over items."
)


def report_sections(results: Results) -> list[ReportSection]:
    """The "Backdoors" section (succession and transfer tables); none when the run has no rows."""
    rows = results.table("succession")
    if not rows:
        return []
    succession = _table_of(
        "succession",
        [r for r in rows if r.get("kind") == "succession"],
        "No contributor's backdoor worked on a slice.",
    )
    transfer = _table_of(
        "transfer",
        [r for r in rows if r.get("kind") == "transfer"],
        "No contributor's trigger transferred to other tasks.",
    )
    body = Markup("<h3>Succession</h3>\n{}\n<h3>Transfer</h3>\n{}").format(succession, transfer)
    return [ReportSection("backdoors", "Backdoors", NOTE, body)]


def model_origins(results: Results) -> dict[str, str]:
    """Each model's origin for the chart's labels: a merge's method, else its intervention or
    source."""
    out = {}
    for m in results.rows("models"):
        params = m.get("params")
        merge = m.get("intervention") == "merge" and isinstance(params, Mapping)
        method = params.get("method") if merge else None  # type: ignore[union-attr]
        how = method or m.get("intervention") or m.get("source") or ""
        out[cell_text(m.get("name"))] = cell_text(how) if how else ""
    return out


def backdoor_figures(results: Results, evaluator: str) -> list[Figure]:
    """Attack success rate and clean accuracy (slice ``all``) of every model, with its method."""
    values = metric_values(results, evaluator)
    metrics = [m for m in ("asr", "clean_accuracy") if any(k[1] == m for k in values)]
    origin = model_origins(results)
    models = list(dict.fromkeys(k[0] for k in values if k[1] in metrics))
    rows = []
    for model in models:
        how = origin.get(model, "")
        label = f"{model} ({how})" if how and how != model else model
        est = {m: values[(model, m, "all")] for m in metrics if (model, m, "all") in values}
        if est:
            rows.append((label, est))
    if not rows:
        return []
    chart = dot_chart(rows, metrics, x_label="rate", bounds=(0.0, 1.0))
    note = (
        "Attack success rate of the trigger (lower is better) beside accuracy on the clean "
        "inputs, per model and the method that made it, with 95% intervals."
    )
    return [Figure("Attack success and clean accuracy per model and method", note, chart)]
