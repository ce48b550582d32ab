"""Whether a serving peer should move to other blocks (pure policy: no I/O, table-tested, driven by the swarm
simulation in tools/simulate_swarm.py).

Every peer runs its span of blocks at some rate (tokens/s through the whole span, smoothed from what it and its
clients measured); a block's *capacity* is the sum of the rates of the peers that serve it, and the swarm can run
no more tokens per second than its thinnest block. A peer looks at the swarm from time to time, the way a joining
peer does, and moves its span (same length: its memory has not changed) when that makes the swarm clearly
better:
- fewer blocks without any server — the swarm heals, and a peer never moves off a block only it serves;
- otherwise the thinnest block's capacity grows by at least `gain` (hysteresis: moving back could never clear the
  same bar, so peers settle instead of flapping, and measurement noise below the margin moves nobody).
Where several spans are as good, the peer stays put, then takes the lowest start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# How much the thinnest block's capacity must grow before a peer moves for it.
DEFAULT_GAIN = 1.5


@dataclass(frozen=True)
class ServedSpan:
    """A peer's blocks [start, end) and the rate it runs them at (tokens/s through the whole span)."""

    start: int
    end: int
    rate: float


def capacities(num_blocks: int, spans: Sequence[ServedSpan]) -> list[float]:
    """Per block, the summed rate of the spans serving it (parts outside the model are ignored)."""
    capacity = [0.0] * num_blocks
    for span in spans:
        for block in range(max(0, span.start), min(num_blocks, span.end)):
            capacity[block] += max(span.rate, 0.0)
    return capacity


@dataclass(frozen=True)
class Health:
    """How well blocks are served: how many have no server, and the thinnest served block's capacity."""

    uncovered: int
    thinnest: float

    def better_than(self, other: Health, gain: float) -> bool:
        if self.uncovered != other.uncovered:
            return self.uncovered < other.uncovered
        return self.thinnest > other.thinnest and self.thinnest >= other.thinnest * gain


def health(capacity: Sequence[float]) -> Health:
    served = [value for value in capacity if value > 0]
    return Health(uncovered=len(capacity) - len(served), thinnest=min(served) if served else 0.0)


def better_span(own: ServedSpan, capacity: Sequence[float], gain: float = DEFAULT_GAIN) -> tuple[int, int] | None:
    """The span this peer should move to, or None to stay where it is (see the module doc).

    `capacity`: per block, the summed rate of every peer serving it, this one included (see `capacities`).
    Linear in the number of blocks (prefix counts and minima), so a swarm simulation can afford it often.
    """
    num_blocks = len(capacity)
    length = own.end - own.start
    if not 0 < length <= num_blocks or own.start < 0 or own.end > num_blocks:
        return None
    rate = max(own.rate, 1e-9)  # a peer that measured nothing yet still covers its blocks
    base = [value - (rate if own.start <= block < own.end else 0.0) for block, value in enumerate(capacity)]
    windows = _Windows(base)
    staying = windows.health(own.start, length, rate)
    best_start, best = own.start, staying
    for start in range(num_blocks - length + 1):
        candidate = windows.health(start, length, rate)
        if (candidate.uncovered, -candidate.thinnest) < (best.uncovered, -best.thinnest):
            best_start, best = start, candidate
    if best_start == own.start or not best.better_than(staying, gain):
        return None
    return best_start, best_start + length


class _Windows:
    """Health of `base` with a span added at any start, each in time independent of the span's length."""

    def __init__(self, base: Sequence[float]) -> None:
        # Rounding: what a peer's own rate leaves behind after subtraction may be a hair above zero.
        self.base = [value if value > 1e-9 else 0.0 for value in base]
        inf = float("inf")
        self.zeros_before = [0]
        self.thinnest_before = [inf]
        for value in self.base:
            self.zeros_before.append(self.zeros_before[-1] + (value == 0.0))
            self.thinnest_before.append(min(self.thinnest_before[-1], value if value > 0 else inf))
        self.thinnest_from = [inf] * (len(self.base) + 1)
        for block in range(len(self.base) - 1, -1, -1):
            value = self.base[block]
            self.thinnest_from[block] = min(self.thinnest_from[block + 1], value if value > 0 else inf)

    def health(self, start: int, length: int, rate: float) -> Health:
        end = start + length
        uncovered = self.zeros_before[start] + self.zeros_before[-1] - self.zeros_before[end]
        thinnest = min(self.thinnest_before[start], self.thinnest_from[end], min(self.base[start:end]) + rate)
        return Health(uncovered, thinnest)
