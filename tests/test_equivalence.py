"""The swarm computes what transformers computes: real `swarm join` peers, real sockets, tiny models.

For every family the client's greedy tokens through 2-3 peers equal transformers' `generate` on the same model
directory, and the logits after the prompt and at the last step agree within LOGITS_ATOL (float32; only the
order of floating-point operations differs). BERT's pooled embedding through two peers equals the encoder's
mean-pooled last hidden state within EMBEDDING_ATOL. A replica peer (all blocks) and a model without a block
adapter (OPT, one `full` chunk served whole) go through the same client code.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, OPTConfig, OPTForCausalLM

from swarm.client.generate import Generation, SamplingParams
from swarm.client.run import SwarmClient
from swarm.config import Settings
from swarm.publish import publish
from swarm.wire import Hop
from tests.conftest import SWARM
from tests.peer_harness import PeerProcess, peer_environment, start_peers

PROMPT = "Beautiful is better than ugly. Explicit is"
NEW_TOKENS = 12
# float32 logits of chained spans vs one forward pass of the whole model.
LOGITS_ATOL = 1e-4
EMBEDDING_ATOL = 1e-5
GREEDY = SamplingParams()


@dataclass(frozen=True)
class Case:
    model: str  # the published name (a model_dirs family, or "opt")
    # One `swarm join` per span; None lets the peer choose (a whole replica of a `full`-chunk model).
    spans: tuple[tuple[int, int] | None, ...]
    # A peer hosting every block, started besides the chain: the planner then prefers it (one hop).
    replica: bool = False


CASES = {
    "llama": Case("llama", ((0, 1), (1, 3)), replica=True),
    "mistral": Case("mistral", ((0, 2), (2, 3))),
    "mixtral": Case("mixtral", ((0, 1), (1, 3))),
    "qwen2": Case("qwen2", ((0, 2), (2, 3))),
    "gpt2": Case("gpt2", ((0, 1), (1, 2), (2, 3))),
    "bert": Case("bert", ((0, 1), (1, 3))),
    "opt-full": Case("opt", (None,)),
}


def make_opt(directory: Path, tokenizer_source: Path) -> Path:
    """A tiny OPTForCausalLM (an architecture without a block adapter) with the Llama test tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    config = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        word_embed_proj_dim=32,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=4,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = OPTForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def published(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """One SWARM_HOME with every test model published in it (as `swarm seed --prepare-only` does)."""
    root = tmp_path_factory.mktemp("equivalence")
    sources = dict(model_dirs)
    sources["opt"] = make_opt(root / "opt", model_dirs["llama"])
    settings = Settings(home=root / "home")
    for name, directory in sources.items():
        publish(str(directory), name, settings)
    return root / "home", sources


@dataclass
class Served:
    case: Case
    home: Path
    model_dir: Path
    chain: list[PeerProcess]
    replica: PeerProcess | None
    client: SwarmClient

    @property
    def chain_route(self) -> list[Hop]:
        return [Hop(peer.address, span or (0, 1)) for peer, span in zip(self.chain, self.case.spans, strict=True)]


def join_arguments(case: Case) -> list[list[str]]:
    spans = [*case.spans, (0, 3)] if case.replica else case.spans
    return [["--model", case.model, *(["--blocks", f"{span[0]}:{span[1]}"] if span else [])] for span in spans]


@pytest.fixture(scope="module", params=list(CASES))
def served(request: pytest.FixtureRequest, published: tuple[Path, dict[str, Path]]) -> Iterator[Served]:
    """One case's peers (real `swarm join` processes, started at once) and a client connected to them."""
    home, sources = published
    case = CASES[request.param]
    environment = peer_environment(os.environ, home=home)
    peers = start_peers(join_arguments(case), environment, home.parent / "logs")
    try:
        client = SwarmClient.connect(case.model, Settings(home=home), [peer.address for peer in peers])
        chain, replica = (peers[:-1], peers[-1]) if case.replica else (peers, None)
        try:
            yield Served(case, home, sources[case.model], chain, replica, client)
        finally:
            client.close()
    finally:
        for peer in peers:
            if peer.process.poll() is None:
                peer.process.terminate()  # all at once: each takes a moment to shut down
        for peer in peers:
            peer.stop()


def test_swarm_matches_transformers(served: Served) -> None:
    if served.case.model == "bert":
        check_embedding(served)
        return
    result = served.client.generate(PROMPT, NEW_TOKENS, GREEDY, route=served.chain_route)
    check_generation(served, result.generation)


@pytest.mark.parametrize("served", ["llama"], indirect=True)
def test_replica_peer_is_one_hop_and_matches(served: Served) -> None:
    assert served.replica is not None
    # Without a pinned route the planner picks the peer that hosts every block: one hop instead of two.
    result = served.client.generate(PROMPT, NEW_TOKENS, GREEDY)
    assert [(hop.address, hop.blocks) for hop in result.route] == [(served.replica.address, (0, 3))]
    check_generation(served, result.generation)


def check_generation(served: Served, generation: Generation) -> None:
    model = AutoModelForCausalLM.from_pretrained(served.model_dir).eval()
    prompt = torch.tensor([generation.prompt_ids])
    with torch.no_grad():
        expected = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=NEW_TOKENS
        )
        expected_tokens = expected[0, prompt.shape[1] :].tolist()
        assert generation.token_ids == expected_tokens
        # Logits after the prompt, and at the last step (the whole sequence but the last token, in one pass).
        assert generation.prefill_logits is not None and generation.last_logits is not None
        torch.testing.assert_close(generation.prefill_logits, model(prompt).logits[0, -1], atol=LOGITS_ATOL, rtol=0)
        last_input = expected[:, :-1]
        torch.testing.assert_close(generation.last_logits, model(last_input).logits[0, -1], atol=LOGITS_ATOL, rtol=0)
    assert generation.text == served.client.parts.tokenizer.decode(expected_tokens, skip_special_tokens=True)


