"""Progress reporting for long runs: rich progress bars on a terminal, plain lines elsewhere,
or nothing with ``--quiet``.

Without a terminal (CI logs, a pipe) bars cannot redraw, so each step prints a line when it
starts and when it ends, and a long step prints one line of its own progress at most every
``interval`` seconds ("  eval:drift@aligned: generation 96/168 (57%), 41 s"): a drift
evaluation of a real model is never silent for minutes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichProgress

from audit.terminal import clean, escape


class Progress:
    """One bar for the run's steps and one for the current step's own work (a terminal), or
    plain lines (no terminal; ``interval`` seconds between a step's progress lines)."""

    def __init__(
        self,
        quiet: bool = False,
        console: Console | None = None,
        *,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self.interval = interval
        self.clock = clock
        self._bars: RichProgress | None = None
        self._steps: TaskID | None = None
        self._sub: TaskID | None = None
        self._plain = False
        self._done, self._total = 0, 0
        self._step, self._started, self._last = "", 0.0, 0.0

    def begin(self, total: int) -> None:
        if self.quiet:
            return
        self._total = total
        if not self.console.is_terminal:
            self._plain = True
            return
        self._bars = RichProgress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._bars.start()
        self._steps = self._bars.add_task("steps", total=total)

    def start(self, step: str) -> None:
        if self._plain:
            self._step, self._started = step, self.clock()
            self._last = self._started
            count = escape(f"[{self._done + 1}/{self._total}]")
            self.console.print(f"{count} {escape(step)} …")
            return
        if self._bars is None or self._steps is None:
            return
        self._bars.update(self._steps, description=escape(step))
        self._sub = self._bars.add_task("  …", total=None, visible=False)

    def sub(self, description: str, completed: int, total: int) -> None:
        """Report progress inside the current step (training steps, batches)."""
        if self._plain:
            now = self.clock()
            if now - self._last >= self.interval:
                self._last = now
                share = f" ({100 * completed // total}%)" if total > 0 else ""
                self.console.print(
                    f"  {escape(self._step)}: {escape(description)} {completed}/{total}{share}, "
                    f"{now - self._started:.0f} s"
                )
            return
        if self._bars is None or self._sub is None:
            return
        self._bars.update(
            self._sub,
            description=f"  {escape(description)}",
            completed=completed,
            total=total,
            visible=True,
        )

    def finish(self, step: str, status: str, cached: bool, seconds: float | None = None) -> None:
        """``step`` ended; ``seconds``: how long it took, when steps run at once (default: since
        the last :meth:`start`)."""
        if self._plain:
            self._done += 1
            mark = {"ok": "✓", "failed": "✗"}.get(status, "·")
            spent = self.clock() - self._started if seconds is None else seconds
            took = f", {spent:.0f} s" if not cached else " (cached)"
            self.console.print(f"{mark} {escape(step)}{took}")
            return
        if self._bars is None or self._steps is None:
            return
        if self._sub is not None:
            self._bars.remove_task(self._sub)
            self._sub = None
        self._bars.advance(self._steps)
        mark = {"ok": "[green]✓[/]", "failed": "[red]✗[/]"}.get(status, "·")
        how = " (cached)" if cached else ""
        self._bars.console.print(f"{mark} {escape(step)}{how}")

    def skip(self, n: int) -> None:
        self._done += n
        if self._bars is not None and self._steps is not None:
            self._bars.advance(self._steps, n)

    def note(self, message: str) -> None:
        """A message worth showing even in quiet mode (written to stderr)."""
        if self._bars is not None:
            self._bars.console.print(f"[yellow]{escape(message)}[/]")
        elif self._plain:
            self.console.print(escape(message))
        else:
            print(clean(message), file=self.console.file or sys.stderr)

    def end(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
