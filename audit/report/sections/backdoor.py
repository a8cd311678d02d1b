"""The report's "Backdoors" section: succession and transfer of backdoors through merges."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from markupsafe import Markup

from audit.report.render import _ci, _num, _rows, _table, _text

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
            "merged model": _text(r.get("model")),
            "contributor": _text(r.get("contributor")),
            "evaluator": _text(r.get("evaluator")),
            "slice": _text(r.get("slice")),
            "ASR merged": _num(r.get("asr_model")),
            "ASR contributor": _num(r.get("asr_contributor")),
            "ratio [95% CI]": f"{_num(r.get('ratio'))} {_ci(r.get('ci_low'), r.get('ci_high'))}",
            "n": _text(r.get("n")),
        }
        for r in rows
    ]
    return _table(name, COLUMNS, table, empty=empty)


def backdoor_tables(results: Mapping[str, Any]) -> dict[str, Markup] | None:
    """The "succession" and "transfer" tables, or ``None`` when the run has no such rows."""
    rows = _rows(results, "succession")
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