def check_embedding(served: Served) -> None:
    result = served.client.embed(PROMPT)
    assert result.route == served.chain_route
    tokenizer = AutoTokenizer.from_pretrained(served.model_dir)
    model = AutoModel.from_pretrained(served.model_dir).eval()
    encoded = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    expected = (hidden * mask).sum(dim=1)[0] / mask.sum()
    torch.testing.assert_close(torch.tensor(result.embedding), expected, atol=EMBEDDING_ATOL, rtol=0)


def swarm_run(served: Served, *arguments: str) -> subprocess.Popen[str]:
    environment = peer_environment(os.environ, home=served.home)
    route = ",".join(peer.address for peer in served.chain)
    command = [SWARM, "run", "--model", served.case.model, "--route", route, *arguments]
    return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("served", ["llama"], indirect=True)
def test_cli_streams_and_prints_json(served: Served) -> None:
    """`swarm run` gives the library's tokens: streamed as text, and as one JSON object (both run at once)."""
    reference = served.client.generate(PROMPT, NEW_TOKENS, GREEDY, route=served.chain_route).generation
    arguments = ["--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS)]
    runs = [swarm_run(served, *arguments), swarm_run(served, *arguments, "--json")]
    (streamed, _), (printed, _) = outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [errors for _, errors in outputs]
    assert streamed == reference.text + "\n"
    record = json.loads(printed)
    assert record["tokens"] == reference.token_ids
    assert record["text"] == reference.text
    assert record["route"] == [{"address": hop.address, "blocks": list(hop.blocks)} for hop in served.chain_route]
    timings = record["timings"]
    assert timings["prefill_seconds"] > 0 and len(timings["token_seconds"]) == len(record["tokens"]) - 1
    assert timings["median_token_seconds"] > 0


@pytest.mark.parametrize("served", ["bert"], indirect=True)
def test_cli_embeds(served: Served) -> None:
    run = swarm_run(served, "--embed", PROMPT, "--json")
    output, errors = run.communicate(timeout=120)
    assert run.returncode == 0, errors
    vector = json.loads(output)["embedding"]
    expected = served.client.embed(PROMPT).embedding
    assert len(vector) == len(expected) == 64
    torch.testing.assert_close(torch.tensor(vector), torch.tensor(expected), atol=1e-6, rtol=0)
