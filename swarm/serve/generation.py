"""One generation of the server: run in a worker thread, its text delivered to the event loop as it comes.

The worker calls the client's blocking `generate`; pieces of text go through the stop-string scanner and into an
asyncio queue the request's handler reads. Cancelling (the HTTP client left) makes the generation stop after its
next token, which closes its session on every peer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from swarm.client.generate import SamplingParams
from swarm.client.run import RunResult
from swarm.serve.stops import StopScanner


class Generator(Protocol):
    """What a served model offers for generation (a SwarmClient, or an ensemble of them)."""

    def generate(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int,
        params: SamplingParams,
        on_text: Callable[[str], None] | None = ...,
        ban_eos: bool = ...,
        *,
        should_stop: Callable[[], bool] | None = ...,
        on_token: Callable[[int, torch.Tensor], None] | None = ...,
    ) -> RunResult: ...


@dataclass(frozen=True)
class GenerationSpec:
    prompt_ids: list[int]
    max_new_tokens: int
    params: SamplingParams
    stops: tuple[str, ...] = ()
    ban_eos: bool = False
    # Likeliest tokens to list beside each token's log-probability; None: no log-probabilities.
    logprobs: int | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model (before temperature and filters), and the likeliest
    tokens' at that step."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


def token_logprob(token: int, logits: torch.Tensor, top: int) -> TokenLogprob:
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    best = torch.topk(logprobs, top) if top else None
    ranked = () if best is None else tuple(zip(best.indices.tolist(), best.values.tolist(), strict=True))
    return TokenLogprob(token, float(logprobs[token]), ranked)


@dataclass
class Piece:
    """Text of choice `index` (events come in order per choice)."""

    index: int
    text: str


@dataclass
class Finished:
    """Choice `index` ended: with its result, or with the error that ended it."""

    index: int
    result: RunResult | None = None
    error: BaseException | None = None
    # Whether a stop string (rather than EOS or the token limit) ended it.
    stopped_by_string: bool = False
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def finish_reason(self) -> str:
        if self.result is None:
            return "error"
        if self.stopped_by_string or self.result.generation.stopped_on_eos:
            return "stop"
        return "length"


Event = Piece | Finished


@dataclass
class ChoiceRun:
    """The worker's side of one choice: scans text for stop strings, forwards it, notices cancellation."""

    index: int
    spec: GenerationSpec
    deliver: Callable[[Event], None]
    cancelled: threading.Event
    scanner: StopScanner = field(init=False)
    shown: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scanner = StopScanner(self.spec.stops)

    def on_text(self, piece: str) -> None:
        self._show(self.scanner.push(piece))

    def on_token(self, token: int, logits: torch.Tensor) -> None:
        if self.spec.logprobs is not None:
            self.logprobs.append(token_logprob(token, logits, self.spec.logprobs))

    def should_stop(self) -> bool:
        return self.scanner.stopped or self.cancelled.is_set()

    def _show(self, text: str) -> None:
        if text:
            self.shown.append(text)
            self.deliver(Piece(self.index, text))

    def run(self, model: Generator) -> None:
        try:
            spec = self.spec
            result = model.generate(
                spec.prompt_ids,
                spec.max_new_tokens,
                spec.params,
                on_text=self.on_text,
                ban_eos=spec.ban_eos,
                should_stop=self.should_stop,
                on_token=self.on_token if spec.logprobs is not None else None,
            )
        except BaseException as error:  # handed to the event loop, which answers with it
            self.deliver(Finished(self.index, error=error))
            return
        self._show(self.scanner.finish())
        text = "".join(self.shown)
        self.deliver(Finished(self.index, result, None, self.scanner.stopped, text, self.logprobs))


class Generation:
    """Choices of one request, each running in the executor; `events()` yields their pieces and ends."""

    def __init__(self, model: Generator, specs: Sequence[GenerationSpec], executor: Executor) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.started = time.perf_counter()
        self.first_text_seconds: float | None = None
        self.runs = [ChoiceRun(index, spec, self._deliver, self.cancelled) for index, spec in enumerate(specs)]
        self.futures = [self.loop.run_in_executor(executor, run.run, model) for run in self.runs]

    def _deliver(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def events(self) -> AsyncIterator[Event]:
        remaining = len(self.runs)
        while remaining:
            event = await self.queue.get()
            if isinstance(event, Piece) and self.first_text_seconds is None:
                self.first_text_seconds = time.perf_counter() - self.started
            if isinstance(event, Finished):
                remaining -= 1
            yield event

    async def finished(self) -> list[Finished]:
        """Every choice's end, in choice order (text gathered); cancels the rest when one fails."""
        ends: dict[int, Finished] = {}
        async for event in self.events():
            if isinstance(event, Finished):
                ends[event.index] = event
                if event.error is not None:
                    self.cancel()
        return [ends[index] for index in sorted(ends)]

    def cancel(self) -> None:
        """Stop every choice after its next token (their sessions close on every peer)."""
        self.cancelled.set()

    async def wait_closed(self) -> None:
        """Until every worker has returned (sessions closed)."""
        await asyncio.gather(*self.futures, return_exceptions=True)


def usage(prompt_tokens: int, ends: Sequence[Finished]) -> dict[str, Any]:
    completion = sum(len(end.result.generation.token_ids) for end in ends if end.result is not None)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}
