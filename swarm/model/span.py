"""Loading and running a span: a contiguous range of a model's blocks, optionally with its embeddings and head.

A peer builds the whole model as a skeleton on the meta device (no memory), then materializes only the
parameters its span needs from the original checkpoint tensors it downloaded. Everything else stays on
meta. Activations enter and leave the span as hidden states, so spans on different peers chain into the
full model.

Checkpoint tensors go through transformers' own load-time conversion (``get_model_conversion_mapping`` +
``convert_and_load_state_dict_in_model``), the same path ``from_pretrained`` takes, so architectures whose
modules differ from their checkpoints load correctly. Mixtral is the case that matters here: its checkpoints
hold one ``...block_sparse_moe.experts.{e}.w1/w2/w3.weight`` per expert, while the 5.x module holds the
experts fused as 3D ``...mlp.experts.gate_up_proj`` and ``...mlp.experts.down_proj`` parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from transformers import AutoModel, AutoModelForCausalLM, DynamicCache, PretrainedConfig
from transformers.cache_utils import get_layer_types_and_kwargs
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import (
    WeightConverter,
    WeightRenaming,
    convert_and_load_state_dict_in_model,
    rename_source_key,
)
from transformers.masking_utils import (
    create_bidirectional_mask,
    create_causal_mask,
    create_chunked_causal_mask,
    create_sliding_window_causal_mask,
)
from transformers.modeling_utils import LoadStateDictConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import logging as transformers_logging

from swarm.errors import SwarmError
from swarm.model import batched_cache
from swarm.model.families import Family

ConfigLike = Mapping[str, Any] | PretrainedConfig


@dataclass(frozen=True)
class ModuleLayout:
    """Where a family keeps its parts in the transformers module tree (module paths, not checkpoint names)."""

    embed_modules: tuple[str, ...]
    layers: str
    # The same blocks inside the family's base model (what every task model of the family wraps).
    base_layers: str
    head_modules: tuple[str, ...]
    # Head modules the checkpoint may legitimately lack (BERT checkpoints from *ForMaskedLM have no pooler).
    optional_head_modules: tuple[str, ...] = ()
    # Parameter-free modules that every block needs (rotary embeddings).
    shared_modules: tuple[str, ...] = ()
    causal: bool = True


_LLAMA_LIKE = ModuleLayout(
    embed_modules=("model.embed_tokens",),
    layers="model.layers",
    base_layers="layers",
    head_modules=("model.norm", "lm_head"),
    shared_modules=("model.rotary_emb",),
)
_LAYOUTS: dict[str, ModuleLayout] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gpt2": ModuleLayout(
        embed_modules=("transformer.wte", "transformer.wpe"),
        layers="transformer.h",
        base_layers="h",
        head_modules=("transformer.ln_f", "lm_head"),
    ),
    # AutoModel gives the bare BertModel: checkpoints with the `bert.` prefix lose it on load.
    "bert": ModuleLayout(
        embed_modules=("embeddings",),
        layers="encoder.layer",
        base_layers="encoder.layer",
        head_modules=(),
        optional_head_modules=("pooler",),
        causal=False,
    ),
}
SUPPORTED_FAMILIES: tuple[str, ...] = tuple(_LAYOUTS)

# Mask builders by the layer types transformers' DynamicCache uses (see `get_layer_types_and_kwargs`).
_MASK_BUILDERS: dict[str, Callable[..., Any]] = {
    "full_attention": create_causal_mask,
    "sliding_attention": create_sliding_window_causal_mask,
    "chunked_attention": create_chunked_causal_mask,
}
POOLING_MODES = ("mean", "cls", "max", "pooler")


def _family_name(family: str | Family) -> str:
    name = family if isinstance(family, str) else family.name
    if name not in _LAYOUTS:
        raise SwarmError(f"span loading does not support the {name!r} family")
    return name


def to_config(config: ConfigLike) -> PretrainedConfig:
    """A transformers config from either a config object or the parsed config.json dict."""
    if isinstance(config, PretrainedConfig):
        return config
    model_type = str(config.get("model_type"))
    if model_type not in CONFIG_MAPPING:
        raise SwarmError(f"config.json has an unknown model_type {model_type!r}")
    return CONFIG_MAPPING[model_type].from_dict(dict(config))


def build_skeleton(config: ConfigLike, family: str | Family, dtype: torch.dtype | None = None) -> Any:
    """The full model with every parameter on the meta device (buffers such as rotary frequencies stay real).

    Causal families get their *ForCausalLM class, BERT the bare encoder (AutoModel). Nothing is allocated
    for parameters, so this is cheap even for very large models.
    """
    name = _family_name(family)
    hf_config = to_config(config)
    auto_class = AutoModelForCausalLM if _LAYOUTS[name].causal else AutoModel
    with init_empty_weights():
        model = auto_class.from_config(hf_config, dtype=dtype or torch.float32)
    return model.eval()


def blocks_path(model: Any, family: str | Family) -> str:
    """Where `model`, any model class of `family` (a task model, its base model), keeps its blocks."""
    base_layers = _LAYOUTS[_family_name(family)].base_layers
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and hasattr(model, prefix):
        return f"{prefix}.{base_layers}"
    return base_layers


def load_tensors(paths: Iterable[str | Path], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of the given safetensors files, by its original name. A name in two files is an error."""
    tensors: dict[str, torch.Tensor] = {}
    for path in paths:
        with safe_open(str(path), framework="pt", device=str(device)) as reader:
            for name in reader.keys():  # noqa: SIM118 - safe_open readers are not iterable
                if name in tensors:
                    raise SwarmError(f"tensor {name} appears in more than one chunk file ({path})")
                tensors[name] = reader.get_tensor(name)
    return tensors


