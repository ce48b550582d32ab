#!/usr/bin/env python3
"""Write tiny random-weight Hugging Face model directories that ``transformers.pipeline`` runs offline.

Each directory holds config.json, float32 safetensors weights, and the processor the task needs
(a tokenizer built here from a small corpus or a character list, an image processor, a feature
extractor, or a processor combining them), all written by transformers' own ``save_pretrained``. So
``transformers.pipeline(task, model=str(directory))`` works with no network. Weights are random:
outputs have the right types and shapes but mean nothing. The same task and seed give byte-identical
files, and every output is repeatable except text-to-audio's, which samples noise like real VITS.

transformers 5 removed the ``summarization``, ``translation``, ``text2text-generation`` and
``image-to-text`` pipelines. For summarization and translation this tool makes a tiny BART (an encoder-decoder that
``generate`` runs, as swarm's task peers do for these tasks), for image-to-text the BLIP captioner of
``image-text-to-text``; ``text2text-generation`` is refused with the advice transformers gives.

Examples::

    python tools/make_task_model.py --list
    python tools/make_task_model.py --task image-classification --out /tmp/tiny-vit
    python tools/make_task_model.py --task text-to-audio --out /tmp/tiny-vits --seed 3
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import string
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from tokenizers import normalizers, pre_tokenizers
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessorPil,
    BlipProcessor,
    DPTConfig,
    DPTForDepthEstimation,
    DPTImageProcessorPil,
    GenerationConfig,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
    LlamaModel,
    PreTrainedModel,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
    VitsConfig,
    VitsModel,
    VitsTokenizer,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Processor,
    YolosConfig,
    YolosForObjectDetection,
    YolosImageProcessorPil,
)

# tools/ is not a package: make the sibling make_model.py importable however this file is loaded.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_model import (
    BERT_SPECIAL_TOKENS,
    CHAT_TEMPLATE,
    EXTRA_CORPUS,
    MakeModelError,
    build_config,
    derive_shape,
    model_class,
    staged_output_dir,
    train_byte_level_bpe,
    zen_of_python,
)

# One small shape for every transformer here: a few hundred KB of weights, milliseconds per call.
HIDDEN = 32
LAYERS = 2
HEADS = 2
INTERMEDIATE = 64
VOCAB = 256
MAX_POSITIONS = 128
# Images are resized to IMAGE_SIZE squares cut into PATCH_SIZE patches (16 patches per image).
IMAGE_SIZE = 32
PATCH_SIZE = 8
SAMPLING_RATE = 16_000
# Generating pipelines stop after this many tokens, greedily, so runs are quick and repeatable.
MAX_NEW_TOKENS = 8

TEXT_LABELS = ("negative", "neutral", "positive")
NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
# The zero-shot pipeline finds the entailment class by the label name starting with "entail".
NLI_LABELS = ("entailment", "neutral", "contradiction")
IMAGE_LABELS = ("cat", "dog", "bird")
DETECTION_LABELS = ("cat", "dog")
DETECTION_TOKENS = 4
# DPT has four reassemble stages, each reading one encoder layer, with these widths.
DPT_NECK_SIZES = (8, 16, 32, 32)

# Pipelines transformers 5 removed, and the task made here instead.
REPLACED_TASKS = {"text2text-generation": "text-generation"}


class SavesPretrained(Protocol):
    """A tokenizer, feature extractor, image processor or processor: anything with save_pretrained."""

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any: ...


Built = tuple[PreTrainedModel, SavesPretrained]


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


def _texts() -> list[str]:
    # The same corpus make_model.py trains on, so tokenizers look alike across the tools.
    return [zen_of_python(), EXTRA_CORPUS]


def _wordpiece_tokenizer() -> BertTokenizer:
    """A lower-casing BERT WordPiece tokenizer: every character, then the corpus's commonest words.

    Not make_model.train_wordpiece: the tokenizers WordPiece trainer breaks ties in hash order, so it
    learns a different vocabulary in every process and the same seed would not give the same files.
    """
    normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = Counter(word for text in _texts() for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    # Every printable ASCII character, alone and as a "##" continuation, so no word collapses to [UNK].
    alphabet = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    tokens = [*BERT_SPECIAL_TOKENS, *alphabet, *(f"##{char}" for char in alphabet)]
    known = set(tokens)
    common = sorted((word for word in words if word not in known), key=lambda word: (-words[word], word))
    tokens += common[: VOCAB - len(tokens)]
    return BertTokenizer(vocab={token: index for index, token in enumerate(tokens)}, model_max_length=MAX_POSITIONS)


def _label_maps(labels: Sequence[str]) -> dict[str, Any]:
    # transformers 5 no longer derives label2id from id2label, and pipelines read both.
    return {
        "id2label": dict(enumerate(labels)),
        "label2id": {label: index for index, label in enumerate(labels)},
    }


def _vision_sizes() -> dict[str, Any]:
    # Keyword arguments shared by the ViT-style encoders (ViT, DPT, YOLOS, BLIP's vision tower).
    return {
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": INTERMEDIATE,
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
    }


def _square_size() -> dict[str, int]:
    return {"height": IMAGE_SIZE, "width": IMAGE_SIZE}


def _write_char_vocab(directory: Path, symbols: Sequence[str]) -> Path:
    # The CTC and VITS tokenizers only load their vocabulary from a JSON file.
    path = directory / "vocab.json"
    path.write_text(json.dumps({symbol: index for index, symbol in enumerate(symbols)}), encoding="utf-8")
    return path


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    # Fork the global RNG so seeding the weights does not disturb the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------------------------------
# Text models: BERT encoders and a Llama decoder
# --------------------------------------------------------------------------------------------


def _build_bert(head: type[PreTrainedModel], labels: Sequence[str] | None) -> Built:
    """BERT with a WordPiece tokenizer built from the corpus.

    ``labels`` name the classifier's outputs; None for a bare encoder.
    """
    tokenizer = _wordpiece_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        **(_label_maps(labels) if labels else {}),
    )
    return head(config), tokenizer


def _build_llama(head: type[PreTrainedModel], labels: Sequence[str] | None) -> Built:
    """Llama with a byte-level BPE tokenizer and a task head (``labels`` its outputs; None for the bare decoder)."""
    tokenizer, special = train_byte_level_bpe(VOCAB, _texts(), MAX_POSITIONS)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(special.pad)
    config = build_config("llama", _llama_shape(len(tokenizer)), special, tie_embeddings=None)
    config.pad_token_id = special.pad
    if labels:
        config.update(_label_maps(labels))
    return head(config), tokenizer


def _llama_shape(vocab: int) -> Any:
    # make_model.py's own shape rules, just smaller than its defaults.
    return derive_shape(
        "llama",
        layers=LAYERS,
        hidden=HIDDEN,
        vocab=max(VOCAB, vocab),
        heads=HEADS,
        kv_heads=None,
        intermediate=None,
        experts=None,
        max_positions=MAX_POSITIONS,
    )


def _build_text_generation() -> Built:
    """Llama with a byte-level BPE tokenizer and a chat template (stands in for summarization/translation)."""
    tokenizer, special = train_byte_level_bpe(VOCAB, _texts(), MAX_POSITIONS)
    model = model_class("llama")(build_config("llama", _llama_shape(len(tokenizer)), special, tie_embeddings=None))
    model.generation_config = GenerationConfig(
        bos_token_id=special.bos,
        eos_token_id=special.eos,
        pad_token_id=special.pad,
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return model, tokenizer


def _build_seq2seq() -> Built:
    """BartForConditionalGeneration with a byte-level BPE tokenizer (summarization and translation)."""
    tokenizer, special = train_byte_level_bpe(VOCAB, _texts(), MAX_POSITIONS)
    config = BartConfig(
        vocab_size=len(tokenizer), d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=INTERMEDIATE,
        decoder_ffn_dim=INTERMEDIATE, max_position_embeddings=MAX_POSITIONS, bos_token_id=special.bos,
        eos_token_id=special.eos, pad_token_id=special.pad, decoder_start_token_id=special.eos,
        forced_bos_token_id=None, forced_eos_token_id=None,
    )  # fmt: skip
    model = BartForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=special.bos,
        eos_token_id=special.eos,
        pad_token_id=special.pad,
        decoder_start_token_id=special.eos,
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
        num_beams=1,
    )
    return model, tokenizer


# --------------------------------------------------------------------------------------------
# Vision models
# --------------------------------------------------------------------------------------------


def _build_image_classification() -> Built:
    """ViTForImageClassification with a ViT image processor."""
    config = ViTConfig(**_vision_sizes(), **_label_maps(IMAGE_LABELS))
    # The Pil processors need no torchvision; the saved type name loads the torchvision one where it exists.
    return ViTForImageClassification(config), ViTImageProcessorPil(size=_square_size())


def _build_depth_estimation() -> Built:
    """DPTForDepthEstimation on a plain ViT backbone (no timm, no hybrid) with a DPT image processor."""
    config = DPTConfig(
        **{**_vision_sizes(), "num_hidden_layers": len(DPT_NECK_SIZES)},
        # The neck reassembles one encoder layer per stage: here simply all four of them.
        backbone_out_indices=list(range(len(DPT_NECK_SIZES))),
        neck_hidden_sizes=list(DPT_NECK_SIZES),
        fusion_hidden_size=16,
    )
    return DPTForDepthEstimation(config), DPTImageProcessorPil(size=_square_size())


def _build_object_detection() -> Built:
    """YolosForObjectDetection (a ViT that predicts boxes directly) with a YOLOS image processor."""
    config = YolosConfig(
        **{**_vision_sizes(), "image_size": [IMAGE_SIZE, IMAGE_SIZE]},
        num_detection_tokens=DETECTION_TOKENS,
        **_label_maps(DETECTION_LABELS),
    )
    model = YolosForObjectDetection(config)
    # YOLOS starts its detection tokens at zero; untrained, identical tokens would give identical detections.
    torch.nn.init.normal_(model.vit.embeddings.detection_tokens)
    processor = YolosImageProcessorPil(size={"shortest_edge": IMAGE_SIZE, "longest_edge": IMAGE_SIZE})
    return model, processor


def _build_image_text_to_text() -> Built:
    """BlipForConditionalGeneration (captioning) with a BLIP processor: image processor + WordPiece tokenizer."""
    tokenizer = _wordpiece_tokenizer()
    # BLIP's decoder starts every caption with its own [DEC] token and ends it at [SEP].
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    generation = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False}
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN,
        "encoder_hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "max_position_embeddings": MAX_POSITIONS,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        # BLIP's generate() hands over to its text decoder, whose generation config comes from this
        # text config, not from generation_config.json: the limits must be here too.
        **generation,
    }
    # BLIP's vision default initializer_range is 1e-10, which would leave the image without influence.
    vision_config = {**_vision_sizes(), "initializer_range": 0.02}
    config = BlipConfig(text_config=text_config, vision_config=vision_config, projection_dim=HIDDEN)
    model = BlipForConditionalGeneration(config)
    # Also at the top level: without it the pipeline would pass its own default of 256 new tokens.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **generation,
    )
    return model, BlipProcessor(BlipImageProcessorPil(size=_square_size()), tokenizer)


# --------------------------------------------------------------------------------------------
# Audio models
# --------------------------------------------------------------------------------------------


def _build_speech_recognition() -> Built:
    """Wav2Vec2ForCTC with a Wav2Vec2 processor: a character CTC tokenizer + a raw-waveform feature extractor."""
    symbols = ["<pad>", "<unk>", "|", *string.ascii_lowercase, "'"]
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = Wav2Vec2CTCTokenizer(
            str(_write_char_vocab(Path(scratch), symbols)),
            # Letters only: no sentence markers, so CTC output decodes to plain words.
            bos_token=None,
            eos_token=None,
            unk_token="<unk>",
            pad_token="<pad>",
            word_delimiter_token="|",
        )
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLING_RATE, padding_value=0.0, do_normalize=True, return_attention_mask=False
    )
    config = Wav2Vec2Config(
        vocab_size=len(symbols),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        # Three narrow convolutions striding 80 samples (5 ms) per frame instead of seven wide ones at 320.
        conv_dim=(16, 16, 16),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 4, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=HEADS,
        pad_token_id=symbols.index("<pad>"),
    )
    return Wav2Vec2ForCTC(config), Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)


def _build_text_to_audio() -> Built:
    """VitsModel (text to waveform, HiFi-GAN vocoder) with a character VITS tokenizer (no phonemizer)."""
    symbols = ["<pad>", "<unk>", " ", *string.ascii_lowercase, *"'.,!?"]
    with tempfile.TemporaryDirectory() as scratch:
        # add_blank puts <pad> (id 0) between characters, as the MMS checkpoints do.
        tokenizer = VitsTokenizer(str(_write_char_vocab(Path(scratch), symbols)), phonemize=False, add_blank=True)
    config = VitsConfig(
        vocab_size=len(symbols),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=HEADS,
        ffn_dim=32,
        flow_size=16,
        # Only the training-time posterior encoder reads spectrograms; keep it tiny.
        spectrogram_bins=9,
        upsample_initial_channel=16,
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]],
        depth_separable_num_layers=1,
        duration_predictor_num_flows=1,
        duration_predictor_filter_channels=16,
        prior_encoder_num_flows=1,
        prior_encoder_num_wavenet_layers=1,
        posterior_encoder_num_wavenet_layers=1,
        sampling_rate=SAMPLING_RATE,
        pad_token_id=0,
    )
    # noise_scale and noise_scale_duration keep VITS's defaults: like the real checkpoints, each call
    # samples noise from torch's global RNG, so seed it (torch.manual_seed) for repeatable audio.
    return VitsModel(config), tokenizer


# --------------------------------------------------------------------------------------------
# The task table and the entry point
# --------------------------------------------------------------------------------------------

_BUILDERS: dict[str, Callable[[], Built]] = {
    "text-classification": functools.partial(_build_bert, BertForSequenceClassification, TEXT_LABELS),
    "token-classification": functools.partial(_build_bert, BertForTokenClassification, NER_LABELS),
    "feature-extraction": functools.partial(_build_bert, BertModel, None),
    "zero-shot-classification": functools.partial(_build_bert, BertForSequenceClassification, NLI_LABELS),
    "text-generation": _build_text_generation,
    "image-classification": _build_image_classification,
    "depth-estimation": _build_depth_estimation,
    "object-detection": _build_object_detection,
    "image-text-to-text": _build_image_text_to_text,
    # The captioner also serves swarm's image-to-text task (run through generate: the pipeline is gone).
    "image-to-text": _build_image_text_to_text,
    "summarization": _build_seq2seq,
    "translation": _build_seq2seq,
    "automatic-speech-recognition": _build_speech_recognition,
    "text-to-audio": _build_text_to_audio,
}
# The text tasks again with a Llama decoder under the head (--family llama): models of a causal family whose blocks
# swarm spreads over peers like a language model's.
_LLAMA_BUILDERS: dict[str, Callable[[], Built]] = {
    "text-classification": functools.partial(_build_llama, LlamaForSequenceClassification, TEXT_LABELS),
    "token-classification": functools.partial(_build_llama, LlamaForTokenClassification, NER_LABELS),
    "feature-extraction": functools.partial(_build_llama, LlamaModel, None),
    "zero-shot-classification": functools.partial(_build_llama, LlamaForSequenceClassification, NLI_LABELS),
}
FAMILIES = ("bert", "llama")
# text-to-image is a diffusers pipeline (a folder per component), made by _diffusion_pipeline.
TASKS: tuple[str, ...] = (*_BUILDERS, "text-to-image")


def _diffusion_pipeline() -> Any:
    """A Stable Diffusion pipeline (diffusers): a CLIP text encoder and a character CLIP tokenizer, a UNet, a VAE
    and a DDIM scheduler, all tiny; 16x16 images take a few milliseconds a step."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    letters = list(string.ascii_lowercase)
    symbols = [*letters, *(letter + "</w>" for letter in letters), "<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as folder:
        vocab = _write_char_vocab(Path(folder), symbols)
        merges = Path(folder) / "merges.txt"
        merges.write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=16)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(symbols), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, max_position_embeddings=16, bos_token_id=len(symbols) - 2,
        eos_token_id=len(symbols) - 1, pad_token_id=len(symbols) - 1,
    ))  # fmt: skip
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN, norm_num_groups=8, attention_head_dim=4,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, sample_size=16,
    )  # fmt: skip
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)  # fmt: skip
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    ).to(torch.float32)  # fmt: skip


