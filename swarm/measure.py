"""Speeds measured over time: exponentially weighted moving averages, and a start-up benchmark that one preempted
or cold repetition cannot skew.

Peers report their throughput from the steps they really ran (smoothed), clients smooth the latencies they see,
and the route planner compares those rather than one start-up measurement: on a shared machine a single short
benchmark measured identical peers started together at 17 and 100 tokens/s.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

# Weight of the newest sample in a speed average: about the last ten samples count.
SPEED_WEIGHT = 0.1
# Start-up benchmark: repetitions of a few timed steps after a warm-up; the median repetition counts.
BENCHMARK_MIN_REPEATS = 5
BENCHMARK_MAX_REPEATS = 15
# Past this many seconds of timed steps no further repetition starts (large models on slow machines).
BENCHMARK_BUDGET_SECONDS = 1.0
# A peer's own rate is believed up to this multiple of the rate measured of it (network and load included) by a
# peer deciding where to move. A client planning routes allows more (swarm.client.routing.ROUTE_TRUST_MARGIN): its
# one-token probe of a cold peer can take a few times a warm step, and it only needs to see through gross claims.
TRUST_MARGIN = 1.5


def ewma(previous: float | None, sample: float, weight: float = SPEED_WEIGHT) -> float:
    """The average after one more sample: `weight` of the sample plus the rest of the previous average.

    No previous average (None, or not a finite number) starts from the sample. A non-finite sample is ignored.
    """
    if not 0 < weight <= 1:
        raise ValueError(f"an average's weight must be in (0, 1], got {weight}")
    if previous is None or not math.isfinite(previous):
        return sample
    if not math.isfinite(sample):
        return previous
    return previous + weight * (sample - previous)


def median_rate(seconds: Sequence[float], units_each: int) -> float:
    """Units per second of the median repetition (each ran `units_each` units); 0.0 without repetitions."""
    timed = [value for value in seconds if value > 0 and math.isfinite(value)]
    if not timed or units_each <= 0:
        return 0.0
    return units_each / statistics.median(timed)


def compute_clock(device_type: str) -> Callable[[], float]:
    """The clock a start-up benchmark times compute with.

    On a CPU, the calling thread's CPU time: peers started together share the cores while they import and load,
    and wall time measured how much of a core each got then (identical peers measured 270 to 910 tokens/s side by
    side), CPU time the work itself (the same peers: within 10-20 %, now and then 2x when a hyperthread sibling was
    busy). torch's intra-op threads split a step evenly, so the calling thread's share approximates the wall time
    of an idle machine; the CPU time of other threads (BitTorrent) is left out. On a GPU, wall time (the caller
    synchronises)."""
    return time.thread_time if device_type == "cpu" else time.perf_counter


def benchmark(
    warm_up: Callable[[], None],
    repetition: Callable[[], None],
    units_each: int,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Units per second: `warm_up` once untimed (first calls allocate and fill caches), then `repetition` timed at
    least BENCHMARK_MIN_REPEATS times and until the budget is spent or BENCHMARK_MAX_REPEATS ran; the median."""
    warm_up()
    seconds: list[float] = []
    spent = 0.0
    while len(seconds) < BENCHMARK_MAX_REPEATS and (
        len(seconds) < BENCHMARK_MIN_REPEATS or spent < BENCHMARK_BUDGET_SECONDS
    ):
        started = clock()
        repetition()
        seconds.append(clock() - started)
        spent += seconds[-1]
    return median_rate(seconds, units_each)


class SpeedMeter:
    """A smoothed seconds-per-unit figure, seeded by a benchmark and updated by every measured unit of work."""

    def __init__(self, initial_rate: float = 0.0, weight: float = SPEED_WEIGHT) -> None:
        self.weight = weight
        self.seconds: float | None = 1.0 / initial_rate if initial_rate > 0 else None

    def add(self, seconds: float) -> None:
        if seconds > 0:
            self.seconds = ewma(self.seconds, seconds, self.weight)

    @property
    def rate(self) -> float:
        """Units per second (0.0 before anything was measured)."""
        return 1.0 / self.seconds if self.seconds else 0.0


def trusted_rate(
    claimed: float, measured: float | None, measured_before: float | None, busy: bool, margin: float = TRUST_MARGIN
) -> float:
    """The rate a peer counts for (pure): what it claims, up to `margin` times what was measured of it. A peer
    that did not run the probe counts for nothing, unless it said it is busy: then its last measurement stands."""
    if measured is None:
        measured = measured_before if busy and measured_before is not None else 0.0
    return min(max(claimed, 0.0), measured * margin)
