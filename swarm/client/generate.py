"""Generation: prefill, the decode loop, sampling, streaming text, EOS; and embeddings for encoder models.

Sampling is pure (tensors in, token ids out) so it is tested with fixed seeds. Generation is written against
`NextLogits`, a callable that runs new tokens through the model and returns the last position's logits, so the
same loop drives a swarm route, a replica, or a local model in tests.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from swarm.errors import SwarmError


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. temperature 0 is greedy; top_k 0 and top_p 1.0 switch those filters off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    # Token ids never chosen (e.g. EOS, for benchmarks that need a fixed token count).
    banned_tokens: tuple[int, ...] = ()

    def check(self) -> SamplingParams:
        """Raise SwarmError on values that make no sense; returns self for chaining."""
        if not self.temperature >= 0 or self.temperature == float("inf"):
            raise SwarmError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise SwarmError(f"top-k must be >= 0 (0 turns it off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise SwarmError(f"top-p must be in (0, 1] (1 turns it off), got {self.top_p}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def top_k_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the tokens kept by top-k: the k highest logits per row (ties at the k-th value kept too)."""
    if k <= 0 or k >= logits.shape[-1]:
        return torch.ones_like(logits, dtype=torch.bool)
    kth_value = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits >= kth_value


def top_p_mask(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Boolean mask of the nucleus: the most probable tokens whose probabilities first add up to at least p.

    A token is kept when the probability mass of the tokens ranked above it is still below p, so the most
    probable token is always kept.
    """
    if p >= 1:
        return torch.ones_like(logits, dtype=torch.bool)
    probabilities = torch.softmax(logits.float(), dim=-1)
    sorted_probabilities, order = torch.sort(probabilities, dim=-1, descending=True)
    mass_before = torch.cumsum(sorted_probabilities, dim=-1) - sorted_probabilities
    keep_sorted = mass_before < p
    keep_sorted[..., 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def filtered_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """float32 logits after banning, temperature, top-k and top-p (in that order, as transformers does);
    removed tokens are -inf."""
    scores = logits.float().clone()
    if params.banned_tokens:
        banned = [token for token in params.banned_tokens if 0 <= token < scores.shape[-1]]
        scores[..., banned] = float("-inf")
    if params.greedy:
        return scores
    scores = scores / params.temperature
    scores = scores.masked_fill(~top_k_mask(scores, params.top_k), float("-inf"))
    return scores.masked_fill(~top_p_mask(scores, params.top_p), float("-inf"))


def next_tokens(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of `logits` (batch, vocab): argmax when greedy, else a draw from the filtered softmax."""
    scores = filtered_logits(logits, params)
    if params.greedy:
        return scores.argmax(dim=-1)
    probabilities = torch.softmax(scores, dim=-1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)


def make_generator(seed: int | None) -> torch.Generator:
    """A private generator: seeded runs repeat exactly whatever else uses torch's global RNG."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


class TokenDecoder(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class TextStream:
    """Turns generated ids into text pieces as they come, never splitting a multi-byte character.

    Byte-level tokenizers can end a token in the middle of a UTF-8 sequence; the decoder then shows U+FFFD.
    Such a tail is held back until the next token completes it.
    """

    def __init__(self, tokenizer: TokenDecoder) -> None:
        self.tokenizer = tokenizer
        self.token_ids: list[int] = []
        self.emitted = ""

    def push(self, token_id: int) -> str:
        """Add one token; return the new text it completes (possibly empty)."""
        self.token_ids.append(token_id)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(self.emitted):
            return ""
        piece, self.emitted = text[len(self.emitted) :], text
        return piece

    def finish(self) -> str:
        """Whatever text is still held back (an incomplete character at the very end)."""
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        piece = text[len(self.emitted) :] if text.startswith(self.emitted) else ""
        self.emitted = text
        return piece


# Runs token ids `ids` (batch, new) at positions [start, start + new) and returns the last position's logits
# (batch, vocab). It keeps whatever cache the model needs between calls.
NextLogits = Callable[[torch.Tensor, int], torch.Tensor]
# Chooses one token id per row of the logits `NextLogits` returned (`next_tokens` by default; an ensemble's vote
# chooses from its models' own logits instead).
ChooseTokens = Callable[[torch.Tensor, SamplingParams, torch.Generator], torch.Tensor]


@dataclass
class Generation:
    """What one generation produced, and how long it took."""

    prompt_ids: list[int]
    # Generated ids, EOS included when generation stopped on it (as transformers' generate returns them).
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    stopped_on_eos: bool = False
    prefill_seconds: float = 0.0
    token_seconds: list[float] = field(default_factory=list)
    # Logits (float32, vocab) after the prompt and at the last step, for equivalence checks.
    prefill_logits: torch.Tensor | None = None
    last_logits: torch.Tensor | None = None

    @property
    def median_token_seconds(self) -> float | None:
        return statistics.median(self.token_seconds) if self.token_seconds else None

    @property
    def tokens_per_second(self) -> float | None:
        """Decode rate over the generated tokens after the first (which prefill produced)."""
        total = sum(self.token_seconds)
        return len(self.token_seconds) / total if total > 0 else None

    def timings(self) -> dict[str, Any]:
        median = self.median_token_seconds
        return {
            "prefill_seconds": round(self.prefill_seconds, 6),
            "token_seconds": [round(seconds, 6) for seconds in self.token_seconds],
            "median_token_seconds": None if median is None else round(median, 6),
            "tokens_per_second": None if self.tokens_per_second is None else round(self.tokens_per_second, 3),
        }


@dataclass
class TokenSink:
    """Takes each chosen token into the generation: callbacks, the text stream, and whether generation is done (EOS,
    the token cap, should_stop)."""

    result: Generation
    max_new_tokens: int
    eos: Collection[int]
    stream: TextStream | None
    on_text: Callable[[str], None] | None
    on_token: Callable[[int, torch.Tensor], None] | None
    should_stop: Callable[[], bool] | None
    done: bool = False

    def emit(self, token: int, logits: torch.Tensor) -> None:
        self.result.token_ids.append(token)
        self.result.last_logits = logits.float()
        if self.on_token is not None:
            self.on_token(token, self.result.last_logits)
        if self.stream is not None:
            piece = self.stream.push(token)
            if piece and self.on_text is not None:
                self.on_text(piece)
        if token in self.eos:
            self.result.stopped_on_eos = self.done = True
        elif len(self.result.token_ids) >= self.max_new_tokens or (self.should_stop is not None and self.should_stop()):
            self.done = True

    def finish(self) -> None:
        if self.stream is not None:
            tail = self.stream.finish()
            if tail and self.on_text is not None:
                self.on_text(tail)
            self.result.text = self.stream.emitted


def generate(
    next_logits: NextLogits,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    params: SamplingParams,
    eos_token_ids: Collection[int] = (),
    on_text: Callable[[str], None] | None = None,
    tokenizer: TokenDecoder | None = None,
    should_stop: Callable[[], bool] | None = None,
    choose: ChooseTokens = next_tokens,
    on_token: Callable[[int, torch.Tensor], None] | None = None,
) -> Generation:
    """Prefill the prompt, then decode one token per step until EOS, `max_new_tokens` or `should_stop()`.

    `on_text` receives each new piece of text as soon as its token is sampled (needs `tokenizer`); `should_stop`
    is asked after each token (a stop string was seen, the caller went away); `choose` picks each token;
    `on_token` receives each token with the logits (vocab) it was chosen from (log-probabilities for a server).
    """
    params.check()
    if not prompt_ids:
        raise SwarmError("the prompt is empty: give at least one token")
    if max_new_tokens < 0:
        raise SwarmError(f"max new tokens must be >= 0, got {max_new_tokens}")
    result = Generation(prompt_ids=list(prompt_ids))
    if max_new_tokens == 0:
        return result
    generator = make_generator(params.seed)
    stream = TextStream(tokenizer) if tokenizer is not None else None
    eos = set(eos_token_ids)

    out = TokenSink(result, max_new_tokens, eos, stream, on_text, on_token, should_stop)
    started = time.perf_counter()
    logits = next_logits(torch.tensor([list(prompt_ids)], dtype=torch.long), 0)
    result.prefill_logits = logits[0].float()
    position = len(prompt_ids)
    while True:
        token = int(choose(logits, params, generator)[0])
        now = time.perf_counter()
        if result.token_ids:
            result.token_seconds.append(now - started)
        else:
            result.prefill_seconds = now - started
        out.emit(token, logits[0])
        if out.done:
            break
        started = time.perf_counter()
        logits = next_logits(torch.tensor([[token]], dtype=torch.long), position)
        position += 1
    out.finish()
    return result
