"""Progress reporting for long runs: rich progress bars, or nothing with ``--quiet``."""

from __future__ import annotations

import sys

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
    """One bar for the run's steps and one for the current step's own work."""

    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self._bars: RichProgress | None = None
        self._steps: TaskID | None = None
        self._sub: TaskID | None = None

    def begin(self, total: int) -> None:
        if self.quiet:
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
        if self._bars is None or self._steps is None:
            return
        self._bars.update(self._steps, description=escape(step))
        self._sub = self._bars.add_task("  …", total=None, visible=False)

    def sub(self, description: str, completed: int, total: int) -> None:
        """Report progress inside the current step (training steps, batches)."""
        if self._bars is None or self._sub is None:
            return
        self._bars.update(
            self._sub,
            description=f"  {escape(description)}",
            completed=completed,
            total=total,
            visible=True,
        )

    def finish(self, step: str, status: str, cached: bool) -> None:
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
        if self._bars is not None and self._steps is not None:
            self._bars.advance(self._steps, n)

    def note(self, message: str) -> None:
        """A message worth showing even in quiet mode (written to stderr)."""
        if self._bars is not None:
            self._bars.console.print(f"[yellow]{escape(message)}[/]")
        else:
            print(clean(message), file=sys.stderr)

    def end(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
