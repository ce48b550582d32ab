"""How a batch reports: JSON lines (`--json`: started, progress once a second, done or interrupted), or a bar on
a terminal (items done/total, tokens/s, time left) with a summary line at the end."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

# Seconds between two progress lines of --json.
JSON_PROGRESS_SECONDS = 1.0


class JsonReporter:
    def __init__(self, echo: Callable[[str], None], interval: float = JSON_PROGRESS_SECONDS) -> None:
        self.echo = echo
        self.interval = interval
        self.last = time.monotonic()

    def started(self, event: dict[str, Any]) -> None:
        self.echo(json.dumps(event))

    def progress(self, figures: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.echo(json.dumps({"event": "progress"} | figures))

    def message(self, text: str) -> None:
        self.echo(json.dumps({"event": "message", "text": text}))


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "ETA -:--:--"
    whole = int(seconds + 0.5)
    return f"ETA {whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def summary_text(summary: dict[str, Any]) -> str:
    """One line for people: what was done, how fast, where the output is, and which peers served how many."""
    text = (
        f"{summary['done']}/{summary['total']} lines done ({summary['ran']} now, {summary['errors_total']} errors) "
        f"in {summary['seconds']:.1f} s: {summary['items_per_second']:.1f} items/s, "
        f"{summary['tokens_per_second']:.1f} tokens/s; output {summary['output']}"
    )
    if summary["per_peer"]:
        text += "; per peer: " + ", ".join(f"{address} {count}" for address, count in summary["per_peer"].items())
    return text


def bar_reporter() -> Any:
    """A rich bar on stderr, shown on a terminal only (rich is imported here, when bars are wanted)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    from swarm.bars import RichBars

    class BarReporter(RichBars):
        def __init__(self) -> None:
            super().__init__(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[eta]}"),
            )

        def started(self, event: dict[str, Any]) -> None:
            self.task = self.bars.add_task(
                f"batch {event['model']}", total=event["items"], completed=event["done_before"], rate="", eta=""
            )

        def progress(self, figures: dict[str, Any]) -> None:
            if self.task is not None:
                rate = f"{figures['items_per_second']:.1f} items/s {figures['tokens_per_second']:.1f} tokens/s"
                eta = eta_text(figures["eta_seconds"])
                self.bars.update(self.task, completed=figures["done"], rate=rate, eta=eta)

        def message(self, text: str) -> None:
            self.bars.console.print(text, markup=False, highlight=False)

    return BarReporter()
