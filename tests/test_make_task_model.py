"""Tests for tools/make_task_model.py: every task's tiny model runs in its transformers pipeline offline."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, Pipeline, pipeline

from tests.conftest import load_tool

tool = load_tool("make_task_model")

SENTENCE = "Beautiful is better than ugly."
# Not square, so the tests see that outputs map back to the caller's image size.
IMAGE_WIDTH, IMAGE_HEIGHT = 48, 32
CANDIDATE_LABELS = ["code", "art", "music"]


def random_image() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def one_second_of_noise(sampling_rate: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(0).standard_normal(sampling_rate)).astype(np.float32)


def run_task(task: str, pipe: Pipeline) -> Any:
    """Call ``pipe`` on a small input of the kind ``task`` takes."""
    if task == "automatic-speech-recognition":
        return pipe(one_second_of_noise(pipe.feature_extractor.sampling_rate))
    if task == "text-to-audio":
        torch.manual_seed(0)  # VITS samples noise from torch's global RNG on every call
        return pipe(SENTENCE)
    calls: dict[str, Callable[[], Any]] = {
        "text-classification": lambda: pipe(SENTENCE, top_k=None),
        # ignore_labels=[] keeps "O" tokens, so an untrained model still reports every token.
        "token-classification": lambda: pipe(SENTENCE, ignore_labels=[]),
        "feature-extraction": lambda: pipe(SENTENCE),
        "zero-shot-classification": lambda: pipe(SENTENCE, candidate_labels=CANDIDATE_LABELS),
        "text-generation": lambda: pipe([{"role": "user", "content": SENTENCE}]),
        "image-classification": lambda: pipe(random_image()),
        "depth-estimation": lambda: pipe(random_image()),
        # Untrained scores sit near 1 / (labels + 1), below the default threshold of 0.5.
        "object-detection": lambda: pipe(random_image(), threshold=0.0),
        "image-text-to-text": lambda: pipe(random_image(), text="a photo of"),
    }
    return calls[task]()


def check_text_classification(output: Any, pipe: Pipeline) -> None:
    assert sorted(item["label"] for item in output) == sorted(tool.TEXT_LABELS)
    assert sum(item["score"] for item in output) == pytest.approx(1.0, abs=1e-4)


def check_token_classification(output: Any, pipe: Pipeline) -> None:
    tokens = pipe.tokenizer(SENTENCE, add_special_tokens=False)["input_ids"]
    assert len(output) == len(tokens)
    assert all(item["entity"] in tool.NER_LABELS and 0.0 <= item["score"] <= 1.0 for item in output)


def check_feature_extraction(output: Any, pipe: Pipeline) -> None:
    tokens = pipe.tokenizer(SENTENCE)["input_ids"]
    assert np.asarray(output).shape == (1, len(tokens), tool.HIDDEN)


def check_zero_shot(output: Any, pipe: Pipeline) -> None:
    assert sorted(output["labels"]) == sorted(CANDIDATE_LABELS)
    assert sum(output["scores"]) == pytest.approx(1.0, abs=1e-4)


def check_text_generation(output: Any, pipe: Pipeline) -> None:
    chat = output[0]["generated_text"]
    assert chat[0]["content"] == SENTENCE
    assert chat[-1]["role"] == "assistant" and isinstance(chat[-1]["content"], str)


def check_image_classification(output: Any, pipe: Pipeline) -> None:
    assert sorted(item["label"] for item in output) == sorted(tool.IMAGE_LABELS)


def check_depth(output: Any, pipe: Pipeline) -> None:
    assert isinstance(output["depth"], Image.Image) and output["depth"].size == (IMAGE_WIDTH, IMAGE_HEIGHT)
    assert tuple(output["predicted_depth"].shape) == (IMAGE_HEIGHT, IMAGE_WIDTH)


def check_object_detection(output: Any, pipe: Pipeline) -> None:
    assert len(output) == tool.DETECTION_TOKENS
    for detection in output:
        assert detection["label"] in tool.DETECTION_LABELS
        box = detection["box"]
        assert 0 <= box["xmin"] <= box["xmax"] <= IMAGE_WIDTH and 0 <= box["ymin"] <= box["ymax"] <= IMAGE_HEIGHT


def check_image_text_to_text(output: Any, pipe: Pipeline) -> None:
    assert output[0]["input_text"] == "a photo of"
    assert output[0]["generated_text"].startswith("a photo of")


def check_speech_recognition(output: Any, pipe: Pipeline) -> None:
    assert isinstance(output["text"], str)


def check_text_to_audio(output: Any, pipe: Pipeline) -> None:
    assert output["sampling_rate"] == tool.SAMPLING_RATE
    audio = output["audio"]
    assert isinstance(audio, np.ndarray) and audio.dtype == np.float32 and audio.ndim == 1 and audio.size > 0


CHECKS: dict[str, Callable[[Any, Pipeline], None]] = {
    "text-classification": check_text_classification,
    "token-classification": check_token_classification,
    "feature-extraction": check_feature_extraction,
    "zero-shot-classification": check_zero_shot,
    "text-generation": check_text_generation,
    "image-classification": check_image_classification,
    "depth-estimation": check_depth,
    "object-detection": check_object_detection,
    "image-text-to-text": check_image_text_to_text,
    "automatic-speech-recognition": check_speech_recognition,
    "text-to-audio": check_text_to_audio,
}


def comparable(value: Any) -> Any:
    """``value`` with arrays, tensors and images turned into plain data that ``==`` compares."""
    if isinstance(value, dict):
        return {key: comparable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [comparable(item) for item in value]
    if isinstance(value, np.ndarray | torch.Tensor):
        return value.tolist()
    if isinstance(value, Image.Image):
        return (value.size, value.tobytes())
    return value


# Tasks whose transformers pipelines are gone in transformers 5: swarm runs their models through generate.
GENERATE_TASKS = ("summarization", "translation", "image-to-text", "text-to-image")
PIPELINE_TASKS = tuple(task for task in tool.TASKS if task not in GENERATE_TASKS)


def test_every_task_has_a_check() -> None:
    assert set(CHECKS) == set(PIPELINE_TASKS)


@pytest.mark.parametrize("task", ["summarization", "translation"])
def test_encoder_decoder_models_generate_offline_and_repeat(tmp_path: Path, task: str) -> None:
    model_dir = tool.make_task_model(task, tmp_path / task)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = []
    for _ in range(2):
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
        output = model.generate(**tokenizer(SENTENCE, return_tensors="pt"))
        assert 1 < output.shape[1] <= tool.MAX_NEW_TOKENS + 1
        texts.append(tokenizer.decode(output[0], skip_special_tokens=True))
    assert texts[0] == texts[1]


def test_a_text_to_image_pipeline_draws_offline_and_repeats(tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline

    model_dir = tool.make_task_model("text-to-image", tmp_path / "sd")
    assert (model_dir / "model_index.json").is_file() and (model_dir / "unet" / "config.json").is_file()
    images = []
    for _ in range(2):
        pipe = DiffusionPipeline.from_pretrained(model_dir)
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(0)
        images.append(pipe("a cat", num_inference_steps=2, height=16, width=16, generator=generator).images[0])
    assert images[0].size == (16, 16) and images[0].tobytes() == images[1].tobytes()


@pytest.mark.parametrize("task", PIPELINE_TASKS)
def test_pipeline_runs_offline_and_repeats(tmp_path: Path, task: str) -> None:
    model_dir = tool.make_task_model(task, tmp_path / task)
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"]
    with safe_open(str(model_dir / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.float32}  # noqa: SIM118

    outputs = []
    for _ in range(2):
        # A fresh pipeline each time: nothing may depend on state a previous call left behind.
        pipe = pipeline(task, model=str(model_dir))
        output = run_task(task, pipe)
        CHECKS[task](output, pipe)
        outputs.append(comparable(output))
    assert outputs[0] == outputs[1]


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    for task in tool.TASKS:
        first = tool.make_task_model(task, tmp_path / f"{task}-first", seed=7)
        again = tool.make_task_model(task, tmp_path / f"{task}-again", seed=7)
        other = tool.make_task_model(task, tmp_path / f"{task}-other", seed=8)
        names = sorted(path.relative_to(first) for path in first.rglob("*") if path.is_file())
        assert names == sorted(path.relative_to(again) for path in again.rglob("*") if path.is_file()), task
        for name in names:
            assert (first / name).read_bytes() == (again / name).read_bytes(), (task, name)
        weights = "unet/diffusion_pytorch_model.safetensors" if task == "text-to-image" else "model.safetensors"
        assert (first / weights).read_bytes() != (other / weights).read_bytes(), task


def test_text_to_audio_noise_follows_the_torch_seed(tmp_path: Path) -> None:
    pipe = pipeline("text-to-audio", model=str(tool.make_task_model("text-to-audio", tmp_path / "vits")))
    waves = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        waves.append(pipe(SENTENCE)["audio"])
    assert np.array_equal(waves[0], waves[1])
    assert not (waves[0].shape == waves[2].shape and np.array_equal(waves[0], waves[2]))


@pytest.mark.parametrize("removed", ["text2text-generation"])
def test_removed_pipelines_point_to_their_replacement(tmp_path: Path, removed: str) -> None:
    with pytest.raises(tool.MakeModelError, match=tool.REPLACED_TASKS[removed]):
        tool.make_task_model(removed, tmp_path / "model")


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tool.make_task_model("image-classification", tmp_path / "vit")
    with pytest.raises(tool.MakeModelError, match="already exists"):
        tool.make_task_model("image-classification", out)
    assert tool.make_task_model("object-detection", out, force=True) == out
    assert json.loads((out / "config.json").read_text())["model_type"] == "yolos"


def test_cli_lists_and_makes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tool.main(["--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(tool.TASKS)
    assert tool.main(["--task", "depth-estimation", "--out", str(tmp_path / "dpt"), "--seed", "3"]) == 0
    assert (tmp_path / "dpt" / "preprocessor_config.json").is_file()
