"""Sampling and the generation loop: pure functions, fixed seeds, tables of logits."""

from __future__ import annotations

import math

import pytest
import torch

from swarm.client.generate import (
    SamplingParams,
    TextStream,
    filtered_logits,
    generate,
    make_generator,
    next_tokens,
    top_k_mask,
    top_p_mask,
)
from swarm.errors import SwarmError


def logits_of(probabilities: list[float]) -> torch.Tensor:
    """Logits (1, vocab) whose softmax is `probabilities`."""
    return torch.tensor([[math.log(p) if p > 0 else float("-inf") for p in probabilities]])


TOP_K_CASES = [
    # (logits, k, kept)
    ([1.0, 3.0, 2.0, 0.0], 1, [False, True, False, False]),
    ([1.0, 3.0, 2.0, 0.0], 2, [False, True, True, False]),
    ([1.0, 3.0, 2.0, 0.0], 0, [True, True, True, True]),  # 0 switches it off
    ([1.0, 3.0, 2.0, 0.0], 9, [True, True, True, True]),  # k beyond the vocabulary keeps all
    ([2.0, 2.0, 1.0, 0.0], 1, [True, True, False, False]),  # ties at the k-th value are kept
]


@pytest.mark.parametrize(("logits", "k", "kept"), TOP_K_CASES)
def test_top_k_mask(logits: list[float], k: int, kept: list[bool]) -> None:
    assert top_k_mask(torch.tensor([logits]), k)[0].tolist() == kept


TOP_P_CASES = [
    # (probabilities, p, kept): a token is kept while the mass ranked above it is below p.
    ([0.5, 0.3, 0.15, 0.05], 0.5, [True, False, False, False]),
    ([0.5, 0.3, 0.15, 0.05], 0.51, [True, True, False, False]),
    ([0.5, 0.3, 0.15, 0.05], 0.8, [True, True, False, False]),
    ([0.5, 0.3, 0.15, 0.05], 0.81, [True, True, True, False]),
    ([0.05, 0.15, 0.3, 0.5], 0.81, [False, True, True, True]),  # order of the vocabulary does not matter
    ([0.9, 0.05, 0.05], 0.01, [True, False, False]),  # the top token always survives
    ([0.5, 0.3, 0.15, 0.05], 1.0, [True, True, True, True]),
]


@pytest.mark.parametrize(("probabilities", "p", "kept"), TOP_P_CASES)
def test_top_p_mask(probabilities: list[float], p: float, kept: list[bool]) -> None:
    assert top_p_mask(logits_of(probabilities), p)[0].tolist() == kept


def test_greedy_is_argmax_and_ignores_seed() -> None:
    logits = torch.tensor([[0.1, 2.0, 1.9, -1.0], [5.0, 0.0, 0.0, 4.9]])
    for seed in (0, 1, 2):
        assert next_tokens(logits, SamplingParams(seed=seed), make_generator(seed)).tolist() == [1, 0]


def test_banned_tokens_are_never_chosen() -> None:
    logits = torch.tensor([[0.0, 9.0, 1.0]])
    assert next_tokens(logits, SamplingParams(banned_tokens=(1,))).tolist() == [2]
    sampled = SamplingParams(temperature=1.0, banned_tokens=(1,))
    generator = make_generator(0)
    assert all(int(next_tokens(logits, sampled, generator)[0]) != 1 for _ in range(200))


def test_seeded_sampling_repeats_and_seeds_differ() -> None:
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(7))
    params = SamplingParams(temperature=1.0)

    def draws(seed: int) -> list[int]:
        generator = make_generator(seed)
        return [int(next_tokens(logits, params, generator)[0]) for _ in range(30)]

    assert draws(11) == draws(11)
    assert draws(11) != draws(12)


def test_sampling_follows_the_filtered_distribution() -> None:
    # top-k 2 of [0.5, 0.3, 0.15, 0.05] renormalises to 0.625 / 0.375.
    logits = logits_of([0.5, 0.3, 0.15, 0.05])
    params = SamplingParams(temperature=1.0, top_k=2)
    generator = make_generator(0)
    counts = torch.bincount(
        torch.stack([next_tokens(logits, params, generator) for _ in range(4000)]).flatten(), minlength=4
    )
    assert counts[2] == counts[3] == 0
    assert abs(counts[0].item() / 4000 - 0.625) < 0.03


