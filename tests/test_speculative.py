"""Speculative decoding: the acceptance rules and the choice of k (tables, and a statistical test of speculative
sampling), the loop against a local transformers model, and `swarm run --draft` through real peers (a chain of
spans and a replica), whose tokens equal local `generate`."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from swarm.client.draft import DraftModel
from swarm.client.generate import SamplingParams, generate
from swarm.client.speculative import (
    MAX_DRAFT_LENGTH,
    MIN_DRAFT_LENGTH,
    accepted_greedy,
    accepted_sampled,
    generate_speculative,
    next_draft_length,
)
from tests.conftest import SWARM
from tests.peer_harness import PeerProcess, local_greedy_tokens, peer_environment, published_llama, start_peers
from tests.test_serve import start_server

PROMPT = "Now is better than never."
NEW_TOKENS = 24


@pytest.mark.parametrize(
    ("drafted", "choices", "kept"),
    [
        ([], [5], 0),
        ([5, 6, 7], [5, 6, 7, 8], 3),  # all kept; the bonus token is choices[3]
        ([5, 6, 7], [5, 9, 7, 8], 1),  # the first mismatch ends it, even if later ones match
        ([5, 6, 7], [4, 6, 7, 8], 0),
    ],
)
def test_greedy_keeps_drafted_tokens_while_they_are_the_targets_choice(
    drafted: list[int], choices: list[int], kept: int
) -> None:
    assert accepted_greedy(drafted, choices) == kept


@pytest.mark.parametrize(
    ("current", "drafted", "kept", "after"),
    [
        (4, 4, 4, 5),
        (MAX_DRAFT_LENGTH, MAX_DRAFT_LENGTH, MAX_DRAFT_LENGTH, MAX_DRAFT_LENGTH),
        (4, 4, 2, 4),
        (4, 4, 1, 3),
        (MIN_DRAFT_LENGTH, 1, 0, MIN_DRAFT_LENGTH),
        (4, 0, 0, 4),  # nothing drafted (the last token): no evidence either way
    ],
)
def test_the_draft_length_follows_acceptance(current: int, drafted: int, kept: int, after: int) -> None:
    assert next_draft_length(current, drafted, kept) == after


def _chi_square(counts: Counter[int], expected: torch.Tensor, total: int) -> float:
    return sum((counts.get(token, 0) - total * float(p)) ** 2 / (total * float(p)) for token, p in enumerate(expected))


def test_speculative_sampling_emits_the_targets_distribution() -> None:
    """Draft q and target p differ a lot; every emitted token, kept or drawn after a refusal, follows p."""
    target = torch.tensor([0.5, 0.3, 0.15, 0.05])
    draft = torch.tensor([0.1, 0.2, 0.3, 0.4])
    generator = torch.Generator().manual_seed(7)
    first: Counter[int] = Counter()
    second: Counter[int] = Counter()
    trials = 20000
    for _ in range(trials):
        drafted = [int(token) for token in torch.multinomial(draft, 2, replacement=True, generator=generator)]
        kept, following = accepted_sampled(drafted, draft.expand(2, -1), target.expand(3, -1), generator)
        emitted = [*drafted[:kept], following]
        first[emitted[0]] += 1
        if len(emitted) > 1:
            second[emitted[1]] += 1
    # Critical value of chi-square with 3 degrees of freedom at p = 0.001: 16.27.
    assert _chi_square(first, target, trials) < 16.27
    assert _chi_square(second, target, sum(second.values())) < 16.27
    # The control: the draft's own distribution is far outside that bound, so the test can tell them apart.
    assert _chi_square(Counter({t: int(trials * float(p)) for t, p in enumerate(draft)}), target, trials) > 1000


class LocalTarget:
    """A local model as the target, with speculative decoding's contract: logits of every new position, and a
    start before the cache's end takes the later tokens back."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache = DynamicCache(config=model.config)
        self.cached = 0
        self.steps = 0

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        assert start <= self.cached
        if start < self.cached:
            self.cache.crop(start - self.cached)
        positions = torch.arange(start, start + ids.shape[1]).unsqueeze(0)
        output = self.model(input_ids=ids, position_ids=positions, cache=self.cache, use_cache=True)
        self.cached, self.steps = start + ids.shape[1], self.steps + 1
        return output.logits.float()


