"""The draft model of speculative decoding (`--draft DIR`): a small causal LM the client runs itself, sharing the
target's tokenizer, with a KV cache that follows the tokens the target kept."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from swarm.client.generate import SamplingParams, next_tokens
from swarm.client.speculative import probabilities
from swarm.errors import SwarmError


class DraftModel:
    def __init__(self, model: Any, path: str) -> None:
        self.model = model
        self.path = path
        self.cache: Any = None
        # Tokens whose keys and values the cache holds (a prefix of the sequence proposed on).
        self.cached = 0
        self.sequence: list[int] = []

    @classmethod
    def load(cls, path: str, vocab_size: int | None) -> DraftModel:
        """The model in the Hugging Face directory `path`; SwarmError when it cannot draft for a target of
        `vocab_size` tokens (another tokenizer would propose tokens that mean something else)."""
        from transformers import AutoModelForCausalLM

        if not (Path(path) / "config.json").is_file():
            raise SwarmError(f"--draft {path}: not a model directory (no config.json)")
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        except (OSError, ValueError) as error:
            raise SwarmError(f"--draft {path}: cannot load it as a causal language model: {error}") from error
        draft_vocab = int(model.config.vocab_size)
        if vocab_size is not None and draft_vocab != vocab_size:
            raise SwarmError(
                f"--draft {path} has a vocabulary of {draft_vocab} tokens, the model {vocab_size}: a draft must "
                "share the model's tokenizer"
            )
        return cls(model, path)

    def fresh(self) -> DraftModel:
        """The same model with a cache of its own (one per generation: generations may run at once)."""
        return DraftModel(self.model, self.path)

    @torch.no_grad()
    def propose(
        self, sequence: Sequence[int], count: int, params: SamplingParams, generator: torch.Generator
    ) -> tuple[list[int], torch.Tensor]:
        """`count` tokens after `sequence`, chosen as plain decoding would choose from the draft's logits, and the
        distributions they were drawn from."""
        from transformers import DynamicCache

        if self.cache is None or list(sequence[: self.cached]) != self.sequence[: self.cached]:
            self.cache, self.cached = DynamicCache(config=self.model.config), 0
        logits = self._run(list(sequence[self.cached :]))
        tokens: list[int] = []
        distributions = []
        self.sequence = list(sequence)
        for index in range(count):
            distributions.append(probabilities(logits[None], params)[0])
            token = int(next_tokens(logits[None], params, generator)[0])
            tokens.append(token)
            self.sequence.append(token)
            if index + 1 < count:
                logits = self._run([token])
        return tokens, torch.stack(distributions) if distributions else torch.empty(0)

    def keep(self, length: int) -> None:
        """Only the first `length` tokens proposed on stand: the cache forgets the rest."""
        if self.cached > length:
            self.cache.crop(length - self.cached)
            self.cached = length
        del self.sequence[length:]

    def _run(self, ids: list[int]) -> torch.Tensor:
        positions = torch.arange(self.cached, self.cached + len(ids)).unsqueeze(0)
        output = self.model(input_ids=torch.tensor([ids]), position_ids=positions, cache=self.cache, use_cache=True)
        self.cached += len(ids)
        return output.logits[0, -1].float()
