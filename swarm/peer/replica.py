"""A whole-model replica for architectures without a block adapter (their manifest has one `full` chunk).

Such a peer is the entire route: a step carries token ids and returns the next-token logits.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, DynamicCache
from transformers.utils import logging as transformers_logging

from swarm.errors import SwarmError
from swarm.manifest import Manifest
from swarm.measure import benchmark, compute_clock
from swarm.model import batched_cache
from swarm.model.chunker import assemble_model_dir

_BENCHMARK_PROMPT_TOKENS = 4
_BENCHMARK_STEPS = 2


class ReplicaRunner:
    """The whole model, loaded with transformers from the meta chunk (config) and the full chunk (weights)."""

    replica = True
    causal = True

    def __init__(
        self,
        manifest: Manifest,
        meta_path: Path,
        full_path: Path,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.start, self.end = 0, max(1, manifest.num_blocks)
        self.dtype = dtype
        self.device = torch.device(device)
        transformers_logging.disable_progress_bar()
        # from_pretrained wants a model directory: the meta files plus the weights under their usual name.
        with tempfile.TemporaryDirectory(prefix="swarm-replica-") as folder:
            directory = assemble_model_dir(meta_path, {"full": full_path}, Path(folder))
            try:
                model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, device_map={"": str(device)})
            except (OSError, ValueError, KeyError) as error:
                raise SwarmError(f"cannot load {manifest.name} as a causal language model: {error}") from error
        self.model = model.eval()
        self.config = self.model.config
        self.hidden_size = int(getattr(self.config, "hidden_size", 0) or 0)
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])

    def covers(self, blocks: tuple[int, int]) -> bool:
        # A replica runs everything whatever range the route names.
        return True

    def new_cache(self) -> Any:
        return DynamicCache(config=self.config)

    @torch.no_grad()
    def run_tokens(
        self, input_ids: torch.Tensor, cache: Any, positions: tuple[int, int], last_only: bool = True
    ) -> torch.Tensor:
        """Next-token logits (float32) after `input_ids` at `positions`, appended to `cache`: [batch, vocab] for the
        last position, or [batch, tokens, vocab] for every one (`last_only` False: a speculative step's check)."""
        input_ids = input_ids.to(self.device)
        position_ids = torch.arange(positions[0], positions[1], device=self.device).unsqueeze(0)
        position_ids = position_ids.expand(input_ids.shape[0], -1)
        output = self.model(
            input_ids=input_ids,
            position_ids=position_ids,
            cache=cache,  # `past_key_values` is deprecated in transformers 5.x forward signatures
            use_cache=True,
        )
        return output.logits[:, -1, :].float() if last_only else output.logits.float()

    def batchable(self, blocks: tuple[int, int], cache: Any) -> bool:
        # A replica runs every layer whatever `blocks` the route names (as in `covers`).
        return batched_cache.batchable(cache, range(len(cache.layers))) if cache is not None else False

    @torch.no_grad()
    def run_together(
        self, blocks: tuple[int, int], input_ids: Sequence[torch.Tensor], caches: Sequence[Any], lengths: Sequence[int]
    ) -> list[torch.Tensor]:
        """One new token of each of several sessions in one batched forward over the whole model
        (swarm.model.batched_cache; `blocks` as in `covers`): each session's next-token logits [1, vocab] (float32),
        as its own step gives them up to float rounding."""
        layers = range(len(caches[0].layers))
        batch, mask, positions = batched_cache.gather(caches, lengths, layers, self.config, self.device)
        output = self.model(
            input_ids=torch.cat(list(input_ids)).to(self.device),
            position_ids=positions,
            attention_mask=mask,
            cache=batch,
            use_cache=True,
        )
        batched_cache.scatter_last(batch, caches, layers)
        logits = output.logits[:, -1, :].float()
        return [logits[row : row + 1] for row in range(len(lengths))]

    def cached_length(self, cache: Any) -> int:
        return int(cache.get_seq_length()) if cache is not None else 0

    def benchmark(self) -> float:
        """Tokens per second: after a warm-up (a short prompt and one step), the median of repeated timed
        single-token steps (swarm.measure.benchmark)."""
        cache = self.new_cache()
        position = 0

        def steps(count: int, width: int = 1) -> None:
            nonlocal position
            for _ in range(count):
                ids = torch.zeros(1, width, dtype=torch.long)
                self.run_tokens(ids, cache, (position, position + width))
                position += width
            if self.device.type == "cuda":  # kernels run asynchronously: time them, not their launch
                torch.cuda.synchronize(self.device)

        def warm_up() -> None:
            steps(1, _BENCHMARK_PROMPT_TOKENS)
            steps(1)

        return benchmark(warm_up, lambda: steps(_BENCHMARK_STEPS), _BENCHMARK_STEPS, compute_clock(self.device.type))
