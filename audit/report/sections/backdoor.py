"""The report's "Backdoors" section: succession and transfer of backdoors through merges."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

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


def backdoor_tables(results: Results) -> dict[str, Markup] | None:
    """The "succession" and "transfer" tables, or ``None`` when the run has no such rows."""
    rows = results.table("succession")
    if not rows:
        return None
    return {
        "succession": _table_of(
            "succession",
            [r for r in rows if r.get("kind") == "succession"],
            "No contributor's backdoor worked on a slice.",
        ),
        "transfer": _table_of(
            "transfer",
            [r for r in rows if r.get("kind") == "transfer"],
            "No contributor's trigger transferred to other tasks.",
        ),
    }