def test_temperature_sharpens_and_flattens() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    cold = torch.softmax(filtered_logits(logits, SamplingParams(temperature=0.5)), -1)[0]
    hot = torch.softmax(filtered_logits(logits, SamplingParams(temperature=2.0)), -1)[0]
    plain = torch.softmax(logits, -1)[0]
    assert cold[0] > plain[0] > hot[0]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (SamplingParams(temperature=-1.0), "temperature"),
        (SamplingParams(temperature=float("nan")), "temperature"),
        (SamplingParams(top_k=-1), "top-k"),
        (SamplingParams(top_p=0.0), "top-p"),
        (SamplingParams(top_p=1.5), "top-p"),
    ],
)
def test_bad_sampling_params(params: SamplingParams, message: str) -> None:
    with pytest.raises(SwarmError, match=message):
        params.check()


# ----- the generation loop, against a scripted model -----


class ScriptedModel:
    """Returns logits that make token `script[i]` the argmax at step i; records what it was asked to run."""

    def __init__(self, script: list[int], vocab: int = 8) -> None:
        self.script, self.vocab = script, vocab
        self.calls: list[tuple[list[int], int]] = []

    def __call__(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        self.calls.append((ids[0].tolist(), start))
        logits = torch.zeros(1, self.vocab)
        logits[0, self.script[len(self.calls) - 1]] = 5.0
        return logits


class CharTokenizer:
    """Token i decodes to chr(ord('a') + i); token 7 is special (EOS) and decodes to nothing."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join("" if token == 7 else chr(ord("a") + token) for token in token_ids)


def test_generate_prefills_then_steps_one_token_at_a_time() -> None:
    model = ScriptedModel([3, 1, 4, 1, 5])
    pieces: list[str] = []
    result = generate(model, [2, 2, 2], 5, SamplingParams(), on_text=pieces.append, tokenizer=CharTokenizer())
    assert result.token_ids == [3, 1, 4, 1, 5]
    assert model.calls == [([2, 2, 2], 0), ([3], 3), ([1], 4), ([4], 5), ([1], 6)]
    assert pieces == ["d", "b", "e", "b", "f"] and result.text == "dbebf"
    assert len(result.token_seconds) == 4 and result.prefill_seconds > 0


def test_generate_stops_on_eos_and_keeps_it() -> None:
    model = ScriptedModel([3, 7, 4])
    result = generate(model, [1], 10, SamplingParams(), eos_token_ids={7}, tokenizer=CharTokenizer())
    assert result.token_ids == [3, 7] and result.stopped_on_eos and result.text == "d"
    assert len(model.calls) == 2


def test_generate_with_banned_eos_runs_to_the_limit() -> None:
    model = ScriptedModel([7, 7, 7, 7])
    result = generate(model, [1], 4, SamplingParams(banned_tokens=(7,)), eos_token_ids=set())
    assert len(result.token_ids) == 4 and 7 not in result.token_ids and not result.stopped_on_eos


def test_generate_rejects_empty_prompt() -> None:
    with pytest.raises(SwarmError, match="prompt is empty"):
        generate(ScriptedModel([1]), [], 3, SamplingParams())


class ByteTokenizer:
    """Tokens are raw bytes of UTF-8 text; an incomplete sequence decodes to U+FFFD, as byte-level BPE does."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        return bytes(token_ids).decode("utf-8", errors="replace")


def test_text_stream_never_splits_a_character() -> None:
    stream = TextStream(ByteTokenizer())
    pieces = [stream.push(byte) for byte in "é€!".encode()]
    assert pieces == ["", "é", "", "", "€", "!"]
    assert stream.finish() == ""


def test_text_stream_flushes_an_incomplete_tail_at_the_end() -> None:
    stream = TextStream(ByteTokenizer())
    assert [stream.push(byte) for byte in b"a\xe2\x82"] == ["a", "", ""]
    assert stream.finish() == "\ufffd"
