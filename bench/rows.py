"""The summary row every benchmark writes (the contract in ``bench/__main__.py``)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any


def summary_row(
    measure: str,
    goal: str,
    values: Sequence[float],
    detail: str,
    *,
    passes: Callable[[float], bool] | None,
    unit: str = "×",
) -> dict[str, Any]:
    """A row of the median of ``values`` (one per repetition) with their spread; ``met`` is
    ``passes(median)``, or ``None`` where the goal does not apply (``passes`` is ``None``)."""
    value = statistics.median(values)
    return {
        "measure": measure,
        "goal": goal,
        "value": value,
        "unit": unit,
        "spread": [min(values), max(values)],
        "reps": len(values),
        "met": None if passes is None else passes(value),
        "detail": detail,
    }
