#!/usr/bin/env python3
"""Write small but real Hugging Face model directories for tests, demos and benchmarks.

Every directory holds config.json, safetensors weights written by transformers' own
``save_pretrained`` (sharded with model.safetensors.index.json above ``--max-shard-size``),
generation_config.json for causal LMs, and a tokenizer trained here with the ``tokenizers``
library, so ``AutoTokenizer.from_pretrained(dir)`` and ``AutoModelForCausalLM.from_pretrained(dir)``
(``AutoModel`` for bert) work offline.

Examples::

    python tools/make_model.py --family llama --out /tmp/tiny-llama
    python tools/make_model.py --family mixtral --out /tmp/moe --experts 8 --params 20M
    python tools/make_model.py --family gpt2 --out /tmp/gpt2 --dtype bfloat16 --max-shard-size 1MB
    python tools/make_model.py --demo --out /tmp/zen      # tiny Llama trained on the Zen of Python
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import dataclasses
import io
import json
import math
import os
import re
import secrets
import shutil
import string
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
)
from transformers.utils.hub import convert_file_size_to_int

FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "gpt2", "bert")
# Families whose blocks are Llama-like (RMSNorm, gated MLP, rotary positions, grouped-query attention).
LLAMA_LIKE_FAMILIES = ("llama", "mistral", "mixtral", "qwen2")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

DEFAULT_LAYERS = 4
DEFAULT_HIDDEN = 64
DEFAULT_VOCAB = 512
DEFAULT_MAX_POSITIONS = 512
DEFAULT_EXPERTS = 4
DEFAULT_MAX_SHARD_SIZE = "200MB"
# --params prefers shapes with about this hidden size per layer (GPT-2 small is 768 / 12 layers).
PREFERRED_HIDDEN_PER_LAYER = 64.0
# --params first looks for shapes within this relative error, then picks the best-proportioned one.
PARAMS_TOLERANCE = 0.05

BOS_TOKEN, EOS_TOKEN, PAD_TOKEN = "<s>", "</s>", "<pad>"
QWEN2_END_OF_TEXT = "<|endoftext|>"
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Original text written for this tool (no copyright claimed), added to the Zen of Python so that
# larger tokenizer vocabularies have more words to learn.
EXTRA_CORPUS = """\
A swarm shares a model the way a crowd shares a song: each peer keeps a few pieces and passes them on.
The weights are split into shards, every shard has a hash, and every hash is checked before use.
When a peer joins, it asks its neighbours which pieces they hold, fetches the rarest pieces first,
and starts serving them to others as soon as they are verified. Nobody needs the whole file to help.
Small models are good for tests: they load in a moment, run on any computer, and fail loudly.
Numbers and symbols matter too: 0 1 2 3 4 5 6 7 8 9, 10 + 20 = 30, 3.14 < 4, a/b, x*y, (a, b), [1, 2].
"""


class MakeModelError(Exception):
    """A request that cannot be satisfied (bad option combination, existing output, ...)."""


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """Architecture sizes shared by all families (``experts`` only matters for mixtral)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    experts: int
    max_positions: int
    vocab: int


@dataclasses.dataclass(frozen=True)
class SpecialTokenIds:
    bos: int | None
    eos: int | None
    pad: int


# --------------------------------------------------------------------------------------------
# Text and tokenizers

# A plain-text chat template for the causal models (served chats need one; real checkpoints ship their own).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


# --------------------------------------------------------------------------------------------


def zen_of_python() -> str:
    """The Zen of Python (public domain), taken from the standard library's ``this`` module."""
    # Importing `this` prints the Zen the first time; keep stdout clean for callers.
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13")


