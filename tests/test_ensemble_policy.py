"""The ensemble's rules as tables: the mean of logits, the vote and its tie-break, which flags and models make an
ensemble; and the ensemble's generation loop over fake models (no peers, no processes)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from swarm.client.ensemble import (
    MEAN_LOGITS,
    VOTE,
    EnsembleClient,
    check_members,
    derive_seed,
    mean_embedding,
    mean_logits,
    stack_logits,
    tokenizer_difference,
    vote,
    vote_generators,
    vote_tokens,
)
from swarm.client.generate import SamplingParams, make_generator, next_tokens
from swarm.client.resolve import check_one_kind, check_policy, model_references
from swarm.client.routing import PeerFailure
from swarm.errors import SwarmError

GREEDY = SamplingParams()


def logits(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# ----- mean of logits -----


@pytest.mark.parametrize(
    ("models", "expected"),
    [
        ([logits([1.0, 2.0, 3.0]), logits([3.0, 2.0, 1.0])], logits([2.0, 2.0, 2.0])),
        ([logits([0.0, -4.0]), logits([2.0, 4.0]), logits([1.0, 3.0])], logits([1.0, 1.0])),
        # Wider vocabularies (padded embedding matrices) are cut to the narrowest.
        ([logits([1.0, 1.0, 9.0]), logits([3.0, 5.0])], logits([2.0, 3.0])),
        # Half precision in, float32 out.
        ([logits([1.5, 2.5]).bfloat16(), logits([0.5, 0.5]).half()], logits([1.0, 1.5])),
        ([logits([1.0, 2.0], [5.0, 6.0]), logits([3.0, 4.0], [7.0, 8.0])], logits([2.0, 3.0], [6.0, 7.0])),
    ],
)
def test_mean_logits(models: list[torch.Tensor], expected: torch.Tensor) -> None:
    stacked = stack_logits(models)
    assert stacked.dtype == torch.float32 and stacked.shape[0] == len(models)
    mean = mean_logits(stacked)
    assert mean.dtype == torch.float32
    torch.testing.assert_close(mean, expected, atol=0, rtol=0)


# ----- the vote -----


@pytest.mark.parametrize(
    ("choices", "mean", "expected"),
    [
        ([3, 3, 1], [0.0, 9.0, 0.0, 0.0], 3),  # the majority wins, even against the mean
        ([2], [9.0, 0.0, 0.0], 2),
        ([1, 2], [0.0, 1.0, 2.0], 2),  # a tie goes to the higher mean logit
        ([2, 1], [0.0, 1.0, 2.0], 2),  # whatever the models' order
        ([0, 1, 2], [0.0, 5.0, 2.0], 1),
        ([1, 2], [0.0, 3.0, 3.0], 1),  # equal mean logits: the lower id
        ([4, 4, 0, 0, 2], [3.0, 0.0, 9.0, 0.0, 1.0], 0),  # only the tied majority competes
    ],
)
def test_vote(choices: list[int], mean: list[float], expected: int) -> None:
    assert vote(choices, torch.tensor(mean)) == expected


@pytest.mark.parametrize(
    ("models", "params", "expected"),
    [
        # Each model's argmax: 2 and 0; the mean favours 0 (3.0 > 2.5).
        ([[0.0, 0.0, 5.0], [6.0, 0.0, 0.0]], GREEDY, 0),
        ([[0.0, 1.0, 5.0], [0.0, 2.0, 5.0], [9.0, 0.0, 0.0]], GREEDY, 2),
        # The mean's argmax (1) is no model's choice: a vote never picks it.
        ([[4.0, 3.0, 0.0], [0.0, 3.0, 4.5]], GREEDY, 2),
        # A banned token is no model's choice.
        ([[0.0, 1.0, 5.0], [0.0, 2.0, 5.0]], SamplingParams(banned_tokens=(2,)), 1),
    ],
)
def test_vote_tokens_greedy(models: list[list[float]], params: SamplingParams, expected: int) -> None:
    stacked = stack_logits([logits(model) for model in models])
    assert vote_tokens(stacked, params, vote_generators(None, len(models))).tolist() == [expected]


def test_vote_tokens_per_row() -> None:
    stacked = stack_logits(
        [logits([5.0, 0.0], [0.0, 5.0]), logits([5.0, 0.0], [0.0, 5.0]), logits([0.0, 9.0], [9.0, 0.0])]
    )
    assert vote_tokens(stacked, GREEDY, vote_generators(None, 3)).tolist() == [0, 1]


def test_vote_sampling_draws_each_model_from_its_own_seeded_generator() -> None:
    params = SamplingParams(temperature=1.0, top_k=3, seed=7)
    torch.manual_seed(0)
    models = [torch.randn(1, 16) for _ in range(3)]
    stacked = stack_logits(models)
    expected_generators = [make_generator(derive_seed(7, index)) for index in range(3)]
    runs = []
    for _ in range(2):
        generators = vote_generators(7, 3)
        runs.append([int(vote_tokens(stacked, params, generators)[0]) for _ in range(20)])
    assert runs[0] == runs[1]  # repeatable per seed
    for step in range(20):
        # Each model draws from its own filtered distribution (top-k 3 of its own logits).
        choices = [int(next_tokens(model, params, expected_generators[index])[0]) for index, model in enumerate(models)]
        assert all(choice in torch.topk(models[index][0], 3).indices.tolist() for index, choice in enumerate(choices))
        assert runs[0][step] == vote(choices, mean_logits(stacked)[0])


@pytest.mark.parametrize("seed", [0, 1, -5, 2**62])
def test_derived_seeds_differ_per_model_and_fit_a_generator(seed: int) -> None:
    seeds = [derive_seed(seed, index) for index in range(4)]
    assert len(set(seeds)) == 4 and all(0 <= value < 2**63 for value in seeds)
    assert seeds == [derive_seed(seed, index) for index in range(4)]
    make_generator(seeds[0])


@pytest.mark.parametrize(
    ("vectors", "expected"),
    [
        ([[1.0, 2.0], [3.0, 6.0]], [2.0, 4.0]),
        ([[1.0, -1.0, 0.5], [0.0, 0.0, 0.5], [2.0, 1.0, 0.5]], [1.0, 0.0, 0.5]),
    ],
)
def test_mean_embedding(vectors: list[list[float]], expected: list[float]) -> None:
    assert mean_embedding(vectors) == expected


# ----- who may be an ensemble -----


@pytest.mark.parametrize(
    ("model", "ensemble", "embed", "expected"),
    [
        ("a", None, False, ["a"]),
        ("a,b", "mean-logits", False, ["a", "b"]),
        (" a , b ,c ", "vote", False, ["a", "b", "c"]),
        ("a,b", "mean", True, ["a", "b"]),
        ("a,b", None, False, "--model names 2 models (a, b): say how to combine them with --ensemble mean-logits"),
        ("a,b", None, True, "--ensemble mean"),
        ("a", "vote", False, "--ensemble vote needs several models: give --model A,B,..."),
        ("a,", "mean-logits", False, "needs several models"),
        ("a,b", "mean", False, "--ensemble mean averages embeddings (--embed); to generate use --ensemble mean-logits"),
        ("a,b", "vote", True, "--ensemble vote combines generated tokens (--prompt); to embed use --ensemble mean"),
    ],
)
def test_model_references(model: str, ensemble: str | None, embed: bool, expected: list[str] | str) -> None:
    if isinstance(expected, list):
        assert model_references(model, ensemble, embed) == expected
    else:
        with pytest.raises(SwarmError, match=expected.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            model_references(model, ensemble, embed)


def test_a_path_with_a_comma_is_one_model(tmp_path: Path) -> None:
    path = tmp_path / "model,v2.json"
    path.write_text("{}")
    assert model_references(str(path), None, False) == [str(path)]


@pytest.mark.parametrize(
    ("policy", "causal", "fits"),
    [
        ("mean-logits", True, True),
        ("vote", True, True),
        ("mean", False, True),
        ("mean", True, False),
        ("vote", False, False),
        ("mean-logits", False, False),
        ("median", True, False),
    ],
)
def test_check_policy(policy: str, causal: bool, fits: bool) -> None:
    if fits:
        check_policy(policy, causal)
    else:
        with pytest.raises(SwarmError, match=f"--ensemble {policy}" if policy != "median" else "^unknown --ensemble"):
            check_policy(policy, causal)


def test_models_of_two_kinds_are_refused() -> None:
    llama, qwen, bert = (SimpleNamespace(name=n, family=f) for n, f in [("a", "llama"), ("b", "qwen2"), ("e", "bert")])
    check_one_kind([llama, qwen])  # type: ignore[list-item]
    check_one_kind([bert, bert])  # type: ignore[list-item]
    with pytest.raises(SwarmError, match=r"^a is a causal language model but e is an encoder: an ensemble's models"):
        check_one_kind([llama, qwen, bert])  # type: ignore[list-item]


class FakeTokenizer:
    """A tokenizer as far as the ensemble compares them: a vocabulary, and ids for a text."""

    def __init__(self, vocabulary: dict[str, int], add_bos: bool = False, lower: bool = False) -> None:
        self.vocabulary = vocabulary
        self.add_bos = add_bos
        self.lower = lower

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocabulary)

    def __call__(self, text: str) -> dict[str, list[int]]:
        text = text.lower() if self.lower else text
        return {"input_ids": [0] * self.add_bos + [self.vocabulary.get(c, 1) for c in text]}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        inverse = {index: token for token, index in self.vocabulary.items()}
        return "".join(inverse.get(index, "?") for index in ids)


VOCABULARY = {"<s>": 0, "<unk>": 1, **{c: 2 + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyzABC ")}}


@pytest.mark.parametrize(
    ("other", "difference"),
    [
        (FakeTokenizer(VOCABULARY), None),
        (
            FakeTokenizer({**VOCABULARY, "zz": 99}),
            f"vocabularies of {len(VOCABULARY)} and {len(VOCABULARY) + 1} tokens",
        ),
        (FakeTokenizer({**VOCABULARY, "a": 3, "b": 2}), "their vocabularies give tokens different ids"),
        (FakeTokenizer(VOCABULARY, add_bos=True), "they encode 'Hello, world! The quick brown fox"),
        (FakeTokenizer(VOCABULARY, lower=True), "they encode 'Hello, world!"),
    ],
)
def test_tokenizer_difference(other: FakeTokenizer, difference: str | None) -> None:
    found = tokenizer_difference(FakeTokenizer(VOCABULARY), other)
    assert found == difference if difference is None else (found or "").startswith(difference)


def fake_parts(name: str, tokenizer: FakeTokenizer, causal: bool = True, hidden: int = 8) -> SimpleNamespace:
    # EOS past the fake models' vocabulary: banning it changes no choice.
    return SimpleNamespace(
        manifest=SimpleNamespace(name=name), tokenizer=tokenizer, causal=causal, hidden_size=hidden, eos_token_ids={99}
    )


@pytest.mark.parametrize(
    ("parts", "error"),
    [
        ([fake_parts("a", FakeTokenizer(VOCABULARY)), fake_parts("b", FakeTokenizer(VOCABULARY))], None),
        ([fake_parts("a", FakeTokenizer(VOCABULARY))], "an ensemble needs at least two models"),
        (
            [fake_parts("a", FakeTokenizer(VOCABULARY)), fake_parts("b", FakeTokenizer({"x": 0}))],
            "a and b have different tokenizers (vocabularies of 32 and 1 tokens): an ensemble's models must share one",
        ),
        (
            [fake_parts("a", FakeTokenizer(VOCABULARY)), fake_parts("e", FakeTokenizer(VOCABULARY), causal=False)],
            "a is a causal language model but e is an encoder: an ensemble's models must be of one kind",
        ),
        (
            [fake_parts("e", FakeTokenizer(VOCABULARY), False), fake_parts("f", FakeTokenizer(VOCABULARY), False, 16)],
            "e and f embed in 8 and 16 dimensions: an ensemble's encoders must embed in the same number",
        ),
    ],
)
def test_check_members(parts: list[SimpleNamespace], error: str | None) -> None:
    if error is None:
        check_members(parts)  # type: ignore[arg-type]
    else:
        with pytest.raises(SwarmError) as raised:
            check_members(parts)  # type: ignore[arg-type]
        assert str(raised.value) == error


# ----- the generation loop over fake models -----

VOCAB = 12


def fake_model(weight: int) -> Callable[[list[int]], torch.Tensor]:
    """Deterministic 'logits' of a whole token history (1, VOCAB)."""

    def forward(history: list[int]) -> torch.Tensor:
        generator = torch.Generator().manual_seed(weight * 1000 + sum((i + 1) * t for i, t in enumerate(history)))
        return torch.randn(1, VOCAB, generator=generator)

    return forward


class FakeSteps:
    """A model's failover steps: keeps the history, optionally fails at step `fail_at`; records threads."""

    def __init__(self, forward: Callable[[list[int]], torch.Tensor], fail_at: int | None = None) -> None:
        self.forward = forward
        self.history: list[int] = []
        self.fail_at = fail_at
        self.route: list[Any] | None = []
        self.failovers: list[dict[str, Any]] = []
        self.threads: set[int] = set()
        self.closed = False

    def __call__(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        assert start == len(self.history)
        self.threads.add(threading.get_ident())
        if self.fail_at is not None and len(self.history) >= self.fail_at:
            raise PeerFailure("the peer is gone", "tcp://x:1", "gone")
        self.history.extend(ids[0].tolist())
        return self.forward(self.history)

    def close(self) -> None:
        self.closed = True


class FakeClient:
    def __init__(self, name: str, weight: int, fail_at: int | None = None) -> None:
        self.manifest = SimpleNamespace(name=name)
        self.parts = fake_parts(name, FakeTokenizer(VOCABULARY))
        self.forward = fake_model(weight)
        self.fail_at = fail_at
        self.made: list[FakeSteps] = []

    def encode(self, prompt: str) -> list[int]:
        return [int(token) for token in self.parts.tokenizer(prompt)["input_ids"]]

    def fit_to_context(self, prompt_length: int, max_new_tokens: int) -> int:
        return max_new_tokens

    def failover_steps(self, max_length: int) -> FakeSteps:
        self.made.append(FakeSteps(self.forward, self.fail_at))
        return self.made[-1]

    def decoder(self) -> FakeTokenizer:
        return self.parts.tokenizer  # type: ignore[no-any-return]

    def close(self) -> None:
        pass


def reference(weights: list[int], prompt: list[int], steps: int, policy: str) -> list[int]:
    history = list(prompt)
    for _ in range(steps):
        model_logits = [fake_model(weight)(history)[0] for weight in weights]
        mean = torch.stack(model_logits).mean(dim=0)
        if policy == MEAN_LOGITS:
            history.append(int(mean.argmax()))
        else:
            history.append(vote([int(item.argmax()) for item in model_logits], mean))
    return history[len(prompt) :]


@pytest.mark.parametrize("policy", [MEAN_LOGITS, VOTE])
def test_fake_ensemble_generates_the_reference_in_parallel(policy: str) -> None:
    clients = [FakeClient("a", 1), FakeClient("b", 2), FakeClient("c", 3)]
    ensemble = EnsembleClient(clients, policy)  # type: ignore[arg-type]
    assert ensemble.name == "a+b+c" and ensemble.causal
    result = ensemble.generate("abc", 8, GREEDY, ban_eos=True)
    prompt = clients[0].encode("abc")
    assert result.generation.token_ids == reference([1, 2, 3], prompt, 8, policy)
    assert [model["model"] for model in result.to_json()["models"]] == ["a", "b", "c"]
    assert result.to_json()["ensemble"] == policy
    steps = [client.made[0] for client in clients]
    assert all(item.closed for item in steps)
    # The first model steps in the caller's thread, each other one in one thread of its own.
    assert steps[0].threads == {threading.get_ident()}
    assert all(len(item.threads) == 1 for item in steps[1:])
    assert len({name for item in steps for name in item.threads}) == 3


def test_a_model_that_fails_ends_the_generation_and_every_session_closes() -> None:
    clients = [FakeClient("a", 1), FakeClient("b", 2, fail_at=5)]
    ensemble = EnsembleClient(clients, MEAN_LOGITS)  # type: ignore[arg-type]
    with pytest.raises(PeerFailure, match="the peer is gone"):
        ensemble.generate("abc", 8, GREEDY, ban_eos=True)
    assert all(client.made[0].closed for client in clients)
