"""Which blocks a joining peer hosts (pure policy: no I/O, table-tested).

A peer hosts the whole model when it fits its memory budget; otherwise the contiguous span, as long as
the budget allows, that covers the blocks the swarm serves least. Spans are compared by their sorted
per-block coverage, lexicographically: a span that covers an unserved block beats one that does not, and
among those the one with fewer well-served blocks wins. Ties go to the lowest start.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from swarm.errors import SwarmError

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}
_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")


def parse_byte_size(text: str) -> int:
    """'2GB', '512MB', '1.5GiB', '1000000' → bytes (decimal units for KB/MB/GB, binary for KiB/MiB/GiB)."""
    match = _SIZE_RE.fullmatch(text)
    unit = match[2].upper() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise SwarmError(f"cannot read {text!r} as a size: use a number with an optional unit such as 512MB or 2GB")
    size = int(float(match[1]) * _SIZE_UNITS[unit])
    if size <= 0:
        raise SwarmError(f"size {text!r} must be more than zero bytes")
    return size


def choose_span(num_blocks: int, bytes_per_block: int, budget_bytes: int, coverage: Sequence[int]) -> tuple[int, int]:
    """The blocks [start, end) to host: as many blocks as fit, placed where the swarm is thinnest.

    `coverage[i]` is how many known peers serve block i. Raises SwarmError when not even one block fits.
    """
    if num_blocks < 1:
        raise SwarmError("the model has no blocks to host")
    if bytes_per_block < 1:
        raise SwarmError("bytes per block must be positive")
    if len(coverage) != num_blocks:
        raise SwarmError(f"coverage lists {len(coverage)} blocks, the model has {num_blocks}")
    if any(count < 0 for count in coverage):
        raise SwarmError("coverage counts cannot be negative")
    length = min(num_blocks, budget_bytes // bytes_per_block)
    if length < 1:
        raise SwarmError(
            f"the memory budget ({budget_bytes:,} bytes) does not fit even one block ({bytes_per_block:,} bytes)"
        )
    best_start = min(
        range(num_blocks - length + 1),
        key=lambda start: (sorted(coverage[start : start + length]), start),
    )
    return best_start, best_start + length


def coverage_from_spans(num_blocks: int, spans: Sequence[tuple[int, int]]) -> list[int]:
    """Per-block count of the spans [start, end) that serve it; out-of-range parts are ignored."""
    coverage = [0] * num_blocks
    for start, end in spans:
        for block in range(max(0, start), min(num_blocks, end)):
            coverage[block] += 1
    return coverage


@dataclass(frozen=True)
class HostingPlan:
    """What a peer hosts: blocks [start, end), or the whole model (`replica`: its `full` chunk, or every chunk of a
    task model published in blocks)."""

    start: int
    end: int
    replica: bool = False


def plan_hosting(
    *,
    num_blocks: int,
    bytes_per_block: int,
    full_bytes: int,
    budget_bytes: int,
    coverage: Sequence[int],
    requested: tuple[int, int] | None = None,
    whole_when_fits: bool = False,
) -> HostingPlan:
    """The hosting decision for a joining peer.

    Models without block chunks (`num_blocks == 0`, one `full` chunk of `full_bytes`) are served as a
    replica or not at all. Otherwise an explicit `requested` range wins (checked against the model), then, for a
    model that `whole_when_fits` (a task model: its clients then send whole inputs and run nothing), a replica when
    its `full_bytes` fit; else as many blocks as fit where the swarm is thinnest (`choose_span`).
    """
    if num_blocks == 0:
        if requested is not None:
            raise SwarmError("this model is published as one full chunk: it cannot be split with --blocks")
        if full_bytes > budget_bytes:
            raise SwarmError(
                f"the memory budget ({budget_bytes:,} bytes) does not fit this model's full replica "
                f"({full_bytes:,} bytes), and its architecture cannot be split into blocks"
            )
        return HostingPlan(0, 1, replica=True)
    if requested is not None:
        start, end = requested
        if not 0 <= start < end <= num_blocks:
            raise SwarmError(f"blocks {start}:{end} are outside the model's {num_blocks} blocks (0:{num_blocks})")
        return HostingPlan(start, end)
    if whole_when_fits and full_bytes <= budget_bytes:
        return HostingPlan(0, num_blocks, replica=True)
    start, end = choose_span(num_blocks, bytes_per_block, budget_bytes, coverage)
    return HostingPlan(start, end)
