"""Architecture adapters: where a family keeps its embeddings, blocks and head, by checkpoint tensor name."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

Part = Literal["embed", "block", "head"]


@dataclass(frozen=True)
class Family:
    """How one architecture family names its checkpoint tensors.

    Tensor names stay exactly as the checkpoint wrote them; optional prefixes cover both the
    task-model layout (``model.layers.0``) and the bare base-model layout (``layers.0``).
    """

    name: str
    model_types: tuple[str, ...]
    block_pattern: re.Pattern[str]
    embed_pattern: re.Pattern[str]
    layer_count_keys: tuple[str, ...]
    # Causal decoders keep a KV cache and have a language-model head; encoders do neither.
    causal: bool

    def part_of(self, tensor_name: str) -> tuple[Part, int | None]:
        """Which part of the model a tensor belongs to, and its block index for blocks.

        Everything that is neither an embedding nor a block is head (final norm, LM head, pooler),
        so every tensor lands in exactly one part.
        """
        block = self.block_pattern.match(tensor_name)
        if block:
            return "block", int(block.group(1))
        if self.embed_pattern.match(tensor_name):
            return "embed", None
        return "head", None

    def layer_count(self, config: dict[str, Any]) -> int:
        for key in self.layer_count_keys:
            value = config.get(key)
            if isinstance(value, int) and value > 0:
                return value
        raise KeyError(f"config has none of {', '.join(self.layer_count_keys)}")


def _llama_like(name: str) -> Family:
    return Family(
        name=name,
        model_types=(name,),
        block_pattern=re.compile(r"^(?:model\.)?layers\.(\d+)\."),
        embed_pattern=re.compile(r"^(?:model\.)?embed_tokens\."),
        layer_count_keys=("num_hidden_layers",),
        causal=True,
    )


FAMILIES: tuple[Family, ...] = (
    _llama_like("llama"),
    _llama_like("mistral"),
    _llama_like("mixtral"),
    _llama_like("qwen2"),
    Family(
        name="gpt2",
        model_types=("gpt2",),
        block_pattern=re.compile(r"^(?:transformer\.)?h\.(\d+)\."),
        embed_pattern=re.compile(r"^(?:transformer\.)?(?:wte|wpe)\."),
        layer_count_keys=("n_layer", "num_hidden_layers"),
        causal=True,
    ),
    Family(
        name="bert",
        model_types=("bert",),
        block_pattern=re.compile(r"^(?:bert\.)?encoder\.layer\.(\d+)\."),
        embed_pattern=re.compile(r"^(?:bert\.)?embeddings\."),
        layer_count_keys=("num_hidden_layers",),
        causal=False,
    ),
)


def family_for(config: dict[str, Any]) -> Family | None:
    """The adapter for a HF config, or None for an architecture served only as a whole replica."""
    model_type = config.get("model_type")
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    return None


def family_named(name: str) -> Family | None:
    for family in FAMILIES:
        if family.name == name:
            return family
    return None
