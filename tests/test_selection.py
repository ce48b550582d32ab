"""Block selection for a joining peer: a pure policy, tested with tables of cases."""

from __future__ import annotations

import pytest

from swarm.errors import SwarmError
from swarm.peer.selection import (
    HostingPlan,
    choose_span,
    coverage_from_spans,
    parse_byte_size,
    plan_hosting,
)

# (num_blocks, bytes_per_block, budget_bytes, coverage, expected (start, end))
CHOOSE_SPAN_CASES = [
    # Nobody serves anything: ties everywhere, lowest start.
    (8, 10, 30, [0] * 8, (0, 3)),
    # The whole model fits.
    (4, 10, 40, [0, 0, 0, 0], (0, 4)),
    (4, 10, 1000, [3, 3, 3, 3], (0, 4)),
    # Exactly one block fits: the least served one.
    (5, 10, 10, [2, 1, 0, 1, 2], (2, 3)),
    (5, 10, 19, [2, 1, 0, 1, 2], (2, 3)),
    # The gap at the end of a served prefix.
    (6, 10, 20, [1, 1, 1, 1, 0, 0], (4, 6)),
    # The gap at the start.
    (6, 10, 30, [0, 0, 0, 2, 2, 2], (0, 3)),
    # Two gaps of one block: ties broken by the lowest start among spans covering one gap.
    (6, 10, 20, [1, 0, 1, 1, 0, 1], (0, 2)),
    # A span covering two unserved blocks beats one covering a single unserved block.
    (6, 10, 30, [0, 1, 1, 0, 1, 0], (3, 6)),
    # Same zeros: prefer the span whose other blocks are served least.
    (5, 10, 20, [3, 0, 3, 0, 1], (3, 5)),
    # Budget not a multiple of the block size: round down.
    (10, 7, 29, [1] * 10, (0, 4)),
    # A thinly served middle.
    (7, 10, 30, [2, 2, 1, 0, 1, 2, 2], (2, 5)),
]


@pytest.mark.parametrize(("num_blocks", "bytes_per_block", "budget", "coverage", "expected"), CHOOSE_SPAN_CASES)
def test_choose_span(
    num_blocks: int, bytes_per_block: int, budget: int, coverage: list[int], expected: tuple[int, int]
) -> None:
    assert choose_span(num_blocks, bytes_per_block, budget, coverage) == expected


# (num_blocks, bytes_per_block, budget, coverage, message fragment)
CHOOSE_SPAN_ERRORS = [
    (4, 10, 9, [0] * 4, "does not fit even one block"),
    (4, 10, 0, [0] * 4, "does not fit even one block"),
    (0, 10, 100, [], "no blocks"),
    (4, 0, 100, [0] * 4, "bytes per block"),
    (4, 10, 100, [0] * 3, "coverage lists 3 blocks"),
    (2, 10, 100, [0, -1], "negative"),
]


@pytest.mark.parametrize(("num_blocks", "bytes_per_block", "budget", "coverage", "fragment"), CHOOSE_SPAN_ERRORS)
def test_choose_span_errors(
    num_blocks: int, bytes_per_block: int, budget: int, coverage: list[int], fragment: str
) -> None:
    with pytest.raises(SwarmError, match=fragment):
        choose_span(num_blocks, bytes_per_block, budget, coverage)


@pytest.mark.parametrize(
    ("num_blocks", "spans", "expected"),
    [
        (4, [], [0, 0, 0, 0]),
        (4, [(0, 2), (1, 4)], [1, 2, 1, 1]),
        (3, [(0, 3), (0, 3)], [2, 2, 2]),
        # Records from the network may be wrong: out-of-range parts are ignored.
        (3, [(2, 9), (-5, 1)], [1, 0, 1]),
    ],
)
def test_coverage_from_spans(num_blocks: int, spans: list[tuple[int, int]], expected: list[int]) -> None:
    assert coverage_from_spans(num_blocks, spans) == expected


