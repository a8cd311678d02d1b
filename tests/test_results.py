"""Results files: one checked reader; outputs tied by a run id; hostile files refused (exit 2)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from audit.cli import main
from audit.results import ResultsError, load_results, load_samples


def _write_run(directory: Path, run_id: str | None, samples_run_id: str | None) -> Path:
    """A small run (two models, paired samples) as `audit run` writes it."""
    from release_runs import margins as _margins
    from release_runs import refusing as _refusing
    from release_runs import run as _run

    results, samples = _run({"tuned": (_refusing(), _margins(), 0.9)})
    if run_id is not None:
        results["run_id"] = run_id
    directory.mkdir(parents=True, exist_ok=True)
    for s in samples:
        if samples_run_id is not None:
            s["run_id"] = samples_run_id
    (directory / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    (directory / "results.json").write_text(json.dumps(results))
    return directory


def test_a_run_writes_one_run_id_into_both_files(tmp_path: Path) -> None:
    from audit.analysis.assemble import write_outputs

    run = _write_run(tmp_path / "a", "r1", "r1")
    results = load_results(run / "results.json")
    samples = load_samples(run / "samples.jsonl", results.run_id)
    out = write_outputs(tmp_path / "out", results, samples).parent
    assert load_samples(out / "samples.jsonl", "r1")


def test_samples_of_another_run_are_refused_by_every_reader(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kill between the two renames: new samples.jsonl beside the old results.json."""
    old = _write_run(tmp_path / "old", "run-a", "run-a")
    mixed = _write_run(tmp_path / "mixed", "run-a", "run-b")
    with pytest.raises(ResultsError, match="belongs to another run"):
        load_samples(mixed / "samples.jsonl", "run-a")
    assert main(["compare", str(old), str(mixed), "--out", str(tmp_path / "cmp")]) == 2
    assert "interrupted between writing its outputs" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()
    assert main(["report", str(mixed / "results.json")]) == 2
    assert not (mixed / "index.html").exists()
    # the same two files, consistent, compare as identical
    assert main(["compare", str(old), str(old), "--out", str(tmp_path / "same")]) == 0


def test_results_of_an_older_audit_without_run_id_still_load(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "legacy", None, None)
    assert load_results(run / "results.json").run_id is None
    assert load_samples(run / "samples.jsonl", None)
    assert main(["report", str(run / "results.json")]) == 0


HOSTILE: dict[str, bytes] = {
    "a list": b"[]",
    "null": b"null",
    "5000 digits": b'{"schema_version": ' + b"9" * 5000 + b', "suite": {}, "metrics": []}',
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "not UTF-8": b'{"suite": {"name": "\xff\xfe"}}',
    "lone surrogate": (
        b'{"schema_version": 1, "suite": {"name": "s"}, "metrics": [{"model": "\\ud800", '
        b'"evaluator": "e", "metric": "m", "slice": "all", "value": 1}]}'
    ),
    "metrics not a list": b'{"schema_version": 1, "suite": {}, "metrics": 5}',
    "gates of strings": b'{"schema_version": 1, "suite": {}, "metrics": [], "gates": ["x"]}',
    "value a string": (
        b'{"schema_version": 1, "suite": {}, "metrics": [{"model": "m", "evaluator": "e", '
        b'"metric": "m", "slice": "all", "value": "1"}]}'
    ),
}


def _good(tmp_path: Path) -> Path:
    return _write_run(tmp_path / "good", "g", "g")


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_results_files_exit_2_and_write_nothing(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_bytes(HOSTILE[name])
    assert main(["report", str(bad / "results.json")]) == 2
    assert not (bad / "index.html").exists()
    assert main(["compare", str(_good(tmp_path)), str(bad), "--out", str(tmp_path / "c")]) == 2
    assert main(["compare", str(bad), str(_good(tmp_path)), "--out", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "c").exists()
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error ") == 3
    assert main(["gallery", str(tmp_path)]) == 0  # listed as unreadable, the others kept
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "bad" in page and "good" in page


def test_a_directory_or_a_fifo_named_results_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir" / "results.json").mkdir(parents=True)
    assert main(["report", str(tmp_path / "dir" / "results.json")]) == 2
    fifo_run = tmp_path / "fifo"
    fifo_run.mkdir()
    os.mkfifo(fifo_run / "results.json")  # opening it would block forever
    assert main(["report", str(fifo_run / "results.json")]) == 2
    assert main(["compare", str(fifo_run), str(_good(tmp_path))]) == 2
    samples_fifo = _write_run(tmp_path / "sfifo", "s", "s")
    (samples_fifo / "samples.jsonl").unlink()
    os.mkfifo(samples_fifo / "samples.jsonl")
    assert main(["report", str(samples_fifo / "results.json")]) == 2
    assert main(["gallery", str(tmp_path)]) == 0


def test_an_infinite_metric_is_not_drawn_into_svg() -> None:
    from audit.report.charts import dot_chart, power_law_chart

    inf, nan = float("inf"), float("nan")
    dots = dot_chart(
        [
            ("a", {"before": (0.5, 0.4, 0.6), "after": (inf, -inf, nan)}),
            ("b", {"before": (nan,) * 3}),
        ],
        ["before", "after"],
        x_label="rate",
        connect=("before", "after"),
    )
    curve = power_law_chart(
        [{"label": "s", "points": [{"x": 10, "y": 0.1, "low": -inf, "high": 0.2},
                                   {"x": inf, "y": 0.2}, {"x": 20, "y": nan}]}],
        x_label="tokens", y_label="drift", unit=1.0,
    )  # fmt: skip
    for svg in (str(dots), str(curve)):
        assert "<circle" in svg  # the finite points are drawn
        for bad in ("inf", "nan"):
            assert f'="{bad}' not in svg and f'="-{bad}' not in svg


@pytest.mark.parametrize(
    ("written", "read"),
    [("ModelRowT", "ModelRow"), ("MetricRowT", "MetricRow"), ("ComparisonRowT", "ComparisonRow"),
     ("GateRowT", "GateRow"), ("FailureRowT", "FailureRow"), ("StepRowT", "StepRow")],
)  # fmt: skip
def test_rows_as_written_and_as_read_have_the_same_columns(written: str, read: str) -> None:
    """One contract: the writers' TypedDicts and the typed model's rows name the same columns."""
    import audit.results as r

    assert set(getattr(r, written).__annotations__) == set(getattr(r, read).model_fields)


def test_version_1_files_are_read_with_their_tables_moved_into_analyses() -> None:
    from audit.results import SCHEMA_VERSION, parse_results

    old = {"schema_version": 1, "suite": {"name": "s"}, "metrics": [],
           "succession": [{"kind": "succession"}], "forgetting": [{"name": "l1"}]}  # fmt: skip
    results = parse_results(old, "old.json", written=True)
    assert results.table("succession") == [{"kind": "succession"}]
    assert results.table("forgetting") == [{"name": "l1"}] and results.schema_version == 1
    newer = {**old, "schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(ResultsError, match="newer than this audit reads"):
        parse_results(newer, "new.json")
    with pytest.raises(ResultsError, match=r"x\.json: metrics\[0\]\.value: "):
        row = {"model": "m", "evaluator": "e", "metric": "m", "slice": "all", "value": "0.5"}
        parse_results({**old, "metrics": [row]}, "x.json")
