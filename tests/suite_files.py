"""Suite files written for a test and loaded (or refused) as `audit` loads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.suite.checks import SuiteError, load_suite
from audit.suite.suite import Suite


def write(tmp_path: Path, text: str) -> Path:
    """``text`` as ``tmp_path/suite.toml``."""
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str) -> Suite:
    """The suite ``text`` validated (relative paths resolve in ``tmp_path``)."""
    return load_suite(write(tmp_path, text))


def issues(tmp_path: Path, text: str) -> list[str]:
    """The validation issues of the suite ``text``, as ``audit validate`` prints them."""
    with pytest.raises(SuiteError) as e:
        load(tmp_path, text)
    return [str(i) for i in e.value.issues]
