"""Whether a serving peer should move to other blocks (pure policy: no I/O, table-tested, driven by the swarm
simulation in tools/simulate_swarm.py).

Every peer runs its span of blocks at some rate (tokens/s through the whole span, smoothed from what it and its
clients measured); a block's *capacity* is the sum of the rates of the peers that serve it, and the swarm can run
no more tokens per second than its thinnest block. A peer looks at the swarm from time to time, the way a joining
peer does, and moves its span (same length: its memory has not changed) when that makes the swarm clearly
better, in this order:
- fewer blocks without any server: the swarm heals (and a peer never moves off a block only it serves);
- fewer blocks with a single server: one crash away from a gap, so peers spread out before the next crash;
- otherwise the thinnest block's capacity grows by at least `gain`.
Counts only move when a block's server count crosses 1 or 2, and a capacity move must clear the margin: moving
back could never clear the same bar, so peers settle instead of flapping, and measurement noise moves nobody.
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


@dataclass(frozen=True)
class Coverage:
    """Per block: how many peers serve it, and their summed rate."""

    servers: list[int]
    capacity: list[float]

    @classmethod
    def of(cls, num_blocks: int, spans: Sequence[ServedSpan]) -> Coverage:
        """Parts of spans outside the model are ignored; a rate below zero counts as zero."""
        servers, capacity = [0] * num_blocks, [0.0] * num_blocks
        for span in spans:
            for block in range(max(0, span.start), min(num_blocks, span.end)):
                servers[block] += 1
                capacity[block] += max(span.rate, 0.0)
        return cls(servers, capacity)


@dataclass(frozen=True)
class Health:
    """How well blocks are served: how many have no server, how many only one, the thinnest one's capacity."""

    uncovered: int
    single: int
    thinnest: float

    def key(self) -> tuple[int, int, float]:
        """Smaller is healthier."""
        return self.uncovered, self.single, -self.thinnest

    def better_than(self, other: Health, gain: float) -> bool:
        if (self.uncovered, self.single) != (other.uncovered, other.single):
            return (self.uncovered, self.single) < (other.uncovered, other.single)
        return self.thinnest > other.thinnest and self.thinnest >= other.thinnest * gain


def health(coverage: Coverage) -> Health:
    served = [value for value, count in zip(coverage.capacity, coverage.servers, strict=True) if count > 0]
    return Health(
        uncovered=coverage.servers.count(0), single=coverage.servers.count(1), thinnest=min(served, default=0.0)
    )


def better_span(own: ServedSpan, coverage: Coverage, gain: float = DEFAULT_GAIN) -> tuple[int, int] | None:
    """The span this peer should move to, or None to stay where it is (see the module doc).

    `coverage` counts every peer serving the model, this one included (see `Coverage.of`). Linear in the number
    of blocks (prefix counts and minima), so a swarm simulation can afford it often.
    """
    num_blocks = len(coverage.servers)
    length = own.end - own.start
    if not 0 < length <= num_blocks or own.start < 0 or own.end > num_blocks:
        return None
    rate = max(own.rate, 0.0)
    inside = range(own.start, own.end)
    base = Coverage(
        [count - (block in inside) for block, count in enumerate(coverage.servers)],
        [value - (rate if block in inside else 0.0) for block, value in enumerate(coverage.capacity)],
    )
    windows = _Windows(base)
    staying = windows.health(own.start, length, rate)
    best_start, best = own.start, staying
    for start in range(num_blocks - length + 1):
        candidate = windows.health(start, length, rate)
        if candidate.key() < best.key():
            best_start, best = start, candidate
    if best_start == own.start or not best.better_than(staying, gain):
        return None
    return best_start, best_start + length


class _Windows:
    """Health of a swarm with one more span at any start, each in time independent of the span's length."""

    def __init__(self, base: Coverage) -> None:
        self.servers = base.servers
        # Rounding: what a peer's own rate leaves behind after subtraction may be a hair off.
        self.capacity = [value if count > 0 else 0.0 for value, count in zip(base.capacity, base.servers, strict=True)]
        inf = float("inf")
        self.zeros_before, self.ones_before, self.thinnest_before = [0], [0], [inf]
        for count, value in zip(self.servers, self.capacity, strict=True):
            self.zeros_before.append(self.zeros_before[-1] + (count == 0))
            self.ones_before.append(self.ones_before[-1] + (count == 1))
            self.thinnest_before.append(min(self.thinnest_before[-1], value if count > 0 else inf))
        self.thinnest_from = [inf] * (len(self.servers) + 1)
        for block in range(len(self.servers) - 1, -1, -1):
            value = self.capacity[block] if self.servers[block] > 0 else inf
            self.thinnest_from[block] = min(self.thinnest_from[block + 1], value)

    def health(self, start: int, length: int, rate: float) -> Health:
        end = start + length
        zeros_inside = self.zeros_before[end] - self.zeros_before[start]
        ones_inside = self.ones_before[end] - self.ones_before[start]
        thinnest = min(self.thinnest_before[start], self.thinnest_from[end], min(self.capacity[start:end]) + rate)
        return Health(
            # Inside the window every block gains a server: zeros become ones, ones become twos.
            uncovered=self.zeros_before[-1] - zeros_inside,
            single=self.ones_before[-1] - ones_inside + zeros_inside,
            thinnest=thinnest,
        )
