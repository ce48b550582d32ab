"""Ensembles over real `swarm join` peers: two tiny Llamas with one tokenizer and different weights, each served
by its own peer, generate together exactly what transformers computes locally with both models: the float32 mean
of their last-position logits at every step (mean-logits), or their majority with ties going to the higher mean
logit (vote). Two BERTs' embeddings average to the mean of their local pooled states. `swarm run` refuses models
with different tokenizers or of different kinds, and a mismatch of --model and --ensemble, in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from swarm.client.ensemble import MEAN, MEAN_LOGITS, VOTE, EnsembleClient, _EnsembleSteps
from swarm.client.generate import SamplingParams
from swarm.client.run import SwarmClient
from swarm.config import Settings
from swarm.publish import publish
from tests.conftest import SWARM
from tests.peer_harness import PeerProcess, peer_environment, start_peers

PROMPT = "Beautiful is better than ugly. Explicit is"
NEW_TOKENS = 10
# float32 logits through a peer vs one local forward pass (only the order of operations differs).
LOGITS_ATOL = 1e-4
EMBEDDING_ATOL = 1e-5
GREEDY = SamplingParams()
# name → (family, weight seed, vocabulary); the Llamas (and the BERTs) differ only in their weights.
MODELS = {
    "ens-a": ("llama", 1, 512),
    "ens-b": ("llama", 2, 512),
    "ens-other": ("gpt2", 1, 384),
    "ens-bert-a": ("bert", 1, 512),
    "ens-bert-b": ("bert", 2, 512),
}
SERVED = ("ens-a", "ens-b", "ens-bert-a", "ens-bert-b")


@dataclass
class Swarm:
    home: Path
    dirs: dict[str, Path]
    peers: dict[str, PeerProcess]

    def route(self, *names: str) -> str:
        return ",".join(self.peers[name].address for name in names)

    def client(self, name: str) -> SwarmClient:
        return SwarmClient.connect(name, Settings(home=self.home), [self.peers[name].address])


def share_tokenizer(source: Path, target: Path) -> None:
    """Give `target` the tokenizer of `source`. tools/make_model.py trains the same tokenizer whatever the weight
    seed; copying keeps the test from depending on that."""
    for path in source.iterdir():
        if path.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copyfile(path, target / path.name)


@pytest.fixture(scope="module")
def swarm(make_model_tool: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    """The models published in one SWARM_HOME, and one peer (all blocks) per served model, started at once."""
    root = tmp_path_factory.mktemp("ensemble")
    dirs = {
        name: Path(
            make_model_tool.make_model(family, root / name, layers=2, seed=seed, vocab=vocab, log=lambda _: None)
        )
        for name, (family, seed, vocab) in MODELS.items()
    }
    share_tokenizer(dirs["ens-a"], dirs["ens-b"])
    share_tokenizer(dirs["ens-bert-a"], dirs["ens-bert-b"])
    settings = Settings(home=root / "home")
    for name, directory in dirs.items():
        publish(str(directory), name, settings)
    environment = peer_environment(os.environ, home=settings.home)
    started = start_peers([["--model", name, "--blocks", "0:2"] for name in SERVED], environment, root / "logs")
    try:
        yield Swarm(settings.home, dirs, dict(zip(SERVED, started, strict=True)))
    finally:
        for peer in started:
            if peer.process.poll() is None:
                peer.process.terminate()  # all at once: each takes a moment to shut down
        for peer in started:
            peer.stop()


@pytest.fixture(scope="module")
def pair(swarm: Swarm) -> Iterator[list[SwarmClient]]:
    clients = [swarm.client("ens-a"), swarm.client("ens-b")]
    yield clients
    for client in clients:
        client.close()


@dataclass
class Reference:
    tokens: list[int]
    # Per step: each model's float32 last-position logits, and their mean.
    logits: list[list[torch.Tensor]]
    means: list[torch.Tensor]
    # Steps at which the models' own argmaxes differed.
    disagreements: int


def local_reference(swarm: Swarm, prompt_ids: Sequence[int], policy: str) -> Reference:
    """Greedy generation with both Llamas loaded by transformers: a whole forward pass of each per step."""
    models = [AutoModelForCausalLM.from_pretrained(swarm.dirs[name]).eval() for name in ("ens-a", "ens-b")]
    eos = {int(models[0].generation_config.eos_token_id)}
    ids = list(prompt_ids)
    reference = Reference([], [], [], 0)
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = [model(torch.tensor([ids])).logits[0, -1].float() for model in models]
            mean = (logits[0] + logits[1]) / 2
            choices = [int(item.argmax()) for item in logits]
            reference.disagreements += choices[0] != choices[1]
            if policy == MEAN_LOGITS:
                token = int(mean.argmax())
            else:
                token = max(set(choices), key=lambda choice: (float(mean[choice]), -choice))
            reference.logits.append(logits)
            reference.means.append(mean)
            reference.tokens.append(token)
            ids.append(token)
            if token in eos:
                break
    return reference


def test_each_step_averages_the_local_logits(swarm: Swarm, pair: list[SwarmClient]) -> None:
    """Step by step, through each model's own peer at once: every model's logits, and their mean, equal the
    local models' within LOGITS_ATOL; greedy generation gives the reference's tokens."""
    prompt_ids = pair[0].encode(PROMPT)
    reference = local_reference(swarm, prompt_ids, MEAN_LOGITS)
    steps = _EnsembleSteps(pair, len(prompt_ids) + NEW_TOKENS)
    try:
        fed, start = prompt_ids, 0
        for step, token in enumerate(reference.tokens):
            mean = steps(torch.tensor([fed]), start)
            assert steps.stacked is not None
            for own, expected in zip(steps.stacked, reference.logits[step], strict=True):
                torch.testing.assert_close(own[0], expected, atol=LOGITS_ATOL, rtol=0)
            torch.testing.assert_close(mean[0], reference.means[step], atol=LOGITS_ATOL, rtol=0)
            fed, start = [token], start + len(fed)
    finally:
        steps.close()
    result = EnsembleClient(pair, MEAN_LOGITS).generate(PROMPT, NEW_TOKENS, GREEDY)
    assert result.generation.token_ids == reference.tokens
    assert result.generation.prefill_logits is not None and result.generation.last_logits is not None
    torch.testing.assert_close(result.generation.prefill_logits, reference.means[0], atol=LOGITS_ATOL, rtol=0)
    torch.testing.assert_close(result.generation.last_logits, reference.means[-1], atol=LOGITS_ATOL, rtol=0)


def test_vote_equals_the_local_vote(swarm: Swarm, pair: list[SwarmClient]) -> None:
    reference = local_reference(swarm, pair[0].encode(PROMPT), VOTE)
    # The models disagree on some steps, so the tie-break by the mean logits decides there.
    assert reference.disagreements > 0
    ensemble = EnsembleClient(pair, VOTE)
    assert ensemble.generate(PROMPT, NEW_TOKENS, GREEDY).generation.token_ids == reference.tokens
    # Sampling: each model draws with a generator derived from the seed, so a seed repeats its tokens.
    sampling = SamplingParams(temperature=0.9, top_k=20, seed=11)
    runs = [ensemble.generate(PROMPT, NEW_TOKENS, sampling, ban_eos=True).generation.token_ids for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == NEW_TOKENS


def swarm_run(swarm: Swarm, *arguments: str) -> subprocess.Popen[str]:
    environment = peer_environment(os.environ, home=swarm.home)
    return subprocess.Popen(
        [SWARM, "run", *arguments], env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(runs: list[subprocess.Popen[str]]) -> list[tuple[int, str, str]]:
    outputs = [run.communicate(timeout=120) for run in runs]
    return [(run.returncode, output, errors) for run, (output, errors) in zip(runs, outputs, strict=True)]


def test_cli_mean_logits_and_vote(swarm: Swarm) -> None:
    """`swarm run --model A,B --ensemble ...` as a user types it: JSON for both policies, and streamed text (all
    three runs at once)."""
    arguments = ["--model", "ens-a,ens-b", "--route", swarm.route("ens-a", "ens-b"), "--prompt", PROMPT]
    arguments += ["--max-new-tokens", str(NEW_TOKENS)]
    runs = [swarm_run(swarm, *arguments, "--ensemble", policy, "--json") for policy in (MEAN_LOGITS, VOTE)]
    finished = finish([*runs, swarm_run(swarm, *arguments, "--ensemble", MEAN_LOGITS)])
    assert [code for code, _, _ in finished] == [0, 0, 0], [errors for _, _, errors in finished]
    tokenizer = AutoTokenizer.from_pretrained(swarm.dirs["ens-a"])
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    references = {policy: local_reference(swarm, prompt_ids, policy).tokens for policy in (MEAN_LOGITS, VOTE)}
    routes = {name: [{"address": swarm.peers[name].address, "blocks": [0, 2]}] for name in ("ens-a", "ens-b")}
    for policy, (_, output, _) in zip((MEAN_LOGITS, VOTE), finished[:2], strict=True):
        record = json.loads(output)
        assert record["tokens"] == references[policy]
        assert record["text"] == tokenizer.decode(references[policy], skip_special_tokens=True)
        assert record["ensemble"] == policy and record["prompt_tokens"] == len(prompt_ids)
        assert record["models"] == [{"model": name, "route": routes[name], "failovers": []} for name in routes]
        assert record["route"] == routes["ens-a"] + routes["ens-b"]
    assert finished[2][1] == json.loads(finished[0][1])["text"] + "\n"


def local_embedding(directory: Path) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory).eval()
    encoded = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(dim=1)[0] / mask.sum()


def test_embeddings_average_and_refusals(swarm: Swarm) -> None:
    """`--ensemble mean --embed` averages the encoders' pooled embeddings; mismatches are refused in one line
    (all runs at once)."""
    expected = (local_embedding(swarm.dirs["ens-bert-a"]) + local_embedding(swarm.dirs["ens-bert-b"])) / 2
    bert_route = swarm.route("ens-bert-a", "ens-bert-b")
    embed = ["--model", "ens-bert-a,ens-bert-b", "--route", bert_route, "--ensemble", MEAN, "--embed", PROMPT]
    # One-line error → the --model and --ensemble flags (each run also gets --prompt).
    refusals = {
        "ens-a and ens-other have different tokenizers (vocabularies of 512 and 384 tokens): an ensemble's models "
        "must share one": "ens-a,ens-other --ensemble vote",
        "ens-a is a causal language model but ens-bert-a is an encoder: an ensemble's models must be of one kind": (
            "ens-a,ens-bert-a --ensemble mean-logits"
        ),
        "--ensemble vote needs several models: give --model A,B,...": "ens-a --ensemble vote",
        "--model names 2 models (ens-a, ens-b): say how to combine them with --ensemble mean-logits or vote": (
            "ens-a,ens-b"
        ),
    }
    refused = [swarm_run(swarm, "--model", *flags.split(), "--prompt", PROMPT) for flags in refusals.values()]
    finished = finish([swarm_run(swarm, *embed, "--json"), *refused])
    code, output, errors = finished[0]
    assert code == 0, errors
    record = json.loads(output)
    torch.testing.assert_close(torch.tensor(record["embedding"]), expected, atol=EMBEDDING_ATOL, rtol=0)
    assert [model["model"] for model in record["models"]] == ["ens-bert-a", "ens-bert-b"]
    for message, (code, output, errors) in zip(refusals, finished[1:], strict=True):
        assert (code, output, errors) == (1, "", f"error: {message}\n")


def test_swarm_serve_answers_as_the_ensemble(swarm: Swarm) -> None:
    """`swarm serve --model A,B --ensemble mean-logits` serves one model, A+B, whose greedy completion is the local
    mean-logits reference."""
    import openai

    from tests.test_dht import LineProcess

    route = swarm.route("ens-a", "ens-b")
    command = [SWARM, "serve", "--model", "ens-a,ens-b", "--ensemble", MEAN_LOGITS, "--route", route]
    server = LineProcess([*command, "--listen", "127.0.0.1:0", "--json"], peer_environment(os.environ, home=swarm.home))
    try:
        address = server.wait_event("serving", 120)["address"]
        client = openai.OpenAI(base_url=f"{address}/v1", api_key="none", max_retries=0, timeout=120)
        assert [model.id for model in client.models.list()] == ["ens-a+ens-b"]
        answer = client.completions.create(model="ens-a+ens-b", prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0)
    finally:
        server.stop()
    tokenizer = AutoTokenizer.from_pretrained(swarm.dirs["ens-a"])
    expected = local_reference(swarm, tokenizer(PROMPT)["input_ids"], MEAN_LOGITS).tokens
    assert answer.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)
    assert answer.usage is not None and answer.usage.completion_tokens == len(expected)
