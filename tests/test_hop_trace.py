"""The per-position trace of what every hop received and gave (`--verify`'s checks of one hop alone): steps,
rollbacks, replays, and tees that are missing, malformed or non-finite. Pure: a table of cases."""

from __future__ import annotations

import pytest
import torch

from swarm.client.checker import first_difference
from swarm.client.hop_trace import HopTrace

WIDTH = 4


def hidden(first: int, count: int, width: int = WIDTH) -> torch.Tensor:
    """Positions [first, first + count) whose every value is the position's index: which position a trace holds
    where is then plain to see."""
    return torch.arange(first, first + count, dtype=torch.float32).reshape(1, count, 1).expand(1, count, width)


def held(trace: HopTrace) -> dict[int, list[int]]:
    return {boundary: [int(value) for value in tensor[0, :, 0]] for boundary, tensor in trace.boundaries.items()}


# Steps (start, count, boundaries given) → positions each boundary then holds.
CASES = [
    ([(0, 3, [0, 2, 4]), (3, 1, [0, 2, 4])], {0: [0, 1, 2, 3], 2: [0, 1, 2, 3], 4: [0, 1, 2, 3]}),
    # A rollback (speculative decoding took positions 2.. back) overwrites from there.
    ([(0, 4, [0, 4]), (2, 1, [0, 4])], {0: [0, 1, 2], 4: [0, 1, 2]}),
    # A tee that did not come: its boundary is forgotten, and stays so while it has a gap...
    ([(0, 3, [0, 2, 4]), (3, 1, [0, 4]), (4, 1, [0, 2, 4])], {0: [0, 1, 2, 3, 4], 4: [0, 1, 2, 3, 4]}),
    # ...until a replay from position 0 (a failover) brings it back.
    (
        [(0, 3, [0, 4]), (3, 1, [0, 2, 4]), (0, 5, [0, 2, 4])],
        {0: [0, 1, 2, 3, 4], 2: [0, 1, 2, 3, 4], 4: [0, 1, 2, 3, 4]},
    ),
]


@pytest.mark.parametrize(("steps", "expected"), CASES)
def test_a_trace_follows_steps_rollbacks_and_replays(
    steps: list[tuple[int, int, list[int]]], expected: dict[int, list[int]]
) -> None:
    trace = HopTrace(WIDTH)
    for start, count, boundaries in steps:
        trace.record_step(start, count, {boundary: hidden(start, count) for boundary in boundaries})
    assert held(trace) == expected


@pytest.mark.parametrize(
    "bad",
    [
        hidden(3, 1, width=WIDTH + 1),  # another model's width
        hidden(3, 2),  # more positions than the step had
        hidden(3, 1)[0],  # not (batch, positions, width)
        torch.full((1, 1, WIDTH), float("nan")),
        torch.full((1, 1, WIDTH), float("inf")),
    ],
)
def test_a_malformed_tee_forgets_its_boundary(bad: torch.Tensor) -> None:
    trace = HopTrace(WIDTH)
    trace.record_step(0, 3, {0: hidden(0, 3), 2: hidden(0, 3)})
    trace.record_step(3, 1, {0: hidden(3, 1), 2: bad})
    assert held(trace) == {0: [0, 1, 2, 3]}
    assert trace.positions(2, 4) is None


def test_positions_are_given_only_when_all_are_known() -> None:
    trace = HopTrace(WIDTH)
    trace.record_step(0, 3, {2: hidden(0, 3)})
    assert trace.positions(2, 3) is not None and trace.positions(2, 3).shape == (1, 3, WIDTH)  # type: ignore[union-attr]
    assert trace.positions(2, 2) is not None
    assert trace.positions(2, 4) is None and trace.positions(0, 1) is None


@pytest.mark.parametrize(
    ("fed", "now", "expected"),
    [
        (None, hidden(0, 3), 0),
        (hidden(0, 3), hidden(0, 5), 3),
        (hidden(0, 3), hidden(0, 3), 3),
        (torch.cat([hidden(0, 2), hidden(7, 1)], 1), hidden(0, 4), 2),  # rolled back at position 2
        (hidden(0, 3, width=2), hidden(0, 3), 0),  # another shape: start afresh
        (hidden(0, 0), hidden(0, 3), 0),
        (torch.tensor([[1, 2, 3]]), torch.tensor([[1, 2, 9, 4]]), 2),  # token ids work the same way
    ],
)
def test_first_difference(fed: torch.Tensor | None, now: torch.Tensor, expected: int) -> None:
    assert first_difference(fed, now) == expected
