"""`audit init`: a starter suite for a user's checkpoint, valid as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.cli import main
from audit.suite.checks import load_suite
from audit.suite.starter import starter_suite, suite_name_for


def test_init_writes_a_valid_suite_for_one_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "suite.toml"
    assert main(["init", "--model", "organism:aligned", "--out", str(out)]) == 0
    assert "run it with: audit run" in capsys.readouterr().out
    suite = load_suite(out)
    assert list(suite.file.models) == ["base"] and suite.name == "audit-aligned"
    assert {e.kind for e in suite.file.evaluators.values()} == {"alignment_drift", "forgetting"}
    assert [g.rule[0] for g in suite.file.gates] == ["min", "min"]  # no baseline to compare
    # an existing file is kept unless --force
    assert main(["init", "--model", "organism:aligned", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_init_with_a_fine_tune_gates_it_against_its_base(tmp_path: Path) -> None:
    out = tmp_path / "suite.toml"
    args = ["init", "--model", "organism:aligned", "--tuned", "organism:aligned"]
    assert main([*args, "--out", str(out), "--name", "mine"]) == 0
    suite = load_suite(out)
    assert list(suite.file.models) == ["base", "tuned"] and suite.name == "mine"
    assert [(g.vs, g.rule[0]) for g in suite.file.gates] == [
        ("base", "max_drop"),
        ("base", "max_drop"),
    ]


def test_a_source_that_is_not_there_is_reported_but_the_file_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "suite.toml"
    assert main(["init", "--model", "path:no/such/dir", "--out", str(out)]) == 2
    assert out.is_file() and "warning" in capsys.readouterr().err


def test_names_and_quoting() -> None:
    assert suite_name_for("hf:HuggingFaceTB/SmolLM2-135M-Instruct@main") == "SmolLM2-135M-Instruct"
    assert suite_name_for("hf:org/My Model") == "My-Model"
    assert suite_name_for("path:ckpts/run1/") == "run1"
    text = starter_suite('path:a "quoted" dir')
    assert 'source = "path:a \\"quoted\\" dir"' in text