def describe(task: str) -> str:
    """One line saying what ``task`` builds (the builder's docstring)."""
    if task == "text-to-image":
        return "StableDiffusionPipeline: " + (_diffusion_pipeline.__doc__ or "").strip().splitlines()[0]
    builder = _BUILDERS[task]
    function = builder.func if isinstance(builder, functools.partial) else builder
    summary = (function.__doc__ or "").strip().splitlines()[0]
    if isinstance(builder, functools.partial):
        summary = f"{builder.args[0].__name__}: {summary}"
    return summary


def make_task_model(task: str, out_dir: Path, seed: int = 0, *, force: bool = False, family: str = "bert") -> Path:
    """Write a tiny random ``task`` model and its processor to ``out_dir``; returns ``out_dir``.

    The same task and seed always give the same weights. ``out_dir`` must not exist or be empty
    unless ``force``; it only appears once everything is written. ``family`` "llama" puts the text tasks' heads on
    a Llama decoder instead of BERT.
    """
    if task in REPLACED_TASKS:
        raise MakeModelError(f"transformers 5 removed the {task!r} pipeline; make {REPLACED_TASKS[task]!r} instead")
    if task not in TASKS:
        raise MakeModelError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    builders = _BUILDERS
    if family == "llama":
        if task not in _LLAMA_BUILDERS:
            raise MakeModelError(f"--family llama makes only {', '.join(_LLAMA_BUILDERS)}")
        builders = _LLAMA_BUILDERS
    elif family != "bert":
        raise MakeModelError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    out_path = Path(out_dir)
    with staged_output_dir(out_path, force) as staging:
        if task == "text-to-image":
            with _seeded(seed):
                _diffusion_pipeline().save_pretrained(staging)
            return out_path
        with _seeded(seed):
            model, processor = builders[task]()
        # Models must be float32 whatever torch's default dtype is; Module.to keeps the type checker calm.
        torch.nn.Module.to(model, torch.float32)
        model.eval()
        # save_pretrained records config.architectures and writes model.safetensors.
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
    return out_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make_task_model.py",
        description="Write a tiny random-weight model directory that transformers.pipeline(task) runs offline.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--task", choices=TASKS, help="pipeline task to make a model for")
    mode.add_argument("--list", action="store_true", help="list the tasks and the model each one gets")
    parser.add_argument("--out", type=Path, help="output directory (required with --task)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for weights (default 0)")
    parser.add_argument("--force", action="store_true", help="replace --out if it already exists")
    parser.add_argument("--family", choices=FAMILIES, default="bert", help="the text tasks' base model (default bert)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for task in TASKS:
            print(f"{task:30} {describe(task)}")
        return 0
    if args.out is None:
        parser.error("--out is required with --task")
    # Per-shard progress bars add nothing for models this small.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        out = make_task_model(args.task, args.out, seed=args.seed, force=args.force, family=args.family)
    except MakeModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.task} model to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
