"""Verifying a fraction of steps while generating (`--verify FRACTION`): one hop of the route is re-run by other
peers serving its blocks, the majority decides, and a peer it contradicts is excluded (see verify.py).

On a chain of spans the first opinion is one hop's alone: a shadow session of that hop on another peer, kept for the
generation, fed what the hop itself received (the generation's HopTrace, from the hops' tees) since the last check,
and compared with what the hop gave. Only a disagreement costs more: then routes with the hop, and the next one
(whose tee may have lied), served by other peers run the whole sequence without a session. A replica's route (one
hop) is followed end to end by a shadow session on another replica the same way."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from swarm.client.hop_trace import HopTrace
from swarm.client.routing import BAD_RESULT, PeerFailure, PeerInfo
from swarm.client.verify import Verdict, majority, relative_difference, second_opinions, settled, tolerance_for
from swarm.errors import SwarmError
from swarm.wire import Hop

# Runs token ids (batch, n) at positions [0, n) through a route without a session: last-position logits.
StatelessRun = Callable[[list[Hop], torch.Tensor], torch.Tensor]


class Shadow(Protocol):
    """A session on a route that follows a generation: `run` gives the last-position logits after every token so
    far, feeding the session only what it has not cached yet; `start` is the first position the last run fed."""

    start: int

    def run(self, token_ids: torch.Tensor) -> torch.Tensor: ...

    def close(self) -> None: ...


# Opens a shadow on a route (SwarmError when the route refuses it).
OpenShadow = Callable[[list[Hop]], Shadow]


class ShadowSession:
    """A `Shadow` over an open session: `step(inputs, start)` runs inputs at positions [start, ...) (token ids, or
    hidden states for a session of one hop) and gives its output. It is fed only the positions it has not cached; a
    rollback (speculative decoding) takes the later ones back by starting before them. `start` is where the last
    run started."""

    def __init__(self, step: Callable[[torch.Tensor, int], torch.Tensor], close: Callable[[], None]) -> None:
        self.step = step
        self._close = close
        self.fed: torch.Tensor | None = None
        self.start = 0

    def run(self, inputs: torch.Tensor) -> torch.Tensor:
        # At least the last position goes again: its output is the opinion.
        self.start = min(first_difference(self.fed, inputs), inputs.shape[1] - 1)
        output = self.step(inputs[:, self.start :], self.start)
        self.fed = inputs
        return output

    def close(self) -> None:
        self._close()


def first_difference(fed: torch.Tensor | None, inputs: torch.Tensor) -> int:
    """The first position (dimension 1) where `inputs` differ from what was `fed`, or where `fed` ends."""
    if fed is None or fed.shape[0] != inputs.shape[0] or fed.shape[2:] != inputs.shape[2:]:
        return 0
    known = min(fed.shape[1], inputs.shape[1])
    if known == 0:
        return 0
    differs = (fed[:, :known] != inputs[:, :known]).reshape(inputs.shape[0], known, -1).any(dim=2).any(dim=0)
    where = differs.nonzero()
    return int(where[0]) if len(where) else known


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
    # Checks of one hop alone (span routes): the generation's trace of what every hop received and gave, and what
    # opens a session of one hop on another peer. With them a shadow follows one hop, fed that hop's inputs.
    trace: HopTrace | None = None
    open_hop_shadow: Callable[[Hop], Shadow] | None = None
    rng: random.Random = field(default_factory=random.Random)
    checked: int = 0
    unverifiable: int = 0
    # Checks settled by one hop re-run alone, and checks that re-ran whole routes after it disagreed.
    one_hop: int = 0
    escalated: int = 0
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
        tolerance = tolerance_for(next((peer.dtype for peer in peers if peer.address == route[0].address), "float32"))
        self.checked += 1
        if self.open_hop_shadow is None:
            self._end_to_end(route, index, alternatives, token_ids, logits, tolerance)
            return
        screened = self._screen(route, index, alternatives[0], token_ids.shape[1], tolerance)
        if screened is True:
            self.one_hop += 1
            return
        self.escalated += screened is False
        # A disagreement names no one yet: the hop may be wrong, or the next hop may have lied about its input.
        # Checks of the whole route with each of them replaced decide.
        suspects = [index, index + 1] if screened is False and index + 1 < len(route) else [index]
        for suspect in suspects:
            others = alternatives if suspect == index else second_opinions(route, suspect, peers, excluded,
                                                                           self.replica)  # fmt: skip
            self._end_to_end(route, suspect, others, token_ids, logits, tolerance)

    def _screen(
        self, route: list[Hop], index: int, alternative: list[Hop], length: int, tolerance: float
    ) -> bool | None:
        """Re-run hop `index` alone on the alternative's peer from what the hop received, and compare with what it
        gave (every position since the last check): whether they agree; None when the trace lacks a position or
        the other peer cannot answer."""
        hop = route[index]
        trace = self.trace
        inputs = trace.positions(hop.blocks[0], length) if trace is not None else None
        outputs = trace.positions(hop.blocks[1], length) if trace is not None else None
        if inputs is None or outputs is None or self.open_hop_shadow is None:
            return None
        try:
            if self.following is None:
                shadow = self.open_hop_shadow(alternative[index])
                self.following = _Following(route, index, alternative, shadow)
            shadow = self.following.shadow
            output = shadow.run(inputs)
        except SwarmError:
            self.close()
            return None
        return relative_difference(output, outputs[:, shadow.start :]) <= tolerance

    def _end_to_end(
        self, route: list[Hop], index: int, alternatives: list[list[Hop]], token_ids: torch.Tensor,
        logits: torch.Tensor, tolerance: float,
    ) -> None:  # fmt: skip
        """Compare the route's logits with those of routes where hop `index` is served by other peers; the majority
        decides (PeerFailure when it contradicts the hop)."""
        opinions = [(route[index].address, logits)]
        for alternative in alternatives:
            opinion = self._opinion(route, index, alternative, token_ids)
            if opinion is not None:
                opinions.append((alternative[index].address, opinion))
            if len(opinions) > 1 and settled(opinions, tolerance):
                break
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
                # (Never with checks of one hop: then `following` is a one-hop session, fed hidden states.)
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
                "one_hop": self.one_hop, "escalated": self.escalated, "excluded": self.excluded}  # fmt: skip
