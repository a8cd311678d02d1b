"""One error hierarchy: every error audit raises on purpose carries the exit code the CLI ends
with (2 for input it cannot use, 3 for a failure it detected)."""

from __future__ import annotations

import pytest

from audit.cli import main
from audit.data.records import DataError
from audit.errors import EXIT_CRASHED, EXIT_INVALID, AuditError, InputError
from audit.merging.stream import MergeError
from audit.models.finite import NonFiniteWeightsError
from audit.models.loading import CheckpointNotFoundError, UnsafeCheckpointError
from audit.registry import PluginError
from audit.release.io import CompareError
from audit.report.gallery import GalleryError
from audit.resources import DiskSpaceError
from audit.results import ResultsError
from audit.store.core import NotAStoreError, StoreError
from audit.suite.checks import SuiteError

INPUT = [DataError, CheckpointNotFoundError, UnsafeCheckpointError, CompareError, GalleryError,
         ResultsError, NotAStoreError, SuiteError]  # fmt: skip
FAILURE = [MergeError, NonFiniteWeightsError, PluginError, StoreError, DiskSpaceError]


@pytest.mark.parametrize("error", INPUT)
def test_input_errors_exit_2(error: type[AuditError]) -> None:
    assert issubclass(error, InputError) and error.exit_code == EXIT_INVALID == 2


@pytest.mark.parametrize("error", FAILURE)
def test_failures_exit_3(error: type[AuditError]) -> None:
    assert issubclass(error, AuditError) and not issubclass(error, InputError)
    assert error.exit_code == EXIT_CRASHED == 3


@pytest.mark.parametrize(
    ("error", "code"), [(DataError("bad data.jsonl:3"), 2), (MergeError("vocab differs"), 3)]
)
def test_cli_maps_by_exit_code(
    error: Exception, code: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import audit.cli

    def command(args: object) -> int:
        raise error

    monkeypatch.setattr(audit.cli, "cmd_list", command)
    assert main(["list"]) == code
    assert str(error) in capsys.readouterr().err