def train_byte_level_bpe(
    vocab_size: int, texts: Sequence[str], max_positions: int, *, qwen2_style: bool = False
) -> tuple[PreTrainedTokenizerFast, SpecialTokenIds]:
    """Train a GPT-2 style byte-level BPE tokenizer; it never produces unknown tokens.

    The tokenizer adds no BOS automatically (like GPT-2 and Qwen2), so a prompt encodes to just
    its own tokens. The 256 byte symbols and the special tokens are always present, so the result
    can have more than ``vocab_size`` tokens when that is tiny, or fewer when the corpus runs out
    of merges. ``qwen2_style`` gives a tokenizer that loads unchanged as ``Qwen2Tokenizer``.
    """
    tokenizer = Tokenizer(models.BPE())
    if qwen2_style:
        # AutoTokenizer always loads qwen2 checkpoints as Qwen2Tokenizer, which keeps only the vocab and
        # merges and rebuilds Qwen's own normaliser and pre-tokenizer around them. Training with that exact
        # pipeline (and Qwen's single <|endoftext|> special token) makes the loaded tokenizer identical.
        qwen_pipeline = Qwen2Tokenizer().backend_tokenizer
        tokenizer.normalizer = qwen_pipeline.normalizer
        tokenizer.pre_tokenizer = qwen_pipeline.pre_tokenizer
        special_tokens = [QWEN2_END_OF_TEXT]
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        special_tokens = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN]
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)

    if qwen2_style:
        end_of_text = _token_id(tokenizer, QWEN2_END_OF_TEXT)
        trained = json.loads(tokenizer.to_str())["model"]
        # The BPE model wants (left, right) pairs, although the signature only mentions strings.
        merge_pairs: Any = [tuple(merge) for merge in trained["merges"]]
        qwen_tokenizer = Qwen2Tokenizer(
            vocab=trained["vocab"],
            merges=merge_pairs,
            model_max_length=max_positions,
        )
        # Like Qwen2 checkpoints: no BOS in text, <|endoftext|> doubles as the config's bos/eos/pad.
        return qwen_tokenizer, SpecialTokenIds(bos=end_of_text, eos=end_of_text, pad=end_of_text)

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=max_positions,
        clean_up_tokenization_spaces=False,
    )
    bos, eos, pad = (_token_id(tokenizer, token) for token in special_tokens)
    return wrapped, SpecialTokenIds(bos=bos, eos=eos, pad=pad)


def train_wordpiece(vocab_size: int, texts: Sequence[str], max_positions: int) -> tuple[BertTokenizer, SpecialTokenIds]:
    """Train a lower-casing BERT WordPiece tokenizer that wraps input in [CLS] ... [SEP]."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=list(BERT_SPECIAL_TOKENS),
        # Seed every printable ASCII character so words missing from the corpus still split into
        # pieces instead of collapsing to [UNK].
        initial_alphabet=sorted(set(string.ascii_lowercase + string.digits + string.punctuation)),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    cls_id, sep_id = _token_id(tokenizer, "[CLS]"), _token_id(tokenizer, "[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    wrapped = BertTokenizer(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_positions,
    )
    return wrapped, SpecialTokenIds(bos=None, eos=None, pad=_token_id(tokenizer, "[PAD]"))


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise MakeModelError(f"tokenizer training lost the special token {token!r}")
    return token_id


# --------------------------------------------------------------------------------------------
# Shapes, configs and parameter counts
# --------------------------------------------------------------------------------------------


def parse_param_count(text: str) -> int:
    """Parse ``"2M"``, ``"1.5G"``, ``"500k"`` or ``"123456"`` into a parameter count."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGbB]?)\s*", text)
    if match is None:
        raise ValueError(f"invalid parameter count {text!r}: use a number with an optional K/M/G suffix")
    multiplier = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}[match.group(2).lower()]
    count = round(float(match.group(1)) * multiplier)
    if count <= 0:
        raise ValueError(f"parameter count must be positive, got {text!r}")
    return count


