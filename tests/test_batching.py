"""Decode steps of different sessions run as one batch at a peer: eight sessions with prompts of different lengths
through two real span peers (of a Llama, or of a Mixtral: mixture of experts) or one whole-model replica (OPT), at
once, each get exactly the tokens they get alone (and local `generate`), and the peers' `info` says batches of more
than one step ran."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

from swarm.client.generate import SamplingParams
from swarm.client.run import RunResult, SwarmClient
from swarm.config import Settings
from swarm.wire import Kind
from tests.peer_harness import (
    SWARM,
    ComputeClient,
    PeerProcess,
    local_greedy_tokens,
    peer_environment,
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


def published_opt(make_model_tool: ModuleType, root: Path) -> tuple[Path, dict[str, str]]:
    """A tiny OPT (no block adapter: published as one `full` chunk and served by replicas) with the tokenizer and
    generation config of a generated Llama, published as "batched" into root/home."""
    llama = make_model_tool.make_model("llama", root / "llama", layers=1, seed=52, log=lambda _line: None)
    torch.manual_seed(53)
    config = OPTConfig(vocab_size=512, hidden_size=64, num_hidden_layers=3, ffn_dim=128, num_attention_heads=4,
                       max_position_embeddings=256, word_embed_proj_dim=64, bos_token_id=0, eos_token_id=1,
                       pad_token_id=2)  # fmt: skip
    model_dir = root / "opt"
    OPTForCausalLM(config).save_pretrained(model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(llama / name, model_dir / name)
    environment = peer_environment(os.environ, home=root / "home")
    subprocess.run([SWARM, "seed", str(model_dir), "--name", "batched", "--prepare-only"], env=environment,
                   check=True, capture_output=True)  # fmt: skip
    return model_dir, environment


@pytest.fixture(scope="module", params=["spans", "moe", "replica"])
def chain(
    request: pytest.FixtureRequest, make_model_tool: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("batching")
    if request.param in ("spans", "moe"):
        family = "mixtral" if request.param == "moe" else "llama"
        model_dir, environment = published_llama(make_model_tool, root, "batched", seed=51, family=family)
        commands = [["--model", "batched", "--blocks", "0:2"], ["--model", "batched", "--blocks", "2:4"]]
    else:
        model_dir, environment = published_opt(make_model_tool, root)
        commands = [["--model", "batched"]]
    peers: list[PeerProcess] = start_peers(commands, environment, root / "l")
    if request.param == "replica":
        assert peers[0].serving["replica"] is True
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


def all_at_once(count: int, work: Callable[[int], Any], timeout: float) -> list[Any]:
    """`work(index)` for every index in `count` threads released together; each result, or the exception it
    raised (reported by the caller, with the request it belongs to)."""
    results: list[Any] = [None] * count
    barrier = threading.Barrier(count)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work(index)
        except BaseException as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    return results


def test_concurrent_sessions_are_batched_and_get_their_own_tokens(chain: dict[str, Any]) -> None:
    addresses = [peer.address for peer in chain["peers"]]
    with SwarmClient.connect("batched", Settings(home=chain["home"]), addresses) as client:
        alone = [client.generate(prompt, NEW_TOKENS, SamplingParams()).generation.token_ids for prompt in PROMPTS]
        assert all(batching(address)["largest"] == 1 for address in addresses)  # one session at a time: no batch
        results = all_at_once(
            len(PROMPTS), lambda index: client.generate(PROMPTS[index], NEW_TOKENS, SamplingParams()), 300
        )
    together = []
    for index, result in enumerate(results):
        assert isinstance(result, RunResult), f"session {index} failed: {result!r}"
        together.append(result.generation.token_ids)
    assert together == alone
    assert alone == [local_greedy_tokens(chain["model_dir"], prompt, NEW_TOKENS) for prompt in PROMPTS]
    for address in addresses:
        counts = batching(address)
        assert counts["largest"] > 1 and counts["steps"] > 0, (address, counts)


TEXTS = [text.rstrip(",. ") for text in PROMPTS]


@pytest.fixture(scope="module")
def encoders(make_model_tool: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("batching-encoders")
    _model_dir, environment = published_llama(make_model_tool, root, "embedded", seed=54, family="bert")
    commands = [["--model", "embedded", "--blocks", "0:2"], ["--model", "embedded", "--blocks", "2:4"]]
    peers = start_peers(commands, environment, root / "l")
    try:
        yield {"home": Path(environment["SWARM_HOME"]), "peers": peers}
    finally:
        for peer in peers:
            peer.stop()


def test_concurrent_encoder_requests_are_batched_and_get_their_own_embeddings(encoders: dict[str, Any]) -> None:
    """Stateless requests of different lengths that reach a peer together run as one padded, masked forward."""
    addresses = [peer.address for peer in encoders["peers"]]
    with SwarmClient.connect("embedded", Settings(home=encoders["home"]), addresses) as client:
        alone = [client.embed(text).embedding for text in TEXTS]
        assert all(batching(address)["largest"] == 1 for address in addresses)
        # Requests start together but may still reach the first peer one by one: a few rounds make a batch sure.
        for _round in range(5):
            together = all_at_once(len(TEXTS), lambda index: client.embed(TEXTS[index]).embedding, 120)
            for index, embedding in enumerate(together):
                assert isinstance(embedding, list), f"request {index} failed: {embedding!r}"
                torch.testing.assert_close(torch.tensor(embedding), torch.tensor(alone[index]), atol=1e-5, rtol=1e-5)
            if any(batching(address)["largest"] > 1 for address in addresses):
                break
    assert any(batching(address)["largest"] > 1 for address in addresses), [batching(a) for a in addresses]
