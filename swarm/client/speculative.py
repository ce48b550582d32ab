"""Speculative decoding (`--draft MODEL`): a small local model drafts k tokens, the swarm checks them all in one
step per hop, and every token the target model agrees with is kept, so a round trip through the route yields up
to k + 1 tokens instead of one.

The acceptance rules and the choice of k are pure functions. Greedy: a drafted token is kept while it is the
target's own greedy choice, so the output equals plain greedy decoding token for token. Sampling: standard
speculative sampling (Leviathan et al. 2023; Chen et al. 2023): a drafted token d is kept with probability
min(1, p(d) / q(d)), and at the first refusal the token is drawn from the normalised max(0, p - q); after k kept
tokens one more is drawn from p. Each emitted token is then distributed exactly as the target's (filtered)
distribution p, whatever the draft proposes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from swarm.client.generate import (
    Generation,
    SamplingParams,
    TextStream,
    TokenDecoder,
    TokenSink,
    filtered_logits,
    make_generator,
    next_tokens,
)
from swarm.errors import SwarmError

# Drafted tokens per round: start, least and most.
FIRST_DRAFT_LENGTH = 4
MIN_DRAFT_LENGTH = 1
MAX_DRAFT_LENGTH = 8

# Runs new tokens (1, n) at positions [start, start + n) and returns the target's logits for each: (1, n, vocab).
# A start before the end of what the route holds takes the later tokens back first.
EveryLogits = Callable[[torch.Tensor, int], torch.Tensor]


class Drafter(Protocol):
    def propose(
        self, sequence: Sequence[int], count: int, params: SamplingParams, generator: torch.Generator
    ) -> tuple[list[int], torch.Tensor]:
        """`count` tokens following `sequence`, and the (count, vocab) distributions they were drawn from."""
        ...

    def keep(self, length: int) -> None:
        """Only the first `length` tokens of what was proposed on are valid (the rest were refused)."""
        ...


def accepted_greedy(drafted: Sequence[int], choices: Sequence[int]) -> int:
    """How many drafted tokens greedy decoding keeps: `choices[i]` is the target's own choice where drafted[i]
    stands (len(choices) > len(drafted); the token after the kept ones is choices[kept])."""
    kept = 0
    while kept < len(drafted) and drafted[kept] == choices[kept]:
        kept += 1
    return kept


def accepted_sampled(
    drafted: Sequence[int], draft: torch.Tensor, target: torch.Tensor, generator: torch.Generator
) -> tuple[int, int]:
    """(drafted tokens kept, the token that follows them) by speculative sampling. `draft`: (k, vocab) the
    distributions the drafted tokens were drawn from; `target`: (k + 1, vocab) the target's at the same places."""
    for index, token in enumerate(drafted):
        p, q = float(target[index, token]), float(draft[index, token])
        if float(torch.rand((), generator=generator)) * q <= p:
            continue
        residual = (target[index] - draft[index]).clamp(min=0)
        # p(d) < q(d) leaves mass where p > q; the guard is for rounding alone.
        weights = residual if float(residual.sum()) > 0 else target[index]
        return index, int(torch.multinomial(weights, 1, generator=generator))
    return len(drafted), int(torch.multinomial(target[len(drafted)], 1, generator=generator))


def next_draft_length(current: int, drafted: int, kept: int) -> int:
    """Draft more after a round that kept everything, fewer after one that kept less than half."""
    if drafted and kept == drafted:
        return min(current + 1, MAX_DRAFT_LENGTH)
    if kept * 2 < drafted:
        return max(current - 1, MIN_DRAFT_LENGTH)
    return current


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution plain sampling draws from (banned, temperature, top-k, top-p applied)."""
    return torch.softmax(filtered_logits(logits, params), dim=-1)


@dataclass
class SpeculationStats:
    rounds: int = 0
    drafted: int = 0
    kept: int = 0
    lengths: list[int] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        rate = self.kept / self.drafted if self.drafted else None
        return {"rounds": self.rounds, "drafted": self.drafted, "accepted": self.kept,
                "acceptance": None if rate is None else round(rate, 4)}  # fmt: skip


def generate_speculative(
    every_logits: EveryLogits,
    drafter: Drafter,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    params: SamplingParams,
    eos_token_ids: Collection[int] = (),
    on_text: Callable[[str], None] | None = None,
    tokenizer: TokenDecoder | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_token: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[Generation, SpeculationStats]:
    """`generate`'s loop with drafted tokens checked a round at a time (same arguments, same result)."""
    params.check()
    if not prompt_ids:
        raise SwarmError("the prompt is empty: give at least one token")
    if max_new_tokens < 0:
        raise SwarmError(f"max new tokens must be >= 0, got {max_new_tokens}")
    result, stats = Generation(prompt_ids=list(prompt_ids)), SpeculationStats()
    if max_new_tokens == 0:
        return result, stats
    generator = make_generator(params.seed)
    out = TokenSink(result, max_new_tokens, set(eos_token_ids), TextStream(tokenizer) if tokenizer else None,
                    on_text, on_token, should_stop)  # fmt: skip
    started = time.perf_counter()
    logits = every_logits(torch.tensor([list(prompt_ids)], dtype=torch.long), 0)[0, -1]
    result.prefill_logits = logits.float()
    out.emit(int(next_tokens(logits[None], params, generator)[0]), logits)
    result.prefill_seconds = time.perf_counter() - started
    sequence, length = [*prompt_ids, *result.token_ids], FIRST_DRAFT_LENGTH
    while not out.done:
        started = time.perf_counter()
        count = min(length, max_new_tokens - len(result.token_ids) - 1)
        drafted, draft = drafter.propose(sequence, count, params, generator) if count else ([], torch.empty(0))
        ids = torch.tensor([[sequence[-1], *drafted]], dtype=torch.long)
        target = every_logits(ids, len(sequence) - 1)[0]
        kept, following = _judge(drafted, draft, target, params, generator)
        drafter.keep(len(sequence) + kept)
        before = len(result.token_ids)
        for index, token in enumerate([*drafted[:kept], following]):
            if not out.done:
                out.emit(token, target[index])
        sequence += result.token_ids[before:]
        made = len(result.token_ids) - before
        result.token_seconds += [(time.perf_counter() - started) / made] * made
        stats.rounds, stats.drafted, stats.kept = stats.rounds + 1, stats.drafted + len(drafted), stats.kept + kept
        stats.lengths.append(count)
        length = next_draft_length(length, len(drafted), kept)
    out.finish()
    return result, stats


def _judge(
    drafted: list[int], draft: torch.Tensor, target: torch.Tensor, params: SamplingParams, generator: torch.Generator
) -> tuple[int, int]:
    """(drafted tokens kept, the target's token after them) for one round."""
    if params.greedy:
        choices = [int(token) for token in next_tokens(target, params)]
        kept = accepted_greedy(drafted, choices)
        return kept, choices[kept]
    return accepted_sampled(drafted, draft, probabilities(target, params), generator)
