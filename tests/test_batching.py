"""Decode steps of different sessions run as one batch at a peer: eight sessions with prompts of different lengths
through two real peers at once each get exactly the tokens they get alone (and local `generate`), and the peers'
`info` says batches of more than one step ran."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from swarm.client.generate import SamplingParams
from swarm.client.run import RunResult, SwarmClient
from swarm.config import Settings
from swarm.wire import Kind
from tests.peer_harness import (
    ComputeClient,
    PeerProcess,
    local_greedy_tokens,
    published_llama,
    request,
    start_peers,
)

PROMPTS = [
    "Flat",
    "Beautiful is better than ugly.",
    "Explicit is better than implicit. Simple is better than complex.",
    "Sparse",
    "Readability counts. Special cases are not special enough to break the rules.",
    "Errors should never pass silently, unless",
    "In the face of ambiguity, refuse the temptation to guess.",
    "Now is better than never. Although never is often better than right now, and",
]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def chain(make_model_tool: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("batching")
    model_dir, environment = published_llama(make_model_tool, root, "batched", seed=51)
    peers: list[PeerProcess] = start_peers(
        [["--model", "batched", "--blocks", "0:2"], ["--model", "batched", "--blocks", "2:4"]], environment, root / "l"
    )
    try:
        yield {"model_dir": model_dir, "home": Path(environment["SWARM_HOME"]), "peers": peers}
    finally:
        for peer in peers:
            peer.stop()


def batching(address: str) -> dict[str, int]:
    client = ComputeClient()
    try:
        client.send(address, request(Kind.INFO))
        return dict(client.receive_direct(address).header.body["batching"])
    finally:
        client.close()


def test_concurrent_sessions_are_batched_and_get_their_own_tokens(chain: dict[str, Any]) -> None:
    addresses = [peer.address for peer in chain["peers"]]
    with SwarmClient.connect("batched", Settings(home=chain["home"]), addresses) as client:
        alone = [client.generate(prompt, NEW_TOKENS, SamplingParams()).generation.token_ids for prompt in PROMPTS]
        assert all(batching(address)["largest"] == 1 for address in addresses)  # one session at a time: no batch
        results: list[RunResult | BaseException | None] = [None] * len(PROMPTS)
        barrier = threading.Barrier(len(PROMPTS))

        def run(index: int) -> None:
            barrier.wait()
            try:
                results[index] = client.generate(PROMPTS[index], NEW_TOKENS, SamplingParams())
            except BaseException as error:  # reported below, with the session it belongs to
                results[index] = error

        threads = [threading.Thread(target=run, args=(index,)) for index in range(len(PROMPTS))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    together = []
    for index, result in enumerate(results):
        assert isinstance(result, RunResult), f"session {index} failed: {result!r}"
        together.append(result.generation.token_ids)
    assert together == alone
    assert alone == [local_greedy_tokens(chain["model_dir"], prompt, NEW_TOKENS) for prompt in PROMPTS]
    for address in addresses:
        counts = batching(address)
        assert counts["largest"] > 1 and counts["steps"] > 0, (address, counts)