def default_heads(hidden: int) -> int:
    # Head size grows with the model from 16 to 64, as in real model families.
    head_dim = min(64, max(16, hidden // 8))
    return max(1, hidden // head_dim)


def default_kv_heads(heads: int) -> int:
    # Grouped-query attention with two query heads per key/value head, when the head count allows.
    return heads // 2 if heads % 2 == 0 else heads


def default_intermediate(family: str, hidden: int) -> int:
    if family in LLAMA_LIKE_FAMILIES:
        # Gated MLPs use ~8/3 x hidden so they cost about as much as a 4 x hidden plain MLP.
        return _round_up(math.ceil(hidden * 8 / 3), 64)
    return 4 * hidden


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def derive_shape(
    family: str,
    *,
    layers: int,
    hidden: int,
    vocab: int,
    heads: int | None,
    kv_heads: int | None,
    intermediate: int | None,
    experts: int | None,
    max_positions: int,
) -> ModelShape:
    """Fill in unset sizes from ``hidden`` and validate the combination."""
    resolved_heads = heads if heads is not None else default_heads(hidden)
    if family in LLAMA_LIKE_FAMILIES:
        resolved_kv_heads = kv_heads if kv_heads is not None else default_kv_heads(resolved_heads)
    else:
        resolved_kv_heads = resolved_heads  # gpt2 and bert have no grouped-query attention
    shape = ModelShape(
        layers=layers,
        hidden=hidden,
        heads=resolved_heads,
        kv_heads=resolved_kv_heads,
        intermediate=intermediate if intermediate is not None else default_intermediate(family, hidden),
        experts=(experts if experts is not None else DEFAULT_EXPERTS) if family == "mixtral" else 1,
        max_positions=max_positions,
        vocab=vocab,
    )
    _validate_shape(shape)
    return shape


def _validate_shape(shape: ModelShape) -> None:
    for field in dataclasses.fields(shape):
        if getattr(shape, field.name) < 1:
            raise MakeModelError(f"{field.name} must be at least 1, got {getattr(shape, field.name)}")
    if shape.hidden % shape.heads:
        raise MakeModelError(f"hidden size {shape.hidden} is not divisible by {shape.heads} heads")
    if shape.heads % shape.kv_heads:
        raise MakeModelError(f"{shape.heads} attention heads are not divisible by {shape.kv_heads} kv heads")
    if (shape.hidden // shape.heads) % 2:
        raise MakeModelError(f"head size {shape.hidden // shape.heads} must be even for rotary embeddings")


def build_config(
    family: str, shape: ModelShape, special: SpecialTokenIds, tie_embeddings: bool | None
) -> PretrainedConfig:
    config: PretrainedConfig
    if family in LLAMA_LIKE_FAMILIES:
        config_class: Callable[..., PretrainedConfig] = {
            "llama": LlamaConfig,
            "mistral": MistralConfig,
            "mixtral": MixtralConfig,
            "qwen2": Qwen2Config,
        }[family]
        config = config_class(
            vocab_size=shape.vocab,
            hidden_size=shape.hidden,
            intermediate_size=shape.intermediate,
            num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads,
            num_key_value_heads=shape.kv_heads,
            max_position_embeddings=shape.max_positions,
            bos_token_id=special.bos,
            eos_token_id=special.eos,
            pad_token_id=special.pad,
        )
        if family == "mixtral":
            config.num_local_experts = shape.experts
            config.num_experts_per_tok = min(2, shape.experts)
    elif family == "gpt2":
        config = GPT2Config(
            vocab_size=shape.vocab,
            n_positions=shape.max_positions,
            n_embd=shape.hidden,
            n_layer=shape.layers,
            n_head=shape.heads,
            n_inner=shape.intermediate,
            # Replace GPT-2's default id 50256, which does not exist in our vocab.
            bos_token_id=special.bos,
            eos_token_id=special.eos,
            pad_token_id=special.pad,
        )
    elif family == "bert":
        config = BertConfig(
            vocab_size=shape.vocab,
            hidden_size=shape.hidden,
            num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads,
            intermediate_size=shape.intermediate,
            max_position_embeddings=shape.max_positions,
            pad_token_id=special.pad,
        )
    else:
        raise MakeModelError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    if tie_embeddings is not None:
        config.tie_word_embeddings = tie_embeddings
    return config


def model_class(family: str) -> type[PreTrainedModel]:
    classes: dict[str, type[PreTrainedModel]] = {
        "llama": LlamaForCausalLM,
        "mistral": MistralForCausalLM,
        "mixtral": MixtralForCausalLM,
        "qwen2": Qwen2ForCausalLM,
        "gpt2": GPT2LMHeadModel,
        "bert": BertModel,
    }
    return classes[family]


def count_parameters(family: str, config: PretrainedConfig) -> int:
    """Exact parameter count (tied tensors counted once), without allocating any weights."""
    with torch.device("meta"):
        model = model_class(family)(config)
    return model.num_parameters()


def _hidden_candidates(limit: int = 16384) -> Iterator[int]:
    # Roughly 12% apart: fine enough to hit a target closely, coarse enough to search quickly. Wider
    # sizes round to coarser multiples, as real models do, so head counts stay even and GQA-friendly.
    hidden = 64
    while hidden <= limit:
        yield hidden
        multiple = 32 if hidden < 512 else 64 if hidden < 1024 else 128 if hidden < 2048 else 256
        hidden = _round_up(math.ceil(hidden * 1.125), multiple)


def shape_for_param_count(
    family: str,
    target: int,
    *,
    vocab: int,
    special: SpecialTokenIds,
    tie_embeddings: bool | None,
    layers: int | None,
    hidden: int | None,
    heads: int | None,
    kv_heads: int | None,
    intermediate: int | None,
    experts: int | None,
    max_positions: int,
) -> tuple[ModelShape, int]:
    """Choose layers/hidden (and sizes derived from hidden) so the model has about ``target`` parameters.

    Explicitly given sizes are kept. Among shapes within PARAMS_TOLERANCE of the target, the one whose
    hidden size per layer is closest to PREFERRED_HIDDEN_PER_LAYER wins; otherwise the closest count.
    """
    if layers is not None and hidden is not None:
        raise MakeModelError("--params chooses layers and hidden size: give at most one of --layers/--hidden")
    hidden_options: Iterator[int] | list[int] = [hidden] if hidden is not None else _hidden_candidates()
    # (relative error, proportion penalty, shape, count)
    scored: list[tuple[float, float, ModelShape, int]] = []
    for candidate_hidden in hidden_options:

        def shape_with(layer_count: int, hidden_size: int = candidate_hidden) -> ModelShape:
            return derive_shape(
                family,
                layers=layer_count,
                hidden=hidden_size,
                vocab=vocab,
                heads=heads,
                kv_heads=kv_heads,
                intermediate=intermediate,
                experts=experts,
                max_positions=max_positions,
            )

        try:
            one_layer = shape_with(1)
        except MakeModelError:
            continue  # e.g. an explicit --heads that does not divide this hidden size
        # The count is affine in the number of layers: measure the constant part and the per-layer part.
        count_one = count_parameters(family, build_config(family, one_layer, special, tie_embeddings))
        count_two = count_parameters(family, build_config(family, shape_with(2), special, tie_embeddings))
        per_layer = count_two - count_one
        base = count_one - per_layer
        if layers is not None:
            layer_options = [layers]
        else:
            ideal_layers = max(1.0, (target - base) / per_layer)
            layer_options = sorted({max(1, math.floor(ideal_layers)), max(1, math.ceil(ideal_layers))})
        for layer_count in layer_options:
            count = base + layer_count * per_layer
            error = abs(count - target) / target
            proportion_penalty = abs(math.log(candidate_hidden / layer_count / PREFERRED_HIDDEN_PER_LAYER))
            scored.append((error, proportion_penalty, shape_with(layer_count), count))
        if count_one > target * 2:
            break  # wider candidates only overshoot further
    if not scored:
        raise MakeModelError(f"no valid {family} shape found for {target} parameters with the given sizes")
    close_enough = [entry for entry in scored if entry[0] <= PARAMS_TOLERANCE]
    if close_enough:
        best = min(close_enough, key=lambda entry: (entry[1], entry[0]))
    else:
        best = min(scored, key=lambda entry: (entry[0], entry[1]))
    return best[2], best[3]


# --------------------------------------------------------------------------------------------
# Output directories
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def staged_output_dir(out_dir: Path, force: bool) -> Iterator[Path]:
    """Yield a scratch directory next to ``out_dir`` that replaces it only if everything succeeds.

    This way an interrupted run never leaves a half-written model where a complete one is expected.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() or out_dir.is_symlink():
        is_empty_dir = out_dir.is_dir() and not any(out_dir.iterdir())
        if not is_empty_dir and not force:
            raise MakeModelError(f"{out_dir} already exists; pass --force (force=True) to overwrite it")
        _refuse_dangerous_removal(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 mode would survive the rename; mkdir honours the umask instead.
    staging = out_dir.parent / f".{out_dir.name}.{secrets.token_hex(4)}.partial"
    staging.mkdir()
    try:
        yield staging
        _give_default_permissions(staging)
        if out_dir.is_dir() and not out_dir.is_symlink():
            shutil.rmtree(out_dir)
        elif out_dir.exists() or out_dir.is_symlink():
            out_dir.unlink()
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _give_default_permissions(directory: Path) -> None:
    # safetensors 0.8 writes weights as 0600 (it saves through a private temporary file); give every
    # file the usual umask-based mode so other users and seeding daemons can read the model.
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~umask)


def _refuse_dangerous_removal(out_dir: Path) -> None:
    # --force deletes the old directory; never let a typo point that at "/", $HOME or the working tree.
    resolved = out_dir.resolve()
    cwd = Path.cwd().resolve()
    if resolved == Path(resolved.anchor) or resolved == Path.home().resolve() or cwd.is_relative_to(resolved):
        raise MakeModelError(f"refusing to replace {out_dir}: it is the root, home or current directory")


# --------------------------------------------------------------------------------------------
# Building models
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    # Fork the global RNG so seeding here does not disturb the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def make_model(
    family: str,
    out_dir: str | os.PathLike[str],
    *,
    layers: int | None = None,
    hidden: int | None = None,
    vocab: int = DEFAULT_VOCAB,
    heads: int | None = None,
    kv_heads: int | None = None,
    intermediate: int | None = None,
    experts: int | None = None,
    params: int | str | None = None,
    seed: int = 0,
    max_positions: int = DEFAULT_MAX_POSITIONS,
    dtype: str = "float32",
    tie_embeddings: bool | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Write a randomly initialised ``family`` model with a trained tokenizer to ``out_dir``.

    Unset sizes get small defaults (or are chosen to reach ``params`` parameters). The same
    arguments always give byte-identical files. ``tie_embeddings=None`` keeps the family default.
    Returns the output directory.
    """
    family = family.lower()
    if family not in FAMILIES:
        raise MakeModelError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    if dtype not in DTYPES:
        raise MakeModelError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    if experts is not None and family != "mixtral":
        raise MakeModelError("--experts only applies to mixtral")
    if kv_heads is not None and family not in LLAMA_LIKE_FAMILIES:
        raise MakeModelError(f"--kv-heads does not apply to {family} (no grouped-query attention)")
    if tie_embeddings is not None and family == "bert":
        raise MakeModelError("--tie-embeddings does not apply to bert (BertModel has no output head)")
    target_params = parse_param_count(params) if isinstance(params, str) else params

    out_path = Path(out_dir)
    with staged_output_dir(out_path, force) as staging:
        texts = [zen_of_python(), EXTRA_CORPUS]
        tokenizer: PreTrainedTokenizerFast
        if family == "bert":
            tokenizer, special = train_wordpiece(vocab, texts, max_positions)
        else:
            tokenizer, special = train_byte_level_bpe(vocab, texts, max_positions, qwen2_style=family == "qwen2")
        # Every token id must have an embedding row: grow the model vocab when the tokenizer's
        # fixed alphabet exceeds the request; a shorter tokenizer simply leaves spare rows.
        model_vocab = max(vocab, len(tokenizer))
        if model_vocab != vocab:
            log(f"note: model vocab raised from {vocab} to {model_vocab} to cover every tokenizer id")

        if target_params is not None:
            shape, _ = shape_for_param_count(
                family,
                target_params,
                vocab=model_vocab,
                special=special,
                tie_embeddings=tie_embeddings,
                layers=layers,
                hidden=hidden,
                heads=heads,
                kv_heads=kv_heads,
                intermediate=intermediate,
                experts=experts,
                max_positions=max_positions,
            )
        else:
            shape = derive_shape(
                family,
                layers=layers if layers is not None else DEFAULT_LAYERS,
                hidden=hidden if hidden is not None else DEFAULT_HIDDEN,
                vocab=model_vocab,
                heads=heads,
                kv_heads=kv_heads,
                intermediate=intermediate,
                experts=experts,
                max_positions=max_positions,
            )
        config = build_config(family, shape, special, tie_embeddings)

        with _seeded(seed):
            model = model_class(family)(config)
        # PreTrainedModel.to is wrapped in a way type checkers misread; Module.to does the same cast.
        torch.nn.Module.to(model, DTYPES[dtype])
        model.eval()
        if family != "bert":
            model.generation_config = GenerationConfig(
                bos_token_id=special.bos, eos_token_id=special.eos, pad_token_id=special.pad
            )
        if family != "bert":
            tokenizer.chat_template = CHAT_TEMPLATE
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(staging)

        actual_params = model.num_parameters()
        summary = (
            f"{family}: {actual_params:,} parameters (layers={shape.layers} hidden={shape.hidden} "
            f"heads={shape.heads} kv_heads={shape.kv_heads} intermediate={shape.intermediate}"
            + (f" experts={shape.experts}" if family == "mixtral" else "")
            + f" vocab={shape.vocab} tokenizer={len(tokenizer)} dtype={dtype})"
        )
        if target_params is not None:
            deviation = (actual_params - target_params) / target_params
            summary += f", target {target_params:,} ({deviation:+.1%})"
        log(summary)
    log(f"wrote {out_path}")
    return out_path


# --------------------------------------------------------------------------------------------
# The demo: a tiny Llama that has memorised the Zen of Python
# --------------------------------------------------------------------------------------------

DEMO_PROMPT = "Beautiful is"
DEMO_VOCAB = 384
DEMO_SHAPE = ModelShape(
    layers=2, hidden=64, heads=4, kv_heads=2, intermediate=192, experts=1, max_positions=512, vocab=DEMO_VOCAB
)
DEMO_STEPS = 200
DEMO_BATCH = 16
DEMO_WINDOW = 48
DEMO_LEARNING_RATE = 4e-3
# One thread: this model's matrices are too small to split, and on a busy 2-core machine two threads
# measured 3-5x slower (they stall waiting for each other) than one.
DEMO_THREADS = 1
DEMO_WARMUP_STEPS = 20


def make_demo(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    *,
    steps: int = DEMO_STEPS,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Train a tiny Llama on the Zen of Python (about 10 s on one CPU core) and save it to ``out_dir``.

    Greedy generation from "Beautiful is" then continues " better than ugly." Returns ``out_dir``.
    """
    out_path = Path(out_dir)
    with staged_output_dir(out_path, force) as staging:
        zen = zen_of_python()
        # Trained on the Zen alone, the tokenizer spends its merges on whole Zen words, which makes
        # the sequence short and quick to memorise.
        tokenizer, special = train_byte_level_bpe(DEMO_VOCAB, [zen], DEMO_SHAPE.max_positions)
        assert special.eos is not None
        shape = dataclasses.replace(DEMO_SHAPE, vocab=max(DEMO_VOCAB, len(tokenizer)))
        config = build_config("llama", shape, special, tie_embeddings=True)
        assert isinstance(config, LlamaConfig)
        # End each copy of the text with EOS so the model learns where the Zen stops.
        text_ids = [*tokenizer(zen)["input_ids"], special.eos]
        # Enough repetitions that a window starting anywhere in the first copy stays in bounds.
        repeats = DEMO_WINDOW // len(text_ids) + 2
        corpus = torch.tensor(text_ids * repeats, dtype=torch.long)

        previous_threads = torch.get_num_threads()
        torch.set_num_threads(DEMO_THREADS)
        started = time.monotonic()
        try:
            with _seeded(seed):
                model = LlamaForCausalLM(config)
                window_rng = torch.Generator().manual_seed(seed)
                _train_on_windows(model, corpus, len(text_ids), steps, window_rng, log)
        finally:
            torch.set_num_threads(previous_threads)
        log(f"trained {model.num_parameters():,} parameters in {time.monotonic() - started:.1f} s")

        model.eval()
        model.generation_config = GenerationConfig(
            bos_token_id=special.bos, eos_token_id=special.eos, pad_token_id=special.pad
        )
        log(f"greedy: {DEMO_PROMPT!r} -> {greedy_continuation(model, tokenizer, DEMO_PROMPT)!r}")
        tokenizer.chat_template = CHAT_TEMPLATE
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    log(f"wrote {out_path}")
    return out_path


def _train_on_windows(
    model: PreTrainedModel,
    corpus: torch.Tensor,
    period: int,
    steps: int,
    window_rng: torch.Generator,
    log: Callable[[str], None],
) -> None:
    """Next-token training on random windows of the repeated text (AdamW, warmup then linear decay)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=DEMO_LEARNING_RATE, weight_decay=0.0)

    def learning_rate_scale(step: int) -> float:
        warmup = min(1.0, (step + 1) / DEMO_WARMUP_STEPS)
        return warmup * max(0.05, 1.0 - step / steps)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_scale)
    log_every = max(1, steps // 4)
    model.train()
    for step in range(steps):
        starts = torch.randint(0, period, (DEMO_BATCH,), generator=window_rng)
        batch = torch.stack([corpus[start : start + DEMO_WINDOW] for start in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % log_every == 0 or step == steps - 1:
            log(f"step {step + 1:4d}/{steps}  loss {loss.item():.3f}")


class SupportsGenerate(Protocol):
    def generate(self, *args: Any, **kwargs: Any) -> Any: ...


def greedy_continuation(
    model: SupportsGenerate, tokenizer: PreTrainedTokenizerFast, prompt: str, max_new_tokens: int = 12
) -> str:
    """Greedy-decode ``max_new_tokens`` after ``prompt`` and return only the new text."""
    encoded = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(
            **encoded,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
    new_tokens = output[0, encoded["input_ids"].shape[1] :]
    return str(tokenizer.decode(new_tokens, skip_special_tokens=True))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _param_count_arg(text: str) -> int:
    try:
        return parse_param_count(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _shard_size_arg(text: str) -> int | str:
    if text.isdigit():
        return int(text)
    try:
        convert_file_size_to_int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: use e.g. 200MB, 2GB, 500KB or a byte count"
        ) from error
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make_model.py",
        description="Write a real Hugging Face model directory (random weights, trained tokenizer).",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--family", choices=FAMILIES, help="architecture to generate")
    mode.add_argument(
        "--demo", action="store_true", help="train the tiny Zen-of-Python Llama demo instead (~10 s on CPU)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--force", action="store_true", help="replace --out if it already exists")
    parser.add_argument("--seed", type=int, default=0, help="random seed for weights (default 0)")

    sizes = parser.add_argument_group("sizes (ignored by --demo)")
    sizes.add_argument("--layers", type=_positive_int, help=f"transformer blocks (default {DEFAULT_LAYERS})")
    sizes.add_argument("--hidden", type=_positive_int, help=f"hidden size (default {DEFAULT_HIDDEN})")
    sizes.add_argument(
        "--vocab",
        type=_positive_int,
        default=DEFAULT_VOCAB,
        help=f"tokenizer vocabulary to train; the model has at least this many rows (default {DEFAULT_VOCAB})",
    )
    sizes.add_argument("--heads", type=_positive_int, help="attention heads (default: head size 16..64)")
    sizes.add_argument("--kv-heads", type=_positive_int, help="key/value heads (default heads/2; llama-likes)")
    sizes.add_argument(
        "--intermediate", type=_positive_int, help="MLP width (default ~8/3 hidden gated, 4 hidden otherwise)"
    )
    sizes.add_argument("--experts", type=_positive_int, help=f"mixtral experts (default {DEFAULT_EXPERTS}; 2 active)")
    sizes.add_argument(
        "--max-positions",
        type=_positive_int,
        default=DEFAULT_MAX_POSITIONS,
        help=f"maximum sequence length (default {DEFAULT_MAX_POSITIONS})",
    )
    sizes.add_argument(
        "--params",
        type=_param_count_arg,
        help="approximate parameter count such as 2M or 1.5G; picks layers/hidden/intermediate",
    )
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="weight dtype (default float32)")
    parser.add_argument(
        "--tie-embeddings",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="share input and output embeddings (default: the family's own default)",
    )
    parser.add_argument(
        "--max-shard-size",
        type=_shard_size_arg,
        default=DEFAULT_MAX_SHARD_SIZE,
        help=f"shard safetensors above this size (default {DEFAULT_MAX_SHARD_SIZE})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Per-shard progress bars add nothing for models this small.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        if args.demo:
            make_demo(args.out, seed=args.seed, force=args.force)
        else:
            make_model(
                args.family,
                args.out,
                layers=args.layers,
                hidden=args.hidden,
                vocab=args.vocab,
                heads=args.heads,
                kv_heads=args.kv_heads,
                intermediate=args.intermediate,
                experts=args.experts,
                params=args.params,
                seed=args.seed,
                max_positions=args.max_positions,
                dtype=args.dtype,
                tie_embeddings=args.tie_embeddings,
                max_shard_size=args.max_shard_size,
                force=args.force,
            )
    except MakeModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
