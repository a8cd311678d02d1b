"""Library chatter goes to run.log, the harness's lines to the console; plain progress lines
when there is no terminal."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from audit.library_output import library_output
from audit.progress import Progress


def test_library_output_goes_to_the_log_and_harness_lines_to_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "out" / "run.log"
    library = logging.getLogger("lm-eval-like")  # a library's own handler, made at import
    library.addHandler(logging.StreamHandler(sys.stderr))
    library.propagate = False
    with library_output(log) as terminal:
        assert terminal is not None
        library.warning("a library warning record")
        print("a tqdm-style bar 10/10", file=sys.stderr)
        subprocess.run(["sh", "-c", "echo 'fatal: not a git repository' >&2"], check=True)
        terminal.write("harness: step 1/2\n")
    print("after the run", file=sys.stderr)
    err = capfd.readouterr().err
    assert "harness: step 1/2" in err and "after the run" in err
    for chatter in ("library warning", "tqdm-style", "fatal:"):
        assert chatter not in err
        assert chatter in log.read_text()


def test_nothing_is_redirected_without_a_descriptor(tmp_path: Path) -> None:
    real = sys.stderr
    sys.stderr = io.StringIO()
    try:
        with library_output(tmp_path / "run.log") as terminal:
            assert terminal is None
    finally:
        sys.stderr = real
    assert not (tmp_path / "run.log").exists()


def test_without_a_terminal_progress_prints_plain_lines_at_most_every_interval() -> None:
    now = [0.0]
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    progress = Progress(console=console, interval=30, clock=lambda: now[0])
    progress.begin(2)
    progress.start("eval:drift@aligned")
    for done in range(1, 169):
        now[0] += 1.0  # one second per probe
        progress.sub("generation", done, 168)
    progress.finish("eval:drift@aligned", "ok", False)
    progress.skip(1)
    progress.end()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[1/2] eval:drift@aligned …"
    beats = [line for line in lines if line.startswith("  eval:drift@aligned: generation")]
    assert len(beats) == 5  # at 30, 60, 90, 120 and 150 s: never silent for long
    assert beats[0] == "  eval:drift@aligned: generation 30/168 (17%), 30 s"
    assert lines[-1] == "✓ eval:drift@aligned, 168 s"
