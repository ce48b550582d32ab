"""When a serving peer moves to other blocks: the pure rebalancing policy as a table, and its settling."""

from __future__ import annotations

import random

import pytest

from swarm.measure import trusted_rate
from swarm.peer.rebalance import DEFAULT_GAIN, Coverage, Health, ServedSpan, better_span, health


def spans(*triples: tuple[int, int, float]) -> list[ServedSpan]:
    return [ServedSpan(*triple) for triple in triples]


# (num_blocks, own span, others, expected move)
CASES = [
    # Blocks 2..3 lost their last server: move there (nothing else is uncovered by leaving).
    (4, (0, 2, 10.0), [(0, 2, 10.0)], (2, 4)),
    # Balanced: no move.
    (4, (0, 2, 10.0), [(0, 2, 10.0), (2, 4, 10.0)], None),
    # The only server of 0..1 never leaves it to cover 2..3: as many blocks stay uncovered.
    (4, (0, 2, 10.0), [], None),
    # 0..1 is the bottleneck (10 vs 30): a spare peer of 2..3 moves, doubling the thinnest block.
    (4, (2, 4, 10.0), [(0, 2, 10.0), (2, 4, 10.0), (2, 4, 10.0)], (0, 2)),
    # Noise: a 20% better thinnest block does not clear the margin.
    (4, (2, 4, 11.0), [(0, 2, 10.0), (2, 4, 12.0)], None),
    # ... a doubled one does.
    (4, (2, 4, 10.0), [(0, 2, 10.0), (2, 4, 30.0)], (0, 2)),
    # A longer span slides to cover the uncovered end.
    (4, (0, 3, 10.0), [(0, 3, 10.0)], (1, 4)),
    # A peer that has measured nothing yet still covers blocks.
    (4, (0, 2, 0.0), [(0, 2, 5.0)], (2, 4)),
    # Two equally good places: the lowest start.
    (6, (0, 2, 10.0), [(0, 2, 10.0)], (2, 4)),
    # Where staying is as good as the best, stay.
    (6, (4, 6, 10.0), [(0, 4, 10.0), (4, 6, 10.0)], None),
    # A whole-model span has nowhere to go; an empty or oversized span is not moved.
    (4, (0, 4, 10.0), [(0, 4, 10.0)], None),
    (4, (2, 2, 10.0), [], None),
    (4, (0, 5, 10.0), [], None),
    # Blocks 2..5 have one server each (one crash from a gap); 0..1 have three: a spare there moves to 2..3.
    (6, (0, 2, 10.0), [(0, 2, 10.0), (0, 2, 10.0), (2, 4, 10.0), (4, 6, 10.0)], (2, 4)),
    # Moving would only trade which blocks have a single server: stay.
    (4, (0, 2, 10.0), [(0, 2, 10.0), (2, 4, 10.0)], None),
    # Spans reaching past the model (a peer that announces blocks the model lacks) count only where they fit.
    (4, (0, 2, 10.0), [(0, 2, 10.0), (2, 9, 20.0)], None),
]


@pytest.mark.parametrize(("num_blocks", "own", "others", "expected"), CASES)
def test_better_span(
    num_blocks: int,
    own: tuple[int, int, float],
    others: list[tuple[int, int, float]],
    expected: tuple[int, int] | None,
) -> None:
    span = ServedSpan(*own)
    assert better_span(span, Coverage.of(num_blocks, [*spans(*others), span])) == expected


def test_coverage_and_health() -> None:
    coverage = Coverage.of(5, spans((0, 2, 10.0), (1, 3, 5.0), (-3, 1, 1.0), (4, 99, 2.0)))
    assert coverage.capacity == [11.0, 15.0, 5.0, 0.0, 2.0] and coverage.servers == [2, 2, 1, 0, 1]
    assert health(coverage) == Health(uncovered=1, single=2, thinnest=2.0)


def test_a_lone_peer_settles_and_never_returns_to_a_span_it_left() -> None:
    """Random swarms: one peer applying the policy over and over stops within a few moves and never revisits."""
    randomness = random.Random(7)
    for _ in range(300):
        num_blocks = randomness.randint(2, 24)
        others = []
        for _ in range(randomness.randint(0, 12)):
            start = randomness.randrange(num_blocks)
            others.append(ServedSpan(start, randomness.randint(start + 1, num_blocks), randomness.uniform(1, 50)))
        length = randomness.randint(1, num_blocks)
        start = randomness.randint(0, num_blocks - length)
        own = ServedSpan(start, start + length, randomness.uniform(1, 50))
        visited = {(own.start, own.end)}
        for _ in range(num_blocks + 1):
            move = better_span(own, Coverage.of(num_blocks, [*others, own]), DEFAULT_GAIN)
            if move is None:
                break
            assert move not in visited
            visited.add(move)
            own = ServedSpan(*move, own.rate)
        else:
            raise AssertionError("the peer never settled")


@pytest.mark.parametrize(
    ("claimed", "measured", "before", "busy", "trusted"),
    [
        (10.0, 10.0, None, False, 10.0),  # an honest claim stands
        (100.0, 10.0, None, False, 15.0),  # a claim past what was measured counts for 1.5 x the measurement
        (5.0, 10.0, None, False, 5.0),  # modesty is believed
        (10.0, None, None, False, 0.0),  # no probe run, not busy: it does not serve what it claims
        (10.0, None, 8.0, True, 10.0),  # busy: the last measurement stands
        (100.0, None, 8.0, True, 12.0),
        (10.0, None, None, True, 0.0),  # busy and never measured
        (-4.0, 10.0, None, False, 0.0),
    ],
)
def test_trusted_rate(claimed: float, measured: float | None, before: float | None, busy: bool, trusted: float) -> None:
    assert trusted_rate(claimed, measured, before, busy) == pytest.approx(trusted)
