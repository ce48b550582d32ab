"""Several sessions' KV caches as one batch for a decode step, and each session's new entries put back after.

Used by spans (Span.forward_together) and whole-model replicas alike: the caches' keys and values are left-padded to
the longest and concatenated, a 2D padding mask hides the padding (transformers' mask builders combine it with the
causal mask, as for any left-padded batch), and after the step the last position of every row goes back to its own
cache. The gathered copy is thrown away: a session's cache never holds another's padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from swarm.errors import SwarmError


def batchable(cache: DynamicCache | None, layers: range) -> bool:
    """Whether a session's cache can join a batched step over `layers`: full-attention layers that hold tokens
    (a sliding window or a layer without keys yet keeps its own shape)."""
    if cache is None or not layers:
        return False
    held = cache.layers[layers.start : layers.stop]
    return len(held) == len(layers) and all(type(layer) is DynamicLayer and layer.is_initialized for layer in held)


def gather(
    caches: Sequence[DynamicCache], lengths: Sequence[int], layers: range, config: Any, device: torch.device
) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
    """(batch cache, attention mask for one new token each, position ids) for sessions whose caches hold
    `lengths` tokens."""
    longest = max(lengths)
    batch = DynamicCache(config=config)
    for index in layers:
        keys, values = [], []
        for cache, length in zip(caches, lengths, strict=True):
            key, value = _keys_values(cache, index)
            keys.append(torch.nn.functional.pad(key, (0, 0, longest - length, 0)))
            values.append(torch.nn.functional.pad(value, (0, 0, longest - length, 0)))
        batch.update(torch.cat(keys), torch.cat(values), index)
    mask = torch.zeros(len(lengths), longest + 1, dtype=torch.long, device=device)
    for row, length in enumerate(lengths):
        mask[row, longest - length :] = 1
    positions = torch.tensor([[length] for length in lengths], device=device)
    return batch, mask, positions


def scatter_last(batch: DynamicCache, caches: Sequence[DynamicCache], layers: range) -> None:
    """Append the batch's newest position of each row to that session's own cache."""
    for index in layers:
        key, value = _keys_values(batch, index)
        for row, cache in enumerate(caches):
            cache.update(key[row : row + 1, :, -1:], value[row : row + 1, :, -1:], index)


def _keys_values(cache: DynamicCache, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    layer = cache.layers[index]
    if not isinstance(layer, DynamicLayer) or layer.keys is None or layer.values is None:
        raise SwarmError(f"layer {index} of this cache holds no keys and values to batch")
    return layer.keys, layer.values
