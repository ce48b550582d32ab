"""Spans chained together must reproduce the full model: greedy tokens exactly, logits within float32 noise."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    PretrainedConfig,
    Qwen2Config,
)

from swarm.errors import SwarmError
from swarm.model.families import family_named
from swarm.model.span import Span, build_skeleton, load_tensors, make_positions

# Prefill logits of chained spans vs the full model, float32.
LOGITS_ATOL = 1e-4
PROMPT_LENGTH = 6
NEW_TOKENS = 8
# No special tokens: generate() must not stop early on a random model that happens to emit EOS.
NO_SPECIAL_TOKENS: dict[str, Any] = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
LLAMA_SIZES: dict[str, Any] = {
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    **NO_SPECIAL_TOKENS,
}


@dataclass(frozen=True)
class Case:
    family: str
    config: PretrainedConfig
    # Block ranges of the chained spans; the first holds the embeddings, the last the head.
    spans: tuple[tuple[int, int], ...]


CASES = {
    "llama": Case("llama", LlamaConfig(**LLAMA_SIZES), ((0, 1), (1, 3))),
    "llama-tied": Case("llama", LlamaConfig(**LLAMA_SIZES, tie_word_embeddings=True), ((0, 2), (2, 3))),
    # A window shorter than the prompt, so the sliding mask and the sliding cache both matter.
    "mistral": Case("mistral", MistralConfig(**LLAMA_SIZES, sliding_window=4), ((0, 1), (1, 2), (2, 3))),
    "mixtral": Case(
        "mixtral",
        MixtralConfig(**LLAMA_SIZES, num_local_experts=4, num_experts_per_tok=2),
        ((0, 2), (2, 3)),
    ),
    # Hybrid: block 0 full attention, blocks 1-2 sliding; the second span starts on a sliding block.
    "qwen2": Case(
        "qwen2",
        Qwen2Config(**LLAMA_SIZES, use_sliding_window=True, sliding_window=4, max_window_layers=1),
        ((0, 1), (1, 3)),
    ),
    "gpt2": Case(
        "gpt2",
        GPT2Config(vocab_size=128, n_embd=32, n_layer=3, n_head=4, n_positions=64, **NO_SPECIAL_TOKENS),
        ((0, 1), (1, 2), (2, 3)),
    ),
}


@dataclass
class Checkpoint:
    case: Case
    model: Any
    directory: Path
    # Chunk files as the publisher cuts them: "embed", "head" and one "blocks-<i>" per block.
    chunks: dict[str, Path]

    def files_for(self, start: int, end: int, has_embed: bool, has_head: bool) -> list[Path]:
        names = [f"blocks-{index}" for index in range(start, end)]
        tied = bool(getattr(self.case.config, "tie_word_embeddings", False))
        if has_embed or (has_head and tied):
            names.append("embed")
        if has_head and "head" in self.chunks:
            names.append("head")
        return [self.chunks[name] for name in names]


def random_ids(vocab_size: int, batch_size: int = 1, length: int = PROMPT_LENGTH) -> torch.Tensor:
    # A private generator keeps prompts independent of test order.
    return torch.randint(0, vocab_size, (batch_size, length), generator=torch.Generator().manual_seed(1234))


def write_chunks(family_name: str, directory: Path) -> dict[str, Path]:
    """Split model.safetensors by the publisher's name patterns, keeping names and bytes as they are."""
    family = family_named(family_name)
    assert family is not None
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in load_file(directory / "model.safetensors").items():
        part, index = family.part_of(name)
        parts.setdefault(part if index is None else f"blocks-{index}", {})[name] = tensor
    chunks = {}
    for chunk, tensors in parts.items():
        chunks[chunk] = directory / f"{chunk}.safetensors"
        save_file(tensors, chunks[chunk], metadata={"format": "pt"})
    return chunks


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    case = CASES[request.param]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(case.config).eval()
    directory = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(directory)
    return Checkpoint(case, model, directory, write_chunks(case.family, directory))


def load_spans(checkpoint: Checkpoint, dtype: torch.dtype | None = None) -> list[Span]:
    case, last = checkpoint.case, len(checkpoint.case.spans) - 1
    spans = []
    for position, (start, end) in enumerate(case.spans):
        has_embed, has_head = position == 0, position == last
        tensors = load_tensors(checkpoint.files_for(start, end, has_embed, has_head))
        config = case.config.to_dict()  # peers get config.json, not a config object
        spans.append(Span(config, case.family, start, end, has_embed, has_head, tensors, dtype=dtype))
    return spans


