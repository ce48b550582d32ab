"""The parts of a model the client runs itself: tokenizer, embeddings and head (or pooling, for encoders).

They come from the model's meta, embed and head chunks (already verified on disk); the blocks in between run
on the swarm. A model without a block adapter (a `full` chunk) runs whole on a replica peer, so the client then
needs only the tokenizer.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from swarm.errors import SwarmError
from swarm.manifest import Manifest
from swarm.model.chunker import extract_meta_archive
from swarm.model.span import Span, load_tensors, make_positions

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Config keys that hold a model's context length, by family convention.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def client_dtype(wanted: str) -> torch.dtype:
    """What a client computes a checkpoint of dtype `wanted` in. As peers do on a CPU: float16 kernels there are slow
    or missing, so half-precision checkpoints run in float32; bfloat16 is fine."""
    return torch.float32 if wanted == "float16" else TORCH_DTYPES.get(wanted, torch.float32)


def _token_ids(value: Any) -> set[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return {value}
    if isinstance(value, list):
        return {item for item in value if isinstance(item, int) and not isinstance(item, bool)}
    return set()


class LocalParts:
    """Tokenizer, embeddings and head of one model, loaded from its chunk files."""

    def __init__(self, manifest: Manifest, chunk_paths: Mapping[str, Path], dtype: str | None = None) -> None:
        self.manifest = manifest
        self.config: dict[str, Any] = manifest.config
        self.family = manifest.family
        if "meta" not in chunk_paths:
            raise SwarmError(f"{manifest.name}: the meta chunk (config and tokenizer) is not available")
        self.tokenizer, generation = load_meta(chunk_paths["meta"], manifest.name)
        # As transformers' generate does: the generation config's EOS first, then the model config's.
        self.eos_token_ids = (
            _token_ids(generation.get("eos_token_id"))
            or _token_ids(self.config.get("eos_token_id"))
            or _token_ids(self.tokenizer.eos_token_id)
        )
        self.dtype = client_dtype(dtype or manifest.dtype)
        self.span: Span | None = None
        if self.family is not None:
            tensor_files = [path for chunk_id, path in chunk_paths.items() if chunk_id != "meta"]
            # One span with no blocks that holds both ends of the model.
            self.span = Span(
                self.config,
                self.family,
                0,
                0,
                has_embed=True,
                has_head=True,
                tensors=load_tensors(tensor_files),
                dtype=self.dtype,
            )

    @property
    def causal(self) -> bool:
        return self.span is None or self.span.layout.causal

    @property
    def hidden_size(self) -> int:
        if self.span is None:
            raise SwarmError(f"{self.manifest.name} runs whole on replica peers: the client has no hidden states")
        return int(self.span.config.hidden_size)

    @property
    def vocab_size(self) -> int | None:
        value = self.config.get("vocab_size")
        return value if isinstance(value, int) else None

    @property
    def context_length(self) -> int | None:
        """Most positions the model takes (prompt and generated tokens together), when its config says."""
        for key in CONTEXT_KEYS:
            value = self.config.get(key)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def encode_prompt(self, text: str) -> list[int]:
        ids = self.tokenizer(text)["input_ids"]
        return [int(token) for token in ids]

    def embed(self, input_ids: torch.Tensor, start: int) -> torch.Tensor:
        """Hidden states entering block 0 for tokens at positions [start, start + n)."""
        if self.span is None:
            raise SwarmError("this model has no local embeddings")
        positions = make_positions(start, input_ids.shape[1])
        return self.span.embed(input_ids, positions).contiguous()

    def head(self, hidden: torch.Tensor, all_positions: bool = False) -> torch.Tensor:
        """float32 logits (batch, vocab) of the last position, or (batch, tokens, vocab) of every one."""
        if self.span is None:
            raise SwarmError("this model has no local head")
        if all_positions:
            return self.span.head(hidden).float()
        return self.span.head(hidden[:, -1:]).float()[:, -1]

    def encode_for_embedding(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask (1, seq) for an encoder."""
        encoded = self.tokenizer(text, return_tensors="pt")
        return encoded["input_ids"].long(), encoded["attention_mask"].long()

    def embed_whole(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Encoder input: the whole sequence's embeddings (BERT adds its own positions and token types)."""
        if self.span is None:
            raise SwarmError("this model has no local embeddings")
        return self.span.embed(input_ids).contiguous()

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One vector per sequence, pooled as the config declares (mean when it declares nothing)."""
        if self.span is None:
            raise SwarmError("this model has no local pooling")
        return self.span.pool(hidden, attention_mask).float()


def load_meta(archive: Path, name: str) -> tuple[PreTrainedTokenizerBase, dict[str, Any]]:
    """The tokenizer and generation config from a meta chunk (unpacked to a scratch folder, then dropped)."""
    with tempfile.TemporaryDirectory(prefix="swarm-meta-") as scratch:
        folder = Path(scratch)
        extract_meta_archive(archive, folder)
        generation: dict[str, Any] = {}
        generation_file = folder / "generation_config.json"
        if generation_file.is_file():
            try:
                loaded = json.loads(generation_file.read_text())
            except ValueError as error:
                raise SwarmError(f"{name}: generation_config.json in the meta chunk is not JSON: {error}") from error
            generation = loaded if isinstance(loaded, dict) else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as error:
            raise SwarmError(f"{name}: cannot load the tokenizer from the meta chunk: {error}") from error
    return tokenizer, generation
