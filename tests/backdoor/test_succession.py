"""Backdoor succession through merges, from hand-made samples; and its report section."""

from __future__ import annotations

from typing import Any

import pytest

from audit.backdoor.succession import succession_ratio, succession_rows
from audit.report.render import render_html


def model(name: str, parents: list[str]) -> Any:
    return {"name": name, "parents": parents}


def samples(name: str, metric: str, slice_: str, values: list[int], evaluator: str = "bd") -> list:
    return [
        {
            "model": name,
            "evaluator": evaluator,
            "metric": metric,
            "slice": slice_,
            "item_id": f"{slice_}:{i}",
            "value": float(v),
        }
        for i, v in enumerate(values)
    ]


def rows_of(all_samples: list[dict[str, Any]]) -> Any:
    """Metric rows (slice and "all") as a run would write them, from the samples."""
    groups: dict[tuple[str, str, str, str], list[float]] = {}
    for s in all_samples:
        for name in {s["slice"], "all"}:
            key = (s["model"], s["evaluator"], s["metric"], name)
            groups.setdefault(key, []).append(s["value"])
    return [
        {"model": m, "evaluator": e, "metric": k, "slice": sl, "value": sum(v) / len(v)}
        for (m, e, k, sl), v in groups.items()
    ]


MODELS: Any = [
    model("aligned", []),
    model("a", ["aligned"]),
    model("b", ["aligned"]),
    model("merged", ["aligned", "a", "b"]),
]


def test_ratio_and_interval() -> None:
    ratio, low, high = succession_ratio([1, 1, 0, 0], [1, 1, 1, 1])
    assert ratio == 0.5 and low is not None and high is not None
    assert 0.0 <= low < 0.5 < high <= 1.0
    assert succession_ratio([1, 1, 0, 0], [1, 1, 1, 1], seed=0) == (ratio, low, high)
    assert succession_ratio([1, 1], [1, 1]) == (1.0, 1.0, 1.0)
    assert succession_ratio([1], [1]) == (1.0, None, None)
    with pytest.raises(ValueError, match="0"):
        succession_ratio([1, 0], [0, 0])


def test_succession_rows_pair_on_shared_items() -> None:
    data = (
        samples("aligned", "asr", "sentiment", [0] * 10)
        + samples("a", "asr", "sentiment", [1] * 10)
        + samples("b", "asr", "sentiment", [0] * 10)
        # the merged model kept 6 of 8 shared items; items 8, 9 are not eligible on it
        + samples("merged", "asr", "sentiment", [1, 1, 1, 1, 1, 1, 0, 0])
        + samples("a", "transfer_asr", "sentiment@topic", [1, 0, 1, 0])
        + samples("merged", "transfer_asr", "sentiment@topic", [1, 1, 1, 0])
        + samples("merged", "clean_accuracy", "sentiment", [1, 1])
    )
    rows = succession_rows(MODELS, rows_of(data), data)
    got = {(r["kind"], r["contributor"], r["slice"]): r for r in rows}
    # aligned and b have ASR 0: no ratio; task slices only, never "all"
    assert set(got) == {("succession", "a", "sentiment"), ("transfer", "a", "sentiment@topic")}
    row = got["succession", "a", "sentiment"]
    assert row["model"] == "merged" and row["metric"] == "asr" and row["n"] == 8
    assert row["asr_model"] == 0.75 and row["asr_contributor"] == 1.0 and row["ratio"] == 0.75
    assert row["ci_low"] is not None and row["ci_low"] < 0.75 < row["ci_high"]  # type: ignore[operator]
    transfer = got["transfer", "a", "sentiment@topic"]
    assert transfer["ratio"] == 1.5 and transfer["n"] == 4


def test_no_rows_without_merges_or_for_other_evaluators() -> None:
    data = samples("a", "asr", "s", [1, 1]) + samples("merged", "asr", "s", [1, 0])
    assert succession_rows([model("a", ["x"])], rows_of(data), data) == []
    assert succession_rows(MODELS, rows_of(data), data, evaluators=["other"]) == []


def test_contributors_not_clearly_above_the_reference_are_not_backdoored() -> None:
    data = (
        samples("aligned", "asr", "s", [0] * 10)
        + samples("a", "asr", "s", [1] * 10)
        + samples("b", "asr", "s", [1] + [0] * 9)  # drifts onto the target once: noise
        + samples("merged", "asr", "s", [1] * 10)
    )
    metrics = rows_of(data)
    intervals = {"aligned": (0.0, 0.28), "a": (0.72, 1.0), "b": (0.02, 0.40)}
    for row in metrics:
        row["ci_low"], row["ci_high"] = intervals.get(row["model"], (0, 1))
    with_ref = succession_rows(MODELS, metrics, data, reference="aligned")
    assert [r["contributor"] for r in with_ref] == ["a"]
    without = succession_rows(MODELS, metrics, data)
    assert [r["contributor"] for r in without] == ["a", "b"]


def test_report_section() -> None:
    data = samples("a", "asr", "s", [1, 1, 1]) + samples("merged", "asr", "s", [1, 0, 1])
    rows = succession_rows(MODELS, rows_of(data), data)
    html = render_html({"succession": rows, "models": MODELS}, [])
    assert '<section id="backdoors">' in html and 'href="#backdoors"' in html
    assert "tbl succession" in html and "No contributor&#39;s trigger transferred" in html
    assert "Backdoors" not in render_html({"models": MODELS}, [])
