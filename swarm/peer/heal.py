"""A serving peer keeps its model's swarm whole: every few minutes (jittered, so peers do not all look at once)
it looks at the other peers serving the model and moves to other blocks when the rebalancing policy
(swarm.peer.rebalance) says so. It says where it is going from the moment it decides (`moving_to` in `info`:
others count it there already), fetches and loads the new blocks while still serving the old ones, then hands
the new runner to the server, which switches once its open sessions have ended.

What others say of themselves is not taken on trust: each peer's rate counts for at most TRUST_MARGIN times
what this peer measures of it (one decode step through its span, timed), and a peer that does not run the step
counts for nothing (its blocks may then look uncovered, and someone moves there).

Runs on the thread that owns the peer's TorrentNode (the fetch of new chunks needs it).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from swarm.client.routing import TIMEOUT, PeerFailure, PeerInfo, peers_for_model
from swarm.client.session import ComputeClient, probe_rate, query_peers
from swarm.discovery.compute import find_compute_peers
from swarm.errors import SwarmError
from swarm.manifest import Manifest
from swarm.measure import trusted_rate
from swarm.peer.rebalance import Coverage, ServedSpan, better_span
from swarm.peer.server import PeerServer
from swarm.wire import DTYPES

log = logging.getLogger("swarm.peer")

# Seconds to look the model's peers up in the DHT, and for each to answer `info` and a probe step.
LOOKUP_SECONDS = 3.0
ANSWER_SECONDS = 3.0
# Before acting on a decision, a peer says where it is going, waits up to this long and looks again: two peers that
# decided at the same moment would otherwise both move to the same gap.
SECOND_LOOK_SECONDS = 2.0

Emit = Callable[[dict[str, Any]], None]
Move = tuple[int, int] | None


@dataclass(frozen=True)
class SurveyedPeer:
    """Another peer of the model as a look at the swarm found it, with the rate we trust it at."""

    info: PeerInfo
    rate: float

    def span(self, num_blocks: int, at_blocks: bool = False) -> ServedSpan:
        """Where it counts: every block for a replica, else where it is going (or, `at_blocks`, where it is)."""
        if self.info.replica:
            return ServedSpan(0, num_blocks, self.rate)
        start, end = self.info.blocks if at_blocks else self.info.moving_to or self.info.blocks
        return ServedSpan(start, end, self.rate)


# Fetches and loads blocks [start, end); returns the runner and its measured throughput.
Loader = Callable[[tuple[int, int]], tuple[Any, float]]


@dataclass
class Healer:
    manifest: Manifest
    server: PeerServer
    load: Loader
    interval: float
    find_peers: Callable[[], list[str]]
    emit: Emit
    random_source: random.Random

    def __post_init__(self) -> None:
        self.next_look = time.monotonic() + self._pause()
        # Rates measured of other peers, by peer id: kept for a peer too busy to run the probe next time.
        self.measured: dict[str, float] = {}
        # A move handed to the server, waiting for its open sessions to end: (from, to, throughput).
        self.handed_over: tuple[tuple[int, int], tuple[int, int], float] | None = None
        # The peers the last look found, by address.
        self.seen: dict[str, SurveyedPeer] = {}

    def _pause(self) -> float:
        return self.interval * self.random_source.uniform(0.5, 1.5)

    def tick(self) -> None:
        """Look at the swarm when due; move when the policy says so (blocking while the new blocks load)."""
        if self.handed_over is not None and self.server.moved.is_set():
            previous, moved_to, throughput = self.handed_over
            self.handed_over = None
            self.emit({"event": "moved", "from": list(previous), "blocks": list(moved_to), "throughput": throughput})
        if time.monotonic() < self.next_look or self.server.planned_blocks is not None:
            return
        self.next_look = time.monotonic() + self._pause()
        try:
            target = self.decide(self.look())
            if target is not None and self.confirm(target):
                self.move(target)
        except SwarmError as error:
            self.server.planned_blocks = None
            log.warning("rebalancing: %s", error)

    def confirm(self, target: tuple[int, int]) -> bool:
        """Say where we are going (others count us there from now), wait a random moment, look again. Peers that
        decided the same at the same moment see each other's `moving_to`: the one with the smallest peer id goes,
        the others stay."""
        self.server.planned_blocks = target
        time.sleep(self.random_source.uniform(0, SECOND_LOOK_SECONDS))
        peers = self.look()
        rivals = {peer.info.peer_id for peer in peers if peer.info.moving_to == target}
        if any(rival < self.server.peer_id for rival in rivals) or self.decide(peers, rivals) != target:
            self.server.planned_blocks = None
            return False
        return True

    def decide(self, peers: list[SurveyedPeer], at_their_blocks: set[str] | frozenset[str] = frozenset()) -> Move:
        """The policy's answer for the swarm as `peers` shows it: each counted where it is going, except the peers
        named in `at_their_blocks`, counted where they are."""
        runner = self.server.runner
        own = ServedSpan(runner.start, runner.end, self.server.throughput)
        others = [peer.span(self.manifest.num_blocks, at_blocks=peer.info.peer_id in at_their_blocks) for peer in peers]
        return better_span(own, Coverage.of(self.manifest.num_blocks, [*others, own]))

    def look(self) -> list[SurveyedPeer]:
        """The other peers of the model, with the rate we trust each at. A peer too slow to answer this time but
        still connected (a busy machine answers ZeroMQ heartbeats) counts as it did last time: treating it as gone
        would move peers onto blocks it still serves."""
        with ComputeClient(timeout=ANSWER_SECONDS) as client:
            infos = query_peers(client, self.find_peers(), ANSWER_SECONDS)
            slow = [self.seen[address] for address, info in infos.items() if _slow(info) and address in self.seen]
            answered = _distinct(peers_for_model(self.manifest, infos, pinned=False), self.server.peer_id)
            peers = [SurveyedPeer(peer, self._trusted_rate(client, peer)) for peer in answered]
        ids = {peer.info.peer_id for peer in peers}
        peers += [peer for peer in slow if peer.info.peer_id not in ids]
        self.seen = {peer.info.address: peer for peer in peers}
        return peers

    def _trusted_rate(self, client: ComputeClient, peer: PeerInfo) -> float:
        if peer.replica:
            return peer.throughput  # whole replicas serve every block; probing them needs token ids, not hidden states
        dtype = DTYPES.get(peer.dtype, torch.float32)
        measured = probe_rate(client, peer, {"hidden": torch.zeros(1, 1, self.server.runner.hidden_size, dtype=dtype)})
        if measured is not None:
            self.measured[peer.peer_id] = measured
        return trusted_rate(peer.throughput, measured, self.measured.get(peer.peer_id), busy=peer.free_sessions == 0)

    def move(self, target: tuple[int, int]) -> None:
        """Fetch and load the target (serving the old blocks meanwhile), hand it to the server."""
        runner = self.server.runner
        previous = (runner.start, runner.end)
        self.server.planned_blocks = target
        self.emit({"event": "moving", "from": list(previous), "blocks": list(target)})
        new_runner, throughput = self.load(target)
        self.server.move_to(new_runner, throughput)
        self.handed_over = (previous, target, throughput)


def _slow(info: PeerInfo | SwarmError) -> bool:
    """The peer did not answer in time, though nothing says it is gone (refused, reset, heartbeats unanswered)."""
    return isinstance(info, PeerFailure) and info.code == TIMEOUT


def _distinct(peers: list[PeerInfo], own_id: str) -> list[PeerInfo]:
    """One entry per peer (a peer may be announced at several addresses), this peer left out."""
    seen: dict[str, PeerInfo] = {}
    for peer in peers:
        key = peer.peer_id or peer.address
        if key != own_id and key not in seen:
            seen[key] = peer
    return list(seen.values())


def dht_peer_finder(node: Any, manifest: Manifest) -> Callable[[], list[str]]:
    """The compute addresses the DHT knows for the model, as a callable for the Healer."""

    def find() -> list[str]:
        return [address.tcp for address in find_compute_peers(node, manifest, LOOKUP_SECONDS)]

    return find
