"""Checking peers' outputs: re-run a step with one hop replaced by other peers serving the same blocks, compare, and
find who disagrees with the majority. Pure: tensors and peer lists in, decisions out.

Two computations of one step differ only by the order of floating-point operations (a cached decode step against a
whole-sequence pass), so their last-position logits agree to within a tolerance set by the dtype the peers compute
in; a peer that perturbs its output shows up far outside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from swarm.client.routing import PeerInfo
from swarm.wire import Hop

# Relative L2 difference of two last-position logit vectors beyond which they disagree, by the peers' dtype.
TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2, "float16": 2e-2}
# Other peers asked for their opinion of one hop, at most: two, so that with the hop itself there is a majority. The
# second is asked only when the first disagrees (see `settled`).
SECOND_OPINIONS = 2


def tolerance_for(dtype: str) -> float:
    return TOLERANCE.get(dtype, TOLERANCE["bfloat16"])


def relative_difference(first: torch.Tensor, second: torch.Tensor) -> float:
    """||first - second|| / ||second|| over all elements (float32); infinite when the shapes differ."""
    if first.shape != second.shape:
        return float("inf")
    first, second = first.float(), second.float()
    scale = float(torch.linalg.vector_norm(second))
    return float(torch.linalg.vector_norm(first - second)) / max(scale, 1e-12)


@dataclass(frozen=True)
class Verdict:
    """Who agrees with the majority of opinions and who does not; `decided` is False when no strict majority
    exists (then every opinion is in `disagreeing`: none of them can be trusted)."""

    agreeing: frozenset[str]
    disagreeing: frozenset[str]
    decided: bool


def majority(opinions: Sequence[tuple[str, torch.Tensor]], tolerance: float) -> Verdict:
    """Group the peers' outputs by agreement (each with the first of a group it agrees with) and take the largest
    group if it is larger than every other one."""
    groups: list[list[tuple[str, torch.Tensor]]] = []
    for address, output in opinions:
        for group in groups:
            if relative_difference(output, group[0][1]) <= tolerance:
                group.append((address, output))
                break
        else:
            groups.append([(address, output)])
    groups.sort(key=len, reverse=True)
    everyone = frozenset(address for address, _ in opinions)
    if len(groups) > 1 and len(groups[0]) == len(groups[1]):
        return Verdict(frozenset(), everyone, decided=False)
    agreeing = frozenset(address for address, _ in groups[0]) if groups else frozenset()
    return Verdict(agreeing, everyone - agreeing, decided=True)


def second_opinions(
    route: Sequence[Hop], index: int, peers: Sequence[PeerInfo], excluded: set[str] | frozenset[str], replica: bool
) -> list[list[Hop]]:
    """Routes equal to `route` but for hop `index`, served instead by another peer covering its blocks, at most
    SECOND_OPINIONS of them. Peers in `excluded` or already on the route are not asked; `replica`: the model runs
    whole on replica peers (token ids in, logits out), so only replicas can stand in, and spans otherwise."""
    hop = route[index]
    skip = {other.address for other in route} | set(excluded)
    others = [
        peer.address
        for peer in peers
        if peer.address not in skip
        and peer.replica == replica
        and peer.blocks[0] <= hop.blocks[0]
        and hop.blocks[1] <= peer.blocks[1]
    ]
    unique = list(dict.fromkeys(others))[:SECOND_OPINIONS]
    return [[*route[:index], Hop(address=address, blocks=hop.blocks), *route[index + 1 :]] for address in unique]


def settled(opinions: Sequence[tuple[str, torch.Tensor]], tolerance: float) -> bool:
    """Whether no further opinion is needed: at least two, all in agreement. Honest peers agree, so a check costs
    one extra pass; only a disagreement asks for more (a third opinion makes a majority)."""
    verdict = majority(opinions, tolerance)
    return len(opinions) >= 2 and verdict.decided and not verdict.disagreeing
