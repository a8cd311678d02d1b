"""Every suite shipped in suites/ validates (its models, evaluators, gates and data names)."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.suite.checks import load_suite

SUITES = sorted((Path(__file__).resolve().parents[2] / "suites").glob("*.toml"))


def test_there_are_shipped_suites() -> None:
    assert {p.name for p in SUITES} >= {"demo.toml", "evidence.toml", "scaling.toml"}


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_a_shipped_suite_validates(path: Path) -> None:
    suite = load_suite(path)
    assert suite.file.models
