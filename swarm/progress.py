"""Progress reporting: the sink a long job reports to, and one that reports nothing.

The bars people see at a terminal live in swarm.bars, imported only when they are shown: rich costs a
noticeable share of a command's start-up, which matters when many fetches start at once.
"""

from __future__ import annotations

from typing import Protocol


class ProgressSink(Protocol):
    def stage(self, description: str, total: int) -> None: ...
    def advance(self, amount: int = 1) -> None: ...


class SilentProgress:
    def stage(self, description: str, total: int) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass
