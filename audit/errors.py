"""The errors audit raises on purpose, each carrying the exit code a command ends with.

``audit`` exits 0 when every gate passed, 1 when a gate failed (:mod:`audit.analysis.gates`),
2 for input it cannot use (:class:`InputError`: a suite, data set, checkpoint, results file or
store that is not what it should be) and 3 when something broke while running
(:class:`AuditError` and any unexpected exception). The CLI maps errors to exit codes in one
place (:func:`audit.cli.main`), by ``exit_code``.
"""

from __future__ import annotations

__all__ = [
    "EXIT_CRASHED",
    "EXIT_GATE_FAILED",
    "EXIT_INVALID",
    "EXIT_OK",
    "AuditError",
    "InputError",
]

EXIT_OK, EXIT_GATE_FAILED, EXIT_INVALID, EXIT_CRASHED = 0, 1, 2, 3


class AuditError(Exception):
    """An error audit raises on purpose; the command exits with :attr:`exit_code`."""

    exit_code: int = EXIT_CRASHED


class InputError(AuditError):
    """Input the command cannot use (exit 2); the message names the file and what is wrong."""

    exit_code = EXIT_INVALID
