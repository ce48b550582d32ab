"""Stop strings: text is released as it streams, except what may still turn out to begin a stop string.

Pure: pieces of text in, text to show and whether a stop string was reached out.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopScanner:
    """Watches streamed text for any of `stops`. The text shown never contains a stop string or what follows it;
    a tail that could be the start of one is held back until the next piece settles it."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stop for stop in stops if stop)
        self.held = ""
        self.stopped = False

    def push(self, piece: str) -> str:
        """Add a piece of generated text; return the text that can be shown now."""
        if self.stopped:
            return ""
        text = self.held + piece
        found = [index for index in (text.find(stop) for stop in self.stops) if index >= 0]
        if found:
            self.stopped = True
            self.held = ""
            return text[: min(found)]
        keep = self._partial_stop_length(text)
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def finish(self) -> str:
        """The text still held back when generation ended without reaching a stop string."""
        text, self.held = ("" if self.stopped else self.held), ""
        return text

    def _partial_stop_length(self, text: str) -> int:
        """Length of the longest end of `text` that is the beginning of a stop string."""
        longest = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:length]):
                    longest = length
                    break
        return longest
