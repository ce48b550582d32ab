"""Verifying a fraction of steps while generating (`--verify FRACTION`): one hop of the route is re-run by other
peers serving its blocks, the majority decides, and a peer it contradicts is excluded (see verify.py)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from swarm.client.routing import BAD_RESULT, PeerFailure, PeerInfo
from swarm.client.verify import Verdict, majority, second_opinions, settled, tolerance_for
from swarm.errors import SwarmError
from swarm.wire import Hop

# Runs token ids (batch, n) at positions [0, n) through a route without a session: last-position logits.
StatelessRun = Callable[[list[Hop], torch.Tensor], torch.Tensor]


@dataclass
class StepChecker:
    """Checks steps of one generation. `peers` and `distrusted` are the client's: peers excluded here stay
    excluded for the client's later generations too."""

    fraction: float
    peers: Callable[[], list[PeerInfo]]
    run_stateless: StatelessRun
    replica: bool
    distrusted: set[str]
    rng: random.Random = field(default_factory=random.Random)
    checked: int = 0
    unverifiable: int = 0
    excluded: list[dict[str, Any]] = field(default_factory=list)

    def check(self, route: list[Hop], token_ids: torch.Tensor, logits: torch.Tensor, failed: set[str]) -> None:
        """With probability `fraction`, verify the step that gave `logits` for `token_ids` (every token so far);
        PeerFailure (bad_result) naming the route's peer when the majority contradicts it."""
        if self.fraction <= 0 or self.rng.random() >= self.fraction:
            return
        peers = self.peers()
        dtype = next((peer.dtype for peer in peers if peer.address == route[0].address), "float32")
        indexes = self.rng.sample(range(len(route)), len(route))
        for index in indexes:
            alternatives = second_opinions(route, index, peers, failed | self.distrusted, self.replica)
            if alternatives:
                break
        else:
            self.unverifiable += 1
            return
        opinions = [(route[index].address, logits)]
        tolerance = tolerance_for(dtype)
        for alternative in alternatives:
            try:
                opinions.append((alternative[index].address, self.run_stateless(alternative, token_ids)))
            except SwarmError:
                continue  # a peer that cannot give an opinion gives none; failures are handled where they matter
            if settled(opinions, tolerance):
                break
        self.checked += 1
        self._judge(route[index], majority(opinions, tolerance), len(opinions))

    def _judge(self, hop: Hop, verdict: Verdict, opinions: int) -> None:
        for address in sorted(verdict.disagreeing):
            why = "disagreed with the majority" if verdict.decided else f"disagreed, {opinions} opinions, no majority"
            self.excluded.append({"peer": address, "blocks": list(hop.blocks), "reason": why})
            self.distrusted.add(address)
        if hop.address in verdict.disagreeing:
            raise PeerFailure(
                f"peer {hop.address} computed blocks {hop.blocks[0]}:{hop.blocks[1]} differently from other peers "
                "serving them; excluded",
                hop.address,
                BAD_RESULT,
            )

    def record(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "checked": self.checked, "unverifiable": self.unverifiable,
                "excluded": self.excluded}  # fmt: skip
