"""Hostile text never reaches the terminal raw: model names, gate details, error messages and
file paths carrying ANSI escape sequences or other control characters are printed escaped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from audit.cli import main
from audit.progress import Progress
from audit.terminal import clean, escape

CLEAR = "\x1b[2J"  # clears the screen
TITLE = "\x1b]0;pwned\x07"  # retitles the terminal window
# carriage return + erase line + green "PASS", backspaces, a C1 CSI, a NUL, a bidi override
OVERWRITE = "\r\x1b[2K\x1b[32mPASS\x08\x08\x9b31m\x00\u202e"
HOSTILE = CLEAR + TITLE + OVERWRITE
RAW = ["\x1b", "\x07", "\r", "\x08", "\x9b", "\x00", "\u202e"]


def assert_no_controls(text: str) -> None:
    assert not [c for c in RAW if c in text], repr(text)


def test_clean_makes_controls_visible() -> None:
    assert clean(CLEAR) == "\\x1b[2J"
    assert clean(TITLE) == "\\x1b]0;pwned\\x07"
    assert clean("a\r\x08\x9b\x00\x7f\t\u202eb") == "a\\x0d\\x08\\x9b\\x00\\x7f\\x09\\u202eb"
    assert clean("line 1\nline 2") == "line 1\nline 2"
    assert clean("line 1\nline 2", newlines=False) == "line 1\\x0aline 2"
    assert clean("émigré ✓ [bold]") == "émigré ✓ [bold]"  # printable text is left alone
    assert escape(f"[red]{CLEAR}") == "\\[red]\\x1b[2J"  # markup escaped too


def _run(model: str, value: float, gates: list[dict[str, Any]]) -> dict[str, Any]:
    """A minimal results.json: one model, one rate metric (no samples: unpaired)."""
    return {
        "schema_version": 1,
        "verdict": "pass",
        "exit_code": 0,
        "suite": {"name": "release", "hash": "abc", "path": "s.toml", "parsed": {"gates": gates}},
        "environment": {"seed": 0, "finished_at": "2026-01-01T00:00:00+00:00"},
        "models": [{"name": model, "status": "ok", "sweep": None}],
        "evaluators": [
            {
                "name": "refusal",
                "kind": "refusal",
                "version": "1",
                "params": {"probes": "organism:driftcaps"},
                "metrics": [{"name": "rate", "higher_is_better": True, "kind": "rate"}],
            }
        ],
        "metrics": [
            {
                "model": model,
                "evaluator": "refusal",
                "metric": "rate",
                "slice": "all",
                "value": value,
                "ci_low": None,
                "ci_high": None,
                "n": 40,
                "higher_is_better": True,
            }
        ],  # fmt: skip
        "comparisons": [],
        "gates": [],
        "failures": [],
    }


def _write(directory: Path, results: dict[str, Any]) -> Path:
    directory.mkdir(parents=True)
    (directory / "results.json").write_text(json.dumps(results))
    return directory


def test_compare_prints_hostile_names_details_and_errors_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = f"tuned{HOSTILE}"
    forged = f"gate{HOSTILE}\nPASS forged — tuned: fine"  # a line break forging a record
    gate = {"metric": "refusal.rate", "models": [model], "min": 0.9, "name": forged}
    old = _write(tmp_path / "old", _run(model, 1.0, []))
    new_run = _run(model, 0.5, [gate])
    new_run["evaluators"][0]["params"]["probes"] = f"probes{HOSTILE}"  # → a warning
    new_run["failures"] = [{"step": f"eval{HOSTILE}", "error": f"boom{HOSTILE}", "traceback": ""}]
    new = _write(tmp_path / "new", new_run)

    code = main(["compare", str(old), str(new), "--out", str(tmp_path / f"cmp{CLEAR}")])
    assert code == 3  # the new run has a failed step (the gate fails too)
    captured = capsys.readouterr()
    assert_no_controls(captured.out + captured.err)
    out = captured.out
    assert "FAIL gate\\x1b[2J\\x1b]0;pwned\\x07\\x0d\\x1b[2K" in out  # shown, not obeyed
    assert "— tuned\\x1b[2J" in out and "ERROR new run: eval\\x1b[2J" in out
    assert "boom\\x1b[2J" in out and "WARN" in out and "probes\\x1b[2J" in out
    assert "report: " in out and "cmp\\x1b[2J" in out  # the file path too
    assert "\\x0aPASS forged" in out and not any(
        line.startswith("PASS") for line in out.splitlines()
    )


def test_validate_and_report_print_hostile_paths_and_errors_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = tmp_path / f"suite{CLEAR}.toml"
    suite.write_text(f'[suite]\nname = "s"\n{json.dumps(TITLE)} = 1\n')  # TOML: "\u001b…"
    assert main(["validate", str(suite)]) == 2  # an unknown key named by a hostile string
    captured = capsys.readouterr()
    assert_no_controls(captured.out + captured.err)
    assert "suite\\x1b[2J.toml" in captured.err and "\\x1b]0;pwned\\x07" in captured.err

    results = _write(tmp_path / "run", _run(f"m{HOSTILE}", 0.5, [])) / "results.json"
    assert main(["report", str(results), "--out", str(tmp_path / f"page{TITLE}.html")]) == 0
    captured = capsys.readouterr()
    assert_no_controls(captured.out + captured.err)
    assert "page\\x1b]0;pwned\\x07.html" in captured.out


def test_progress_escapes_step_names_and_notes(capsys: pytest.CaptureFixture[str]) -> None:
    quiet = Progress(quiet=True)
    quiet.note(f"store entry {HOSTILE} failed verification")
    from rich.console import Console

    console = Console(stderr=True, force_terminal=False, width=200)
    bars = Progress(console=console)
    bars.begin(1)
    bars.start(f"model:{HOSTILE}")
    bars.sub(f"training{HOSTILE}", 1, 2)
    bars.finish(f"model:{HOSTILE}", "ok", False)
    bars.note(f"note{HOSTILE}")
    bars.end()
    err = capsys.readouterr().err
    assert_no_controls(err)
    assert "store entry \\x1b[2J" in err and "model:\\x1b[2J" in err and "note\\x1b[2J" in err
