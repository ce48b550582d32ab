"""A generation survives the loss of its peer: the client plans a route around it and replays the tokens so far.

Three real `swarm join` peers serve a 3-block Llama: a replica R (all blocks, one session at most) and a chain
X (0..1) -> Y (2). The planner prefers R (one hop). When R is busy, or is killed mid-generation, the client moves
to X -> Y and the tokens are exactly those of an undisturbed run.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from swarm.client.generate import SamplingParams
from swarm.client.run import SwarmClient
from swarm.client.session import ComputeClient, InferenceSession
from swarm.config import Settings
from swarm.publish import publish
from swarm.wire import Hop
from tests.peer_harness import PeerProcess, peer_environment, start_peers

PROMPT = "Special cases aren't special enough to break the rules."
NEW_TOKENS = 12
# Short, so a dead peer is noticed quickly; far above a step's time on these tiny models.
TIMEOUT = 3.0


@dataclass
class Peers:
    home: Path
    replica: PeerProcess
    first: PeerProcess
    second: PeerProcess

    @property
    def chain(self) -> list[Hop]:
        return [Hop(self.first.address, (0, 2)), Hop(self.second.address, (2, 3))]

    def client(self) -> SwarmClient:
        addresses = [self.replica.address, self.first.address, self.second.address]
        return SwarmClient.connect("llama", Settings(home=self.home, request_timeout=TIMEOUT), addresses)


@pytest.fixture(scope="module")
def peers(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    home = tmp_path_factory.mktemp("failover") / "home"
    publish(str(model_dirs["llama"]), "llama", Settings(home=home))
    chain = start_peers(
        [["--model", "llama", "--blocks", "0:2"], ["--model", "llama", "--blocks", "2:3"]],
        peer_environment(os.environ, home=home),
        home / "logs",
    )
    started = list(chain)
    try:
        (replica,) = start_peers(
            [["--model", "llama", "--blocks", "0:3"]],
            peer_environment(os.environ, home=home, max_sessions=1),
            home / "logs",
        )
        started.append(replica)
        yield Peers(home, replica, chain[0], chain[1])
    finally:
        for peer in started:
            if peer.process.poll() is None:
                peer.stop()


@pytest.fixture(scope="module")
def reference(peers: Peers) -> list[int]:
    with peers.client() as client:
        return client.generate(PROMPT, NEW_TOKENS, SamplingParams(), route=peers.chain).generation.token_ids


def test_busy_replica_sends_the_request_to_the_chain(peers: Peers, reference: list[int]) -> None:
    with peers.client() as client, ComputeClient(timeout=TIMEOUT) as other:
        assert client.plan(spread=0) == [Hop(peers.replica.address, (0, 3))]
        # Another client holds the replica's only session.
        with InferenceSession(other, [Hop(peers.replica.address, (0, 3))], max_length=32):
            result = client.generate(PROMPT, NEW_TOKENS, SamplingParams())
    assert result.generation.token_ids == reference
    assert result.route == peers.chain
    assert [(record["peer"], record["code"]) for record in result.failovers] == [(peers.replica.address, "busy")]


def test_generation_survives_a_killed_peer(peers: Peers, reference: list[int]) -> None:
    killed: list[bool] = []

    def kill_replica_after_first_token(_piece: str) -> None:
        if not killed:
            peers.replica.process.send_signal(signal.SIGKILL)
            peers.replica.process.wait()
            killed.append(True)

    with peers.client() as client:
        result = client.generate(PROMPT, NEW_TOKENS, SamplingParams(), on_text=kill_replica_after_first_token)
    assert killed
    assert result.generation.token_ids == reference
    assert result.route == peers.chain
    assert [(record["peer"], record["code"]) for record in result.failovers] == [(peers.replica.address, "timeout")]
    assert f"peer {peers.replica.address}" in result.failovers[0]["error"]