def load_into(
    model: Any,
    tensors: Mapping[str, torch.Tensor],
    wanted: Callable[[str], bool],
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[set[str], list[str]]:
    """Materialize the parameters of a meta-device `model` that `wanted` names (by their name in the model) from
    checkpoint `tensors`, with the renames and converters from_pretrained would apply. Returns the model's keys left
    missing and the checkpoint names not wanted (ignored)."""
    transforms = get_model_conversion_mapping(model)
    renamings = [entry for entry in transforms if isinstance(entry, WeightRenaming)]
    converters = [entry for entry in transforms if isinstance(entry, WeightConverter)]
    weight_mapping: list[WeightConverter | WeightRenaming] = [*renamings, *converters]
    # Its per-tensor progress bar would land in the output of `swarm run`.
    transformers_logging.disable_progress_bar()
    meta_state = model.state_dict()
    needed: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for name, tensor in tensors.items():
        # Filter on the name the tensor will have inside the model, so one rule covers every checkpoint spelling
        # (prefixed or not, per-expert or fused).
        target, _ = rename_source_key(name, renamings, converters, model.base_model_prefix, meta_state)
        if target not in meta_state and name in meta_state:
            target = name  # the loader's own fallback: a name the model already uses is never renamed
        if wanted(target):
            needed[name] = tensor
        else:
            ignored.append(name)
    load_config = LoadStateDictConfig(device_map={"": str(device)}, dtype=dtype, weight_mapping=weight_mapping)
    info, _ = convert_and_load_state_dict_in_model(model, needed, load_config)
    if info.conversion_errors:
        raise SwarmError(f"could not convert span tensors: {'; '.join(sorted(info.conversion_errors))}")
    if info.mismatched_keys:
        shapes = ", ".join(f"{key} {tuple(got)} != {tuple(want)}" for key, got, want in sorted(info.mismatched_keys))
        raise SwarmError(f"span tensors have the wrong shapes for this config: {shapes}")
    return set(info.missing_keys), ignored


def make_positions(past_length: int, num_tokens: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """Position ids ``[[past_length, ..., past_length + num_tokens - 1]]`` for one step of a session."""
    return torch.arange(past_length, past_length + num_tokens, device=device).unsqueeze(0)


class Span:
    """Blocks ``[start, end)`` of a model, plus its embeddings (``has_embed``) and head (``has_head``).

    ``tensors`` maps original checkpoint names to tensors; it may hold more than the span needs (whole
    chunk files that straddle the span's edges): only the needed ones are materialized. A head over tied
    embeddings needs the embedding tensor too.
    """

    def __init__(
        self,
        config: ConfigLike,
        family: str | Family,
        start: int,
        end: int,
        has_embed: bool,
        has_head: bool,
        tensors: Mapping[str, torch.Tensor],
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        self.family = _family_name(family)
        self.layout = _LAYOUTS[self.family]
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self.model = build_skeleton(config, self.family, self.dtype)
        self.config: PretrainedConfig = self.model.config
        if not self.layout.causal and getattr(self.config, "is_decoder", False):
            raise SwarmError("span loading runs BERT as an encoder only, but this config is a decoder")
        layer_count = len(self.model.get_submodule(self.layout.layers))
        if not 0 <= start <= end <= layer_count:
            raise SwarmError(f"span blocks [{start}, {end}) are outside the model's {layer_count} blocks")
        self.start, self.end = start, end
        self.has_embed, self.has_head = has_embed, has_head
        self._load(tensors)
        self._layer_types = self._resolve_layer_types()

    # ----- loading -----

    def _wanted_prefixes(self) -> tuple[str, ...]:
        prefixes = [f"{self.layout.layers}.{index}." for index in range(self.start, self.end)]
        if self.has_embed:
            prefixes += [f"{module}." for module in self.layout.embed_modules]
        if self.has_head:
            prefixes += [f"{module}." for module in self.layout.head_modules + self.layout.optional_head_modules]
            # Tied embeddings: the head's weight *is* the input embedding, so accept it for a head span too.
            prefixes += list(self.model.all_tied_weights_keys.values())
        return tuple(prefixes)

    def _load(self, tensors: Mapping[str, torch.Tensor]) -> None:
        wanted = self._wanted_prefixes()
        missing_keys, self.ignored_tensors = load_into(
            self.model, tensors, lambda target: target.startswith(wanted) or target in wanted, self.device, self.dtype
        )
        if self.has_head:
            self._tie_head(missing_keys)
        self._check_materialized()
        for module in self._needed_modules():
            module.to(self.device)  # parameters are already there; this moves buffers (rotary, position ids)

    def _tie_head(self, missing_keys: set[str]) -> None:
        """Share the LM head and input embedding weights when the config ties them.

        Symmetric, as in from_pretrained: whichever side was loaded becomes the shared weight. With neither
        side loaded, nothing is tied and the missing-tensor check names what to supply.
        """
        tied = self.model.all_tied_weights_keys
        if tied and all(target not in missing_keys or source not in missing_keys for target, source in tied.items()):
            self.model.tie_weights(missing_keys=missing_keys, recompute_mapping=False)

    def _needed_modules(self) -> list[torch.nn.Module]:
        paths = list(self.layout.shared_modules)
        paths += [f"{self.layout.layers}.{index}" for index in range(self.start, self.end)]
        if self.has_embed:
            paths += self.layout.embed_modules
        if self.has_head:
            paths += self.layout.head_modules
            paths += [path for path in self.layout.optional_head_modules if self._is_materialized(path)]
        return [self.model.get_submodule(path) for path in paths]

    def _is_materialized(self, module_path: str) -> bool:
        try:
            module = self.model.get_submodule(module_path)
        except AttributeError:  # e.g. a BertModel built without its pooler
            return False
        return all(not parameter.is_meta for parameter in module.parameters())

    def _check_materialized(self) -> None:
        # remove_duplicate=False: a tied lm_head.weight would otherwise hide behind the embedding's name.
        missing = [
            name
            for name, parameter in self.model.named_parameters(remove_duplicate=False)
            if parameter.is_meta and self._belongs_to_span(name)
        ]
        if missing:
            hint = ""
            if self.has_head and self.model.all_tied_weights_keys:
                hint = " (the head of a model with tied embeddings also needs the embedding tensor)"
            raise SwarmError(f"span tensors are missing: {', '.join(missing)}{hint}")

    def _belongs_to_span(self, parameter_name: str) -> bool:
        prefixes = [f"{path}." for path in self.layout.shared_modules]
        prefixes += [f"{self.layout.layers}.{index}." for index in range(self.start, self.end)]
        if self.has_embed:
            prefixes += [f"{path}." for path in self.layout.embed_modules]
        if self.has_head:
            prefixes += [f"{path}." for path in self.layout.head_modules]
        return parameter_name.startswith(tuple(prefixes))

    def materialized_parameters(self) -> dict[str, torch.Tensor]:
        """Parameters that hold real memory (every other parameter of the skeleton is on meta)."""
        return {name: parameter for name, parameter in self.model.named_parameters() if not parameter.is_meta}

    def _resolve_layer_types(self) -> list[str]:
        if not self.layout.causal:
            return []
        layer_types, _ = get_layer_types_and_kwargs(self.config.get_text_config(decoder=True))
        span_types = list(layer_types[self.start : self.end])
        unsupported = sorted(set(span_types) - set(_MASK_BUILDERS))
        if unsupported:
            raise SwarmError(f"span blocks use attention types this peer cannot run: {', '.join(unsupported)}")
        return span_types

    # ----- running -----

    def new_session_cache(self) -> DynamicCache | None:
        """A KV cache for one session. It is sized for the full model so blocks index it by their absolute
        layer index; only this span's entries ever fill. Encoders (BERT) keep no cache."""
        if not self.layout.causal:
            return None
        return DynamicCache(config=self.config)

    def cached_length(self, session_cache: DynamicCache | None) -> int:
        """Tokens this span's cache already holds (the default ``get_seq_length()`` reads layer 0, which a span
        past layer 0 never fills)."""
        if session_cache is None or self.start == self.end:
            return 0
        return int(session_cache.get_seq_length(self.start))

    @torch.no_grad()
    def embed(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token ids ``(batch, seq)`` to the first block's input hidden states."""
        if not self.has_embed:
            raise SwarmError("this span does not hold the embeddings")
        input_ids = input_ids.to(self.device)
        if self.family == "bert":
            position_ids = None if positions is None else _as_position_ids(positions, self.device)
            token_types = None if token_type_ids is None else token_type_ids.to(self.device)
            embeddings = self.model.get_submodule("embeddings")
            return embeddings(input_ids=input_ids, position_ids=position_ids, token_type_ids=token_types)
        if self.family == "gpt2":
            if positions is None:
                raise SwarmError("gpt2 embeddings need the token positions")
            position_ids = _as_position_ids(positions, self.device)
            word = self.model.get_submodule("transformer.wte")(input_ids)
            return word + self.model.get_submodule("transformer.wpe")(position_ids)
        # Llama-like models have no position embeddings here: rotary positions apply inside each block.
        return self.model.get_submodule("model.embed_tokens")(input_ids)

    @torch.no_grad()
    def forward(
        self,
        hidden: torch.Tensor,
        session_cache: DynamicCache | None = None,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run blocks ``[start, end)``.

        Causal families: ``hidden`` holds only the new tokens, ``positions`` their absolute positions, and
        ``session_cache`` (from :meth:`new_session_cache`) the earlier tokens' keys and values, updated in place.
        BERT: ``hidden`` is the whole sequence and ``attention_mask`` an optional ``(batch, seq)`` padding mask.
        """
        hidden = hidden.to(device=self.device, dtype=self.dtype)
        layers = self.model.get_submodule(self.layout.layers)
        if not self.layout.causal:
            mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
            for index in range(self.start, self.end):
                hidden = layers[index](hidden, attention_mask=mask)
            return hidden
        if self.start == self.end:
            return hidden
        if positions is None or session_cache is None:
            raise SwarmError("a causal span needs the token positions and a session cache")
        position_ids = _as_position_ids(positions, self.device)
        masks = self._masks(hidden, session_cache, position_ids, attention_mask)
        # `cache` is the decoder layers' name for the KV cache; `past_key_values` is deprecated (FutureWarning).
        block_kwargs: dict[str, Any] = {"position_ids": position_ids, "cache": session_cache, "use_cache": True}
        if self.layout.shared_modules:
            block_kwargs["position_embeddings"] = self.model.get_submodule("model.rotary_emb")(hidden, position_ids)
        for offset, index in enumerate(range(self.start, self.end)):
            hidden = layers[index](hidden, attention_mask=masks[self._layer_types[offset]], **block_kwargs)
        return hidden

    @torch.no_grad()
    def forward_together(
        self, hidden: Sequence[torch.Tensor], session_caches: Sequence[DynamicCache], lengths: Sequence[int]
    ) -> list[torch.Tensor]:
        """One new token for each of several sessions as one batched forward: ``hidden[i]`` (1, 1, hidden) at
        position ``lengths[i]`` after what ``session_caches[i]`` holds (swarm.model.batched_cache); outputs equal the
        sessions' own steps up to float rounding."""
        layers = range(self.start, self.end)
        batch, mask, positions = batched_cache.gather(session_caches, lengths, layers, self.config, self.device)
        output = self.forward(torch.cat(list(hidden)), session_cache=batch, positions=positions, attention_mask=mask)
        batched_cache.scatter_last(batch, session_caches, layers)
        return [output[row : row + 1] for row in range(len(lengths))]

    @torch.no_grad()
    def encode_together(
        self, hidden: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None]
    ) -> list[torch.Tensor]:
        """Several encoder requests as one forward: ``hidden[i]`` (batch_i, tokens_i, hidden) with its padding mask
        (None: every token counts) are right-padded to the longest and masked (positions were embedded by the
        client, so padding after the text moves nothing); each request's rows and tokens come back as its own
        step gives them, up to float rounding."""
        longest = max(int(item.shape[1]) for item in hidden)
        rows, row_masks = [], []
        for item, mask in zip(hidden, masks, strict=True):
            padding = longest - int(item.shape[1])
            rows.append(torch.nn.functional.pad(item.to(device=self.device, dtype=self.dtype), (0, 0, 0, padding)))
            given = mask if mask is not None else torch.ones(item.shape[:2], dtype=torch.long)
            row_masks.append(torch.nn.functional.pad(given.to(device=self.device, dtype=torch.long), (0, padding)))
        output = self.forward(torch.cat(rows), attention_mask=torch.cat(row_masks))
        results, offset = [], 0
        for item in hidden:
            batch, tokens = int(item.shape[0]), int(item.shape[1])
            results.append(output[offset : offset + batch, :tokens])
            offset += batch
        return results

    def batchable(self, session_cache: DynamicCache | None) -> bool:
        """Whether a session's cache can join a batched step over this span."""
        return self.layout.causal and batched_cache.batchable(session_cache, range(self.start, self.end))

    def _masks(
        self,
        hidden: torch.Tensor,
        session_cache: DynamicCache,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> dict[str, Any]:
        """One mask per attention type in the span, built before the blocks extend the cache.

        The mask builders size the mask from a cache layer: by default the model's first layer of that type,
        which a span past layer 0 never fills. Point them at the span's own first layer of each type.
        """
        masks: dict[str, Any] = {}
        for offset, layer_type in enumerate(self._layer_types):
            if layer_type in masks:
                continue
            masks[layer_type] = _MASK_BUILDERS[layer_type](
                config=self.config,
                inputs_embeds=hidden,
                attention_mask=attention_mask,
                cache=session_cache,  # not `past_key_values`: deprecated in the mask builders too
                position_ids=position_ids,
                layer_idx=self.start + offset,
            )
        return masks

    @torch.no_grad()
    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head: hidden states to logits ``(batch, seq, vocab)``."""
        if not self.has_head:
            raise SwarmError("this span does not hold the head")
        if not self.layout.causal:
            raise SwarmError("bert has no language-model head; use pool()")
        norm_path, lm_head_path = self.layout.head_modules
        hidden = self.model.get_submodule(norm_path)(hidden.to(device=self.device, dtype=self.dtype))
        return self.model.get_submodule(lm_head_path)(hidden)

    @torch.no_grad()
    def pool(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mode: str | None = None,
    ) -> torch.Tensor:
        """One embedding vector per sequence from an encoder's last hidden states ``(batch, seq, hidden)``.

        ``mode`` defaults to the config's declared ``pooling_mode`` and else to mean pooling over the
        (unpadded) tokens. ``"pooler"`` runs the checkpoint's own pooler (BERT: first token, dense, tanh).
        """
        if not self.has_head:
            raise SwarmError("this span does not hold the head")
        mode = mode or getattr(self.config, "pooling_mode", None) or "mean"
        if mode not in POOLING_MODES:
            raise SwarmError(f"unknown pooling mode {mode!r}; expected one of {', '.join(POOLING_MODES)}")
        hidden = hidden.to(device=self.device, dtype=self.dtype)
        if mode == "pooler":
            pooler_paths = [path for path in self.layout.optional_head_modules if self._is_materialized(path)]
            if not pooler_paths:
                raise SwarmError("the checkpoint has no pooler weights; use mean or cls pooling")
            return self.model.get_submodule(pooler_paths[0])(hidden)
        if mode == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], device=self.device)
        token_mask = attention_mask.to(device=self.device, dtype=hidden.dtype).unsqueeze(-1)
        if mode == "max":
            return hidden.masked_fill(token_mask == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
        return (hidden * token_mask).sum(dim=1) / token_mask.sum(dim=1).clamp(min=1)


# Other modules may know spans by this name.
SpanModel = Span


def _as_position_ids(positions: torch.Tensor, device: torch.device) -> torch.Tensor:
    position_ids = positions.to(device=device, dtype=torch.long)
    return position_ids.unsqueeze(0) if position_ids.ndim == 1 else position_ids
