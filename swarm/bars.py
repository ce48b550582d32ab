"""Rich progress bars on stderr for people at a terminal (stdout stays clean for results).

Imported only where bars are shown, so commands that print JSON or nothing never load rich.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

if TYPE_CHECKING:
    from swarm.manifest import Chunk
    from swarm.torrent.session import TorrentEvent, TorrentStatus


class RichBars:
    """Rich progress bars, shown only on a terminal."""

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


class BarTransfer(RichBars):
    """A rich bar on stderr: bytes, rate, peers, time left; one line per notable event."""

    def __init__(self) -> None:
        super().__init__(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[peers]} peers"),
            TimeRemainingColumn(),
        )

    def started(self, name: str, chunks: Sequence[Chunk], already: Sequence[str]) -> None:
        total = sum(chunk.size for chunk in chunks)
        self.task = self.bars.add_task(f"fetching {name}", total=total, peers=0)
        if already:
            self.bars.console.print(f"{len(already)} of {len(chunks)} chunks already on disk and verified")

    def update(self, status: TorrentStatus, peers: int) -> None:
        if self.task is not None:
            self.bars.update(self.task, completed=status.wanted_done, total=max(status.wanted_bytes, 1), peers=peers)

    def event(self, event: TorrentEvent) -> None:
        if event.kind in ("hash_failed", "peer_banned", "error"):
            self.bars.console.print(f"{event.kind.replace('_', ' ')}: {event.message}")

    def finished(self, summary: dict[str, Any]) -> None:
        pass
