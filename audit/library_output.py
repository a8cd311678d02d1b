"""A run's console shows the harness's lines only; what the libraries print goes to a log.

lm-eval, transformers, datasets and peft write progress bars, warnings and log records to the
process's standard error, and lm-eval runs ``git``, whose ``fatal: not a git repository``
goes straight to file descriptor 2. :func:`library_output` points descriptor 2 itself at
``run.log`` in the output directory for the duration of the run (so child processes and
C-level writes follow), and hands back a stream on the original standard error for the
harness's own progress lines. Where standard error is not a file descriptor (an embedding
host, a test capturing ``sys.stderr``), nothing is redirected.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

LOG_NAME = "run.log"


@contextlib.contextmanager
def library_output(log_path: Path) -> Iterator[TextIO | None]:
    """Send descriptor 2 to ``log_path`` (appended) while the block runs; yield a text stream
    on the original standard error (``None`` when nothing could be redirected)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # not backed by a descriptor
        yield None
        return
    targets = sorted({2, fd})  # child processes write to 2; sys.stderr may be another one
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        sys.stderr.flush()
        saved = {t: os.dup(t) for t in targets}
        terminal = os.fdopen(
            os.dup(saved[fd]), "w", buffering=1, encoding="utf-8", errors="replace"
        )
        for t in targets:
            os.dup2(log.fileno(), t)
        try:
            yield terminal
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            for t, copy in saved.items():
                os.dup2(copy, t)
                os.close(copy)
            terminal.close()
