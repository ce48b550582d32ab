"""Progress reporting: rich bars on a terminal, nothing when output is machine-readable."""

from __future__ import annotations

from types import TracebackType
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn


class ProgressSink(Protocol):
    def stage(self, description: str, total: int) -> None: ...
    def advance(self, amount: int = 1) -> None: ...


class SilentProgress:
    def stage(self, description: str, total: int) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass


class BarProgress:
    """One bar per stage, on stderr so stdout stays clean for results."""

    def __init__(self) -> None:
        console = Console(stderr=True)
        self.bars = Progress(
            TextColumn("{task.description:<18}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            # Bars are for people at a terminal; logs and pipes get only the final summary.
            disable=not console.is_terminal,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> BarProgress:
        self.bars.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.bars.stop()

    def stage(self, description: str, total: int) -> None:
        self.task = self.bars.add_task(description, total=total)

    def advance(self, amount: int = 1) -> None:
        if self.task is not None:
            self.bars.advance(self.task, amount)