@pytest.fixture(scope="module")
def models(make_model_tool: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("speculative")
    return {
        "target": make_model_tool.make_model("llama", root / "target", layers=4, seed=31, log=lambda _line: None),
        "draft": make_model_tool.make_model("llama", root / "draft", layers=1, seed=32, log=lambda _line: None),
    }


@pytest.mark.parametrize("draft_name", ["target", "draft"])
def test_greedy_speculation_gives_plain_greedys_tokens(models: dict[str, Path], draft_name: str) -> None:
    """With the target as its own draft every drafted token is kept; with another model most are refused and taken
    back. Either way the tokens are plain greedy decoding's."""
    model = AutoModelForCausalLM.from_pretrained(models["target"]).eval()
    ids = AutoTokenizer.from_pretrained(models["target"])(PROMPT)["input_ids"]
    plain_target = LocalTarget(model)
    plain = generate(lambda new, start: plain_target(new, start)[:, -1], ids, NEW_TOKENS, SamplingParams())
    target = LocalTarget(model)
    draft = DraftModel.load(str(models[draft_name]), model.config.vocab_size)
    result, stats = generate_speculative(target, draft, ids, NEW_TOKENS, SamplingParams())
    assert result.token_ids == plain.token_ids
    if draft_name == "target":
        assert stats.kept == stats.drafted > NEW_TOKENS // 2 and target.steps < plain_target.steps // 2
    else:
        assert stats.kept < stats.drafted  # refusals happened, and were rolled back


def test_a_draft_with_another_vocabulary_is_refused(models: dict[str, Path]) -> None:
    with pytest.raises(Exception, match="share the model's tokenizer"):
        DraftModel.load(str(models["draft"]), 7)


@pytest.fixture(scope="module")
def served(make_model_tool: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A published Llama served by a chain of two span peers and by a replica peer."""
    root = tmp_path_factory.mktemp("speculative-peers")
    model_dir, environment = published_llama(make_model_tool, root, "spec", seed=33)
    draft_dir = make_model_tool.make_model("llama", root / "draft", layers=1, seed=34, log=lambda _line: None)
    peers: list[PeerProcess] = start_peers(
        [["--model", "spec", "--blocks", "0:2"], ["--model", "spec", "--blocks", "2:4"], ["--model", "spec"]],
        environment,
        root / "logs",
    )
    try:
        yield {"model_dir": model_dir, "draft": draft_dir, "environment": environment, "peers": peers}
    finally:
        for peer in peers:
            peer.stop()


@pytest.mark.parametrize(("route", "draft"), [("chain", "draft"), ("chain", "model"), ("replica", "draft")])
def test_swarm_run_with_a_draft_equals_local_generate(served: dict[str, Any], route: str, draft: str) -> None:
    chain, replica = served["peers"][:2], served["peers"][2]
    addresses = [peer.address for peer in (chain if route == "chain" else [replica])]
    draft_dir = served["model_dir"] if draft == "model" else served["draft"]
    arguments = ["--model", "spec", "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS)]
    done = subprocess.run(
        [SWARM, "run", *arguments, "--route", ",".join(addresses), "--draft", str(draft_dir), "--json"],
        env=peer_environment(os.environ, home=served["environment"]["SWARM_HOME"]), capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["tokens"] == local_greedy_tokens(served["model_dir"], PROMPT, NEW_TOKENS)
    speculation = record["speculation"]
    assert speculation["rounds"] < NEW_TOKENS and speculation["drafted"] > 0
    if draft == "model":
        assert speculation["accepted"] == speculation["drafted"]
    else:
        assert speculation["accepted"] < speculation["drafted"]


def test_sampling_with_a_draft_runs_through_the_swarm(served: dict[str, Any]) -> None:
    """Sampled tokens cannot be compared one by one (the rule's distribution is tested above); the run must work,
    repeat with its seed, and check drafted tokens."""
    route = ",".join(peer.address for peer in served["peers"][:2])
    arguments = ["--model", "spec", "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS), "--route", route]
    arguments += ["--temperature", "0.9", "--seed", "5", "--draft", str(served["draft"]), "--json"]
    environment = peer_environment(os.environ, home=served["environment"]["SWARM_HOME"])
    runs = [subprocess.run([SWARM, "run", *arguments], env=environment, capture_output=True, text=True, timeout=180)
            for _ in range(2)]  # fmt: skip
    assert all(run.returncode == 0 for run in runs), runs[0].stderr + runs[1].stderr
    first, second = (json.loads(run.stdout) for run in runs)
    assert first["tokens"] == second["tokens"] and len(first["tokens"]) >= 1
    assert first["speculation"]["drafted"] > 0


def test_swarm_serve_with_a_draft_answers_as_local_generate(served: dict[str, Any]) -> None:
    route = ",".join(peer.address for peer in served["peers"][:2])
    environment = peer_environment(os.environ, home=served["environment"]["SWARM_HOME"])
    server, address = start_server(["--model", "spec", "--route", route, "--draft", str(served["draft"])], environment)
    try:
        api = openai.OpenAI(base_url=f"{address}/v1", api_key="none", max_retries=0, timeout=120)
        completion = api.completions.create(model="spec", prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0)
    finally:
        server.stop()
    tokenizer = AutoTokenizer.from_pretrained(served["model_dir"])
    expected = local_greedy_tokens(served["model_dir"], PROMPT, NEW_TOKENS)
    assert completion.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)


def test_swarm_batch_with_a_draft_gives_local_generates_tokens(served: dict[str, Any], tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": PROMPT}) + "\n" for _ in range(3)))
    route = ",".join(peer.address for peer in served["peers"][:2])
    arguments = ["--model", "spec", "--input", str(prompts), "--output", str(tmp_path / "out.jsonl"), "--route", route]
    done = subprocess.run(
        [SWARM, "batch", *arguments, "--max-new-tokens", str(NEW_TOKENS), "--draft", str(served["draft"]), "--json"],
        env=peer_environment(os.environ, home=served["environment"]["SWARM_HOME"]), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    expected = local_greedy_tokens(served["model_dir"], PROMPT, NEW_TOKENS)
    assert [record["tokens"] for record in written] == [expected] * 3
    assert all(record["speculation"]["drafted"] > 0 for record in written)
