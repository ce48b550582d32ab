"""Progress reporting: rich bars on a terminal, nothing when output is machine-readable."""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)


class ProgressSink(Protocol):
    def stage(self, description: str, total: int) -> None: ...
    def advance(self, amount: int = 1) -> None: ...


class SilentProgress:
    def stage(self, description: str, total: int) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass


class RichBars:
    """Rich progress bars on stderr (stdout stays clean for results), shown only on a terminal."""

    def __init__(self, *columns: ProgressColumn | str) -> None:
        self.console = Console(stderr=True)
        # Bars are for people at a terminal; logs and pipes get only the final summary.
        self.bars = Progress(*columns, console=self.console, disable=not self.console.is_terminal)
        self.task: TaskID | None = None

    def __enter__(self) -> Self:
        self.bars.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.bars.stop()


class BarProgress(RichBars):
    """One bar per stage."""

    def __init__(self) -> None:
        super().__init__(TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())

    def stage(self, description: str, total: int) -> None:
        self.task = self.bars.add_task(description, total=total)

    def advance(self, amount: int = 1) -> None:
        if self.task is not None:
            self.bars.advance(self.task, amount)
