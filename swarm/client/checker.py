"""Verifying a fraction of steps while generating (`--verify FRACTION`): one hop of the route is re-run by other
peers serving its blocks, the majority decides, and a peer it contradicts is excluded (see verify.py).

The first opinion comes from a shadow: a session of its own on the route with the checked hop replaced, kept for
the generation, so a check feeds it only the tokens since the last one (one prefill of a few tokens) instead of
the whole sequence again. Only a disagreement asks a third peer, through a sessionless pass of every token."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from swarm.client.routing import BAD_RESULT, PeerFailure, PeerInfo
from swarm.client.verify import Verdict, majority, second_opinions, settled, tolerance_for
from swarm.errors import SwarmError
from swarm.wire import Hop

# Runs token ids (batch, n) at positions [0, n) through a route without a session: last-position logits.
StatelessRun = Callable[[list[Hop], torch.Tensor], torch.Tensor]


class Shadow(Protocol):
    """A session on a route that follows a generation: `run` gives the last-position logits after every token so
    far, feeding the session only what it has not cached yet."""

    def run(self, token_ids: torch.Tensor) -> torch.Tensor: ...

    def close(self) -> None: ...


# Opens a shadow on a route (SwarmError when the route refuses it).
OpenShadow = Callable[[list[Hop]], Shadow]


class ShadowSession:
    """A `Shadow` over an open session: `step(ids, start)` runs tokens at positions [start, ...) and gives the last
    position's logits. It is fed only the tokens it has not cached; a rollback (speculative decoding) takes the
    later ones back by starting before them."""

    def __init__(self, step: Callable[[torch.Tensor, int], torch.Tensor], close: Callable[[], None]) -> None:
        self.step = step
        self._close = close
        self.fed = torch.empty((1, 0), dtype=torch.long)

    def run(self, token_ids: torch.Tensor) -> torch.Tensor:
        known = min(self.fed.shape[1], token_ids.shape[1])
        differs = (self.fed[:, :known] != token_ids[:, :known]).any(dim=0).nonzero()
        same = int(differs[0]) if len(differs) else known
        # At least the last token goes again: its logits are the opinion.
        start = min(same, token_ids.shape[1] - 1)
        logits = self.step(token_ids[:, start:], start)
        self.fed = token_ids
        return logits

    def close(self) -> None:
        self._close()


@dataclass
class _Following:
    """The shadow of one hop of one route."""

    route: list[Hop]
    index: int
    alternative: list[Hop]
    shadow: Shadow


@dataclass
class StepChecker:
    """Checks steps of one generation. `peers` and `distrusted` are the client's: peers excluded here stay
    excluded for the client's later generations too."""

    fraction: float
    peers: Callable[[], list[PeerInfo]]
    run_stateless: StatelessRun
    replica: bool
    distrusted: set[str]
    open_shadow: OpenShadow | None = None
    rng: random.Random = field(default_factory=random.Random)
    checked: int = 0
    unverifiable: int = 0
    excluded: list[dict[str, Any]] = field(default_factory=list)
    following: _Following | None = None

    def check(self, route: list[Hop], token_ids: torch.Tensor, logits: torch.Tensor, failed: set[str]) -> None:
        """With probability `fraction`, verify the step that gave `logits` for `token_ids` (every token so far);
        PeerFailure (bad_result) naming the route's peer when the majority contradicts it."""
        if self.fraction <= 0 or self.rng.random() >= self.fraction:
            return
        peers = self.peers()
        excluded = failed | self.distrusted
        chosen = self._hop_to_check(route, peers, excluded)
        if chosen is None:
            self.unverifiable += 1
            return
        index, alternatives = chosen
        opinions = [(route[index].address, logits)]
        tolerance = tolerance_for(next((peer.dtype for peer in peers if peer.address == route[0].address), "float32"))
        for alternative in alternatives:
            opinion = self._opinion(route, index, alternative, token_ids)
            if opinion is not None:
                opinions.append((alternative[index].address, opinion))
            if len(opinions) > 1 and settled(opinions, tolerance):
                break
        self.checked += 1
        self._judge(route[index], majority(opinions, tolerance), len(opinions))

    def _hop_to_check(
        self, route: list[Hop], peers: list[PeerInfo], excluded: set[str]
    ) -> tuple[int, list[list[Hop]]] | None:
        """The hop the shadow follows while it can (its alternative first), else a random hop that other peers
        serve; None when no hop has another peer."""
        following = self.following
        if following is not None and (following.route != route or following.alternative[following.index].address
                                      in excluded):  # fmt: skip
            self.close()
            following = None
        if following is not None:
            others = second_opinions(route, following.index, peers, excluded, self.replica)
            rest = [other for other in others if other != following.alternative]
            return following.index, [following.alternative, *rest]
        for index in self.rng.sample(range(len(route)), len(route)):
            alternatives = second_opinions(route, index, peers, excluded, self.replica)
            if alternatives:
                return index, alternatives
        return None

    def _opinion(
        self, route: list[Hop], index: int, alternative: list[Hop], token_ids: torch.Tensor
    ) -> torch.Tensor | None:
        """The alternative route's last logits: from the shadow when it follows (or can follow) that route, else a
        sessionless pass; None when the peers cannot give one (failures are handled where they matter)."""
        try:
            if self.open_shadow is not None and (self.following is None or self.following.alternative == alternative):
                if self.following is None:
                    self.following = _Following(route, index, alternative, self.open_shadow(alternative))
                return self.following.shadow.run(token_ids)
            return self.run_stateless(alternative, token_ids)
        except SwarmError:
            if self.following is not None and self.following.alternative == alternative:
                self.close()
            return None

    def close(self) -> None:
        """End the shadow's session (the generation ended, or its route changed)."""
        if self.following is not None:
            self.following.shadow.close()
            self.following = None

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