def greedy_through_spans(
    spans: list[Span], prompt: torch.Tensor, prefill_chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decode through chained spans, one token per step after prefill: (all ids, prompt logits).

    ``prefill_chunk`` feeds the prompt in pieces, so steps of several tokens meet a non-empty cache.
    """
    caches = [span.new_session_cache() for span in spans]

    def step(step_ids: torch.Tensor) -> torch.Tensor:
        positions = make_positions(spans[0].cached_length(caches[0]), step_ids.shape[1])
        hidden = spans[0].embed(step_ids, positions)
        for span, cache in zip(spans, caches, strict=True):
            hidden = span.forward(hidden, cache, positions)
        return spans[-1].head(hidden)

    prompt_logits = torch.cat([step(piece) for piece in prompt.split(prefill_chunk or prompt.shape[1], dim=1)], 1)
    ids = torch.cat([prompt, prompt_logits[:, -1:].argmax(dim=-1)], dim=1)
    for _ in range(NEW_TOKENS - 1):
        ids = torch.cat([ids, step(ids[:, -1:])[:, -1:].argmax(dim=-1)], dim=1)
    for span, cache in zip(spans, caches, strict=True):
        assert span.cached_length(cache) == ids.shape[1] - 1
    return ids, prompt_logits


def reference_generate(model: Any, prompt: torch.Tensor) -> torch.Tensor:
    return model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=NEW_TOKENS)


@pytest.mark.parametrize("prefill_chunk", [None, 4], ids=["one-prefill", "chunked-prefill"])
def test_chained_spans_match_full_model(checkpoint: Checkpoint, prefill_chunk: int | None) -> None:
    spans = load_spans(checkpoint)
    prompt = random_ids(checkpoint.case.config.vocab_size)
    ids, prompt_logits = greedy_through_spans(spans, prompt, prefill_chunk)
    with torch.no_grad():
        full_logits = checkpoint.model(prompt).logits
    torch.testing.assert_close(prompt_logits, full_logits, atol=LOGITS_ATOL, rtol=0)
    assert ids.tolist() == reference_generate(checkpoint.model, prompt).tolist()


def test_spans_pass_the_cache_without_deprecated_keywords(checkpoint: Checkpoint) -> None:
    """Mask builders and decoder blocks take the KV cache as `cache`; `past_key_values` emits a FutureWarning."""
    spans = load_spans(checkpoint)
    prompt = random_ids(checkpoint.case.config.vocab_size)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FutureWarning)  # "always": a warning seen by an earlier test still counts
        greedy_through_spans(spans, prompt, prefill_chunk=4)
    deprecated = [str(warning.message) for warning in caught if "past_key_values" in str(warning.message)]
    assert not deprecated


def test_span_allocates_only_its_blocks(checkpoint: Checkpoint) -> None:
    """Given every tensor of the checkpoint, a blocks-only span materializes its blocks and nothing else."""
    case = checkpoint.case
    start, end = case.spans[-1]
    tensors = load_tensors(checkpoint.chunks.values())
    span = Span(case.config, case.family, start, end, False, False, tensors)
    layers_path = span.layout.layers
    in_range = tuple(f"{layers_path}.{index}." for index in range(start, end))
    materialized = span.materialized_parameters()
    assert materialized and all(name.startswith(in_range) for name in materialized)
    expected = {name: value for name, value in checkpoint.model.named_parameters() if name.startswith(in_range)}
    assert materialized.keys() == expected.keys()
    # Equal values also prove Mixtral's per-expert checkpoint tensors were fused in the right order.
    assert all(torch.equal(materialized[name], expected[name]) for name in expected)
    assert all(parameter.is_meta for name, parameter in span.model.named_parameters() if name not in materialized)
    assert span.ignored_tensors


def test_batch_of_equal_length_prompts(checkpoint: Checkpoint) -> None:
    spans = load_spans(checkpoint)
    prompts = random_ids(checkpoint.case.config.vocab_size, batch_size=2)
    ids, _ = greedy_through_spans(spans, prompts)
    assert ids.tolist() == reference_generate(checkpoint.model, prompts).tolist()


def test_bfloat16_spans(checkpoint: Checkpoint) -> None:
    spans = load_spans(checkpoint, dtype=torch.bfloat16)
    assert {parameter.dtype for span in spans for parameter in span.materialized_parameters().values()} == {
        torch.bfloat16
    }
    prompt = random_ids(checkpoint.case.config.vocab_size)
    _, prefill_logits = greedy_through_spans(spans, prompt)
    with torch.no_grad():
        full_logits = checkpoint.model(prompt).logits
    assert prefill_logits.dtype == torch.bfloat16
    # bfloat16 keeps ~3 significant digits; this only catches a broken cast, not rounding.
    torch.testing.assert_close(prefill_logits.float(), full_logits, atol=0.1, rtol=0.05)


def test_head_only_span_over_tied_embeddings() -> None:
    case = CASES["llama-tied"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(case.config).eval()
    tensors = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    tensors.pop("lm_head.weight")  # save_pretrained drops the tied copy; so must we
    layer_count = case.config.num_hidden_layers
    body = Span(case.config, "llama", 0, layer_count, True, False, tensors)
    head = Span(case.config, "llama", layer_count, layer_count, False, True, tensors)
    assert head.model.lm_head.weight is head.model.model.embed_tokens.weight
    assert set(head.materialized_parameters()) == {"model.embed_tokens.weight", "model.norm.weight"}
    prompt = random_ids(case.config.vocab_size)
    cache = body.new_session_cache()
    positions = make_positions(0, PROMPT_LENGTH)
    logits = head.head(head.forward(body.forward(body.embed(prompt, positions), cache, positions)))
    with torch.no_grad():
        torch.testing.assert_close(logits, model(prompt).logits, atol=LOGITS_ATOL, rtol=0)


def test_unprefixed_gpt2_checkpoint() -> None:
    """Old GPT-2 checkpoints name tensors `h.0...`, `wte...` without the `transformer.` prefix."""
    config = CASES["gpt2"].config
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    tensors = {name.removeprefix("transformer."): tensor for name, tensor in model.state_dict().items()}
    span = Span(config, "gpt2", 0, config.n_layer, True, True, tensors)
    prompt = random_ids(config.vocab_size)
    positions = make_positions(0, PROMPT_LENGTH)
    logits = span.head(span.forward(span.embed(prompt, positions), span.new_session_cache(), positions))
    with torch.no_grad():
        torch.testing.assert_close(logits, model(prompt).logits, atol=LOGITS_ATOL, rtol=0)


def test_missing_block_tensor_is_reported() -> None:
    config = CASES["llama"].config
    torch.manual_seed(0)
    tensors = dict(AutoModelForCausalLM.from_config(config).state_dict())
    tensors.pop("model.layers.1.mlp.up_proj.weight")
    with pytest.raises(SwarmError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        Span(config, "llama", 1, 2, False, False, tensors)


def test_tied_head_without_embedding_is_reported() -> None:
    config = CASES["llama-tied"].config
    torch.manual_seed(0)
    tensors = dict(AutoModelForCausalLM.from_config(config).state_dict())
    head_tensors = {name: tensor for name, tensor in tensors.items() if name == "model.norm.weight"}
    with pytest.raises(SwarmError, match=r"lm_head\.weight.*embedding tensor"):
        Span(config, "llama", config.num_hidden_layers, config.num_hidden_layers, False, True, head_tensors)


def test_skeleton_is_on_meta() -> None:
    skeleton = build_skeleton(CASES["mixtral"].config.to_dict(), "mixtral")
    assert all(parameter.is_meta for parameter in skeleton.parameters())


# ----- BERT: an encoder, no cache; the whole sequence runs through each span -----

BERT_CONFIG = BertConfig(
    vocab_size=128,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


def bert_spans(tensors: dict[str, torch.Tensor], config: PretrainedConfig = BERT_CONFIG) -> list[Span]:
    return [
        Span(config.to_dict(), "bert", 0, 1, True, False, tensors),
        Span(config.to_dict(), "bert", 1, 2, False, True, tensors),
    ]


def run_bert(spans: list[Span], input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    hidden = spans[0].embed(input_ids)
    for span in spans:
        hidden = span.forward(hidden, attention_mask=attention_mask)
    return hidden


def test_bert_spans_match_encoder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = AutoModel.from_config(BERT_CONFIG).eval()
    model.save_pretrained(tmp_path)
    spans = bert_spans(load_tensors(write_chunks("bert", tmp_path).values()))
    input_ids = random_ids(BERT_CONFIG.vocab_size, batch_size=2, length=7)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0  # second sequence is padded
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask)
    hidden = run_bert(spans, input_ids, attention_mask)
    torch.testing.assert_close(hidden, expected.last_hidden_state, atol=1e-5, rtol=0)
    pooled = spans[-1].pool(hidden, attention_mask, mode="pooler")
    torch.testing.assert_close(pooled, expected.pooler_output, atol=1e-5, rtol=0)
    weights = attention_mask.unsqueeze(-1).float()
    mean = (expected.last_hidden_state * weights).sum(dim=1) / weights.sum(dim=1)
    torch.testing.assert_close(spans[-1].pool(hidden, attention_mask), mean, atol=1e-5, rtol=0)


def test_bert_declared_pooling_and_masked_lm_checkpoint() -> None:
    """A *ForMaskedLM checkpoint: `bert.` prefixed names, an MLM head to ignore, and no pooler weights."""
    torch.manual_seed(0)
    masked_lm = BertForMaskedLM(BERT_CONFIG).eval()
    config = BertConfig(**{**BERT_CONFIG.to_dict(), "pooling_mode": "cls"})
    spans = bert_spans(dict(masked_lm.state_dict()), config)
    assert any(name.startswith("cls.") for name in spans[-1].ignored_tensors)
    input_ids = random_ids(BERT_CONFIG.vocab_size, length=7)
    attention_mask = torch.ones_like(input_ids)
    hidden = run_bert(spans, input_ids, attention_mask)
    with torch.no_grad():
        expected = masked_lm.bert(input_ids=input_ids).last_hidden_state
    torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(spans[-1].pool(hidden, attention_mask), expected[:, 0], atol=1e-5, rtol=0)
    with pytest.raises(SwarmError, match="no pooler"):
        spans[-1].pool(hidden, attention_mask, mode="pooler")
