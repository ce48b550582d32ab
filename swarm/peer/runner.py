"""Span execution for a compute peer: load the hosted blocks from verified chunk files and run them.

A peer hosts blocks [start, end) of a model; a request may ask for any sub-range of them (the client
splits work between peers as it likes), so the runner keeps one view of the loaded span per sub-range.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as transformers_logging

from swarm.errors import SwarmError
from swarm.manifest import Manifest
from swarm.measure import benchmark, compute_clock
from swarm.model.span import Span, load_tensors, make_positions

# Tokens of the startup benchmark: a short prompt, then repetitions of single-token steps as in generation.
_BENCHMARK_PROMPT_TOKENS = 4
_BENCHMARK_STEPS = 2


class SpanRunner:
    """Blocks [start, end) of a block-chunked model (hidden states in, hidden states out)."""

    replica = False

    def __init__(
        self,
        manifest: Manifest,
        start: int,
        end: int,
        chunk_paths: Sequence[Path],
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if manifest.family is None:
            raise SwarmError(f"{manifest.name} has no block adapter; it can only be served as a full replica")
        self.start, self.end = start, end
        # A peer's stderr is its log; a weight-loading progress bar there is noise.
        transformers_logging.disable_progress_bar()
        self.span = Span(
            manifest.config,
            manifest.family,
            start,
            end,
            has_embed=False,
            has_head=False,
            tensors=load_tensors(chunk_paths),
            device=device,
            dtype=dtype,
        )
        self.dtype = self.span.dtype
        self.causal = self.span.layout.causal
        self.hidden_size = int(self.span.config.hidden_size)
        self.vocab_size = int(getattr(self.span.config, "vocab_size", 0) or 0)
        self._views: dict[tuple[int, int], Span] = {(start, end): self.span}

    def covers(self, blocks: tuple[int, int]) -> bool:
        return self.start <= blocks[0] < blocks[1] <= self.end

    def _view(self, blocks: tuple[int, int]) -> Span:
        """The loaded span restricted to a sub-range: same modules, narrower loop."""
        view = self._views.get(blocks)
        if view is None:
            view = copy.copy(self.span)
            offset = blocks[0] - self.start
            view.start, view.end = blocks
            # Span keeps the attention type of each of its blocks; the view takes its own slice.
            view._layer_types = self.span._layer_types[offset : offset + blocks[1] - blocks[0]]
            self._views[blocks] = view
        return view

    def run_together(
        self, blocks: tuple[int, int], hidden: Sequence[torch.Tensor], caches: Sequence[Any], lengths: Sequence[int]
    ) -> list[torch.Tensor]:
        """One new token of each of several sessions through `blocks` in one batched forward (Span.forward_together)."""
        return self._view(blocks).forward_together(hidden, caches, lengths)

    def encode_together(
        self, blocks: tuple[int, int], hidden: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None]
    ) -> list[torch.Tensor]:
        """Several encoder requests through `blocks` in one forward (Span.encode_together)."""
        return self._view(blocks).encode_together(hidden, masks)

    def batchable(self, blocks: tuple[int, int], cache: Any) -> bool:
        return self._view(blocks).batchable(cache)

    def new_cache(self) -> Any:
        return self.span.new_session_cache()

    def run(
        self,
        blocks: tuple[int, int],
        hidden: torch.Tensor,
        cache: Any,
        positions: tuple[int, int] | None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run `blocks` over `hidden` (new tokens at `positions` for causal models, appended to `cache`)."""
        view = self._view(blocks)
        position_ids = None
        if positions is not None:
            position_ids = make_positions(positions[0], positions[1] - positions[0], self.span.device)
        return view.forward(hidden, session_cache=cache, positions=position_ids, attention_mask=attention_mask)

    def benchmark(self) -> float:
        """Tokens per second of the whole span: after a warm-up (a short prompt and one step), the median of
        repeated timed single-token steps (swarm.measure.benchmark); an encoder times whole short prompts."""
        blocks = (self.start, self.end)
        if not self.causal:

            def encode() -> None:
                self.run(blocks, self._random_hidden(_BENCHMARK_PROMPT_TOKENS), None, None)
                self._synchronize()

            return benchmark(encode, encode, _BENCHMARK_PROMPT_TOKENS, compute_clock(self.span.device.type))
        cache = self.new_cache()
        position = 0

        def steps(count: int, width: int = 1) -> None:
            nonlocal position
            for _ in range(count):
                self.run(blocks, self._random_hidden(width), cache, (position, position + width))
                position += width
            self._synchronize()

        def warm_up() -> None:
            steps(1, _BENCHMARK_PROMPT_TOKENS)
            steps(1)

        return benchmark(
            warm_up, lambda: steps(_BENCHMARK_STEPS), _BENCHMARK_STEPS, compute_clock(self.span.device.type)
        )

    def _random_hidden(self, tokens: int) -> torch.Tensor:
        return torch.randn(1, tokens, self.hidden_size, dtype=self.dtype, device=self.span.device)

    def _synchronize(self) -> None:
        # CUDA kernels run asynchronously: wait for them, or the benchmark times only their launch.
        if self.span.device.type == "cuda":
            torch.cuda.synchronize(self.span.device)