PLAN_CASES = [
    # Whole model fits: host it all.
    (
        {"num_blocks": 4, "bytes_per_block": 10, "full_bytes": 0, "budget_bytes": 50, "coverage": [0] * 4},
        HostingPlan(0, 4),
    ),
    # Does not fit: a span where coverage is thin.
    (
        {"num_blocks": 4, "bytes_per_block": 10, "full_bytes": 0, "budget_bytes": 20, "coverage": [1, 1, 0, 0]},
        HostingPlan(2, 4),
    ),
    # An explicit range wins over the budget.
    (
        {
            "num_blocks": 4,
            "bytes_per_block": 10,
            "full_bytes": 0,
            "budget_bytes": 1,
            "coverage": [0] * 4,
            "requested": (1, 3),
        },
        HostingPlan(1, 3),
    ),
    # A model without block chunks is a replica when it fits.
    (
        {"num_blocks": 0, "bytes_per_block": 1, "full_bytes": 100, "budget_bytes": 100, "coverage": []},
        HostingPlan(0, 1, replica=True),
    ),
    # A task model in blocks: whole (a replica of every chunk) when all of it fits...
    (
        {
            "num_blocks": 4,
            "bytes_per_block": 10,
            "full_bytes": 60,
            "budget_bytes": 60,
            "coverage": [0] * 4,
            "whole_when_fits": True,
        },
        HostingPlan(0, 4, replica=True),
    ),
    # ... else a span, even when its blocks alone would fit (the client then runs embeddings and head).
    (
        {
            "num_blocks": 4,
            "bytes_per_block": 10,
            "full_bytes": 60,
            "budget_bytes": 59,
            "coverage": [1, 1, 0, 0],
            "whole_when_fits": True,
        },
        HostingPlan(0, 4),
    ),
    (
        {
            "num_blocks": 4,
            "bytes_per_block": 10,
            "full_bytes": 60,
            "budget_bytes": 20,
            "coverage": [1, 1, 0, 0],
            "whole_when_fits": True,
        },
        HostingPlan(2, 4),
    ),
    # An explicit range wins there too.
    (
        {
            "num_blocks": 4,
            "bytes_per_block": 10,
            "full_bytes": 60,
            "budget_bytes": 100,
            "coverage": [0] * 4,
            "requested": (0, 2),
            "whole_when_fits": True,
        },
        HostingPlan(0, 2),
    ),
]


@pytest.mark.parametrize(("arguments", "expected"), PLAN_CASES)
def test_plan_hosting(arguments: dict[str, object], expected: HostingPlan) -> None:
    assert plan_hosting(**arguments) == expected  # type: ignore[arg-type]


PLAN_ERRORS = [
    ({"num_blocks": 0, "bytes_per_block": 1, "full_bytes": 101, "budget_bytes": 100, "coverage": []}, "full replica"),
    (
        {
            "num_blocks": 0,
            "bytes_per_block": 1,
            "full_bytes": 1,
            "budget_bytes": 100,
            "coverage": [],
            "requested": (0, 1),
        },
        "cannot be split",
    ),
    (
        {
            "num_blocks": 4,
            "bytes_per_block": 10,
            "full_bytes": 0,
            "budget_bytes": 100,
            "coverage": [0] * 4,
            "requested": (2, 5),
        },
        "outside the model's 4 blocks",
    ),
    (
        {"num_blocks": 4, "bytes_per_block": 10, "full_bytes": 0, "budget_bytes": 5, "coverage": [0] * 4},
        "even one block",
    ),
]


@pytest.mark.parametrize(("arguments", "fragment"), PLAN_ERRORS)
def test_plan_hosting_errors(arguments: dict[str, object], fragment: str) -> None:
    with pytest.raises(SwarmError, match=fragment):
        plan_hosting(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2GB", 2_000_000_000),
        ("512MB", 512_000_000),
        ("512mb", 512_000_000),
        ("1.5GiB", 1_610_612_736),
        ("64KiB", 65_536),
        ("1000", 1000),
        (" 3 GB ", 3_000_000_000),
        ("10B", 10),
    ],
)
def test_parse_byte_size(text: str, expected: int) -> None:
    assert parse_byte_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "2XB", "-1GB", "0", "0MB", "1e9", "two GB", "2 G B"])
def test_parse_byte_size_rejects(text: str) -> None:
    with pytest.raises(SwarmError):
        parse_byte_size(text)
