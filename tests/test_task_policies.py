"""The pure parts of tasks and pipelines, by tables of cases: which task a model is published for, which parameters a
task takes, what a file is, how a pipeline's steps are ordered and fed."""

from __future__ import annotations

import io
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import soundfile
from PIL import Image

from swarm.errors import SwarmError
from swarm.model.chunker import extract_meta_archive, write_meta_archive
from swarm.tasks import media
from swarm.tasks.catalog import TASKS, checked_params, parse_params, split_into_spans, task_for, task_named
from swarm.tasks.pipeline import StepOutput, needed_steps, output_text, parse_pipeline, stages, step_input
from swarm.tasks.pipeline_run import PipelineCancelled, run_pipeline


@pytest.mark.parametrize(
    ("architecture", "requested", "expected"),
    [
        ("LlamaForCausalLM", None, None),
        ("BertModel", None, None),
        ("BertModel", "feature-extraction", "feature-extraction"),
        ("BertForSequenceClassification", None, "text-classification"),
        ("BertForSequenceClassification", "zero-shot-classification", "zero-shot-classification"),
        ("DistilBertForTokenClassification", None, "token-classification"),
        ("ViTForImageClassification", None, "image-classification"),
        ("DPTForDepthEstimation", None, "depth-estimation"),
        ("YolosForObjectDetection", None, "object-detection"),
        ("Wav2Vec2ForCTC", None, "automatic-speech-recognition"),
        ("WhisperForConditionalGeneration", None, "automatic-speech-recognition"),
        ("VitsModel", None, "text-to-audio"),
        ("VitsModel", "text-to-speech", "text-to-audio"),
        ("BlipForConditionalGeneration", None, "image-to-text"),
        ("BartForConditionalGeneration", None, "summarization"),
        ("BartForConditionalGeneration", "translation", "translation"),
        ("MarianMTModel", None, "translation"),
    ],
)
def test_the_task_a_model_is_published_for(architecture: str, requested: str | None, expected: str | None) -> None:
    assert task_for({"architectures": [architecture]}, requested) == expected


@pytest.mark.parametrize(
    ("task", "has_block_adapter", "expected"),
    [
        (None, True, True),  # a language model or a bare encoder of a known family
        (None, False, False),  # an architecture without block adapters: whole replicas
        ("text-classification", True, True),
        ("token-classification", True, True),
        ("feature-extraction", True, True),
        ("zero-shot-classification", True, True),
        ("text-classification", False, False),  # e.g. a DistilBERT classifier: no adapter, whole
        ("automatic-speech-recognition", True, False),  # a task whose model is more than a head over blocks
        ("summarization", True, False),
        ("text-to-image", False, False),
    ],
)
def test_which_models_are_split_into_spans(task: str | None, has_block_adapter: bool, expected: bool) -> None:
    assert split_into_spans(task, has_block_adapter) is expected


def test_an_unknown_task_lists_the_known_ones() -> None:
    with pytest.raises(SwarmError, match=r"unknown task 'painting'.*text-classification"):
        task_for({}, "painting")
    assert task_for({}, None) is None


@pytest.mark.parametrize(
    ("task", "params", "expected"),
    [
        ("text-classification", {"top_k": 2}, {"top_k": 2}),
        ("text-classification", {}, {}),
        ("text-classification", {"top_k": 0}, "from 1 to 1000"),
        ("text-classification", {"top_k": True}, "a number"),
        ("text-classification", {"device": "cuda"}, "takes no parameter 'device'"),
        ("zero-shot-classification", {}, "needs the parameter 'candidate_labels'"),
        ("zero-shot-classification", {"candidate_labels": ["a", "b"]}, {"candidate_labels": ["a", "b"]}),
        ("zero-shot-classification", {"candidate_labels": ["a", 3]}, "labels of 1 to 200"),
        ("zero-shot-classification", {"candidate_labels": ["a"], "multi_label": "yes"}, "true or false"),
        ("object-detection", {"threshold": 0.5}, {"threshold": 0.5}),
        ("object-detection", {"threshold": 2}, "from 0 to 1"),
        ("token-classification", {"aggregation_strategy": "simple"}, {"aggregation_strategy": "simple"}),
        ("token-classification", {"aggregation_strategy": "eval"}, "one of none, simple"),
        ("summarization", {"max_new_tokens": 5000}, "from 1 to 1024"),
    ],
)
def test_task_parameters_are_checked(task: str, params: dict[str, Any], expected: dict[str, Any] | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(SwarmError, match=expected):
            checked_params(TASKS[task], params)
    else:
        assert checked_params(TASKS[task], params) == expected


@pytest.mark.parametrize(
    ("task", "pairs", "expected"),
    [
        ("zero-shot-classification", ["candidate_labels=sport, politics"], {"candidate_labels": ["sport", "politics"]}),
        ("object-detection", ["threshold=0.25"], {"threshold": 0.25}),
        ("text-classification", ["top_k=3"], {"top_k": 3}),
        ("text-classification", ["top_k=three"], "must be a number"),
        ("text-classification", ["top_k"], "NAME=VALUE"),
        ("zero-shot-classification", ["candidate_labels=a", "multi_label=TRUE"], {"candidate_labels": ["a"], "multi_label": True}),
    ],
)  # fmt: skip
def test_command_line_parameters(task: str, pairs: list[str], expected: dict[str, Any] | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(SwarmError, match=expected):
            parse_params(task_named(task), pairs)
    else:
        assert parse_params(task_named(task), pairs) == expected


def png(width: int = 8, height: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def wav(seconds: float = 0.1, rate: int = 8000, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros((int(seconds * rate), channels), dtype=np.float32), rate, format="WAV")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "as_text", "expected"),
    [
        (png(), False, "image/png"),
        (wav(), False, "audio/wav"),
        (b"\xff\xd8\xff\xe0rest", False, "image/jpeg"),
        (b"fLaC....", False, "audio/flac"),
        ("héllo".encode(), True, "text/plain"),
        (b"hello", False, "not an image"),
        (b"\xff\xfe\x00bad", True, "neither an image, a sound nor UTF-8"),
    ],
)
def test_what_a_file_is_comes_from_its_bytes(data: bytes, as_text: bool, expected: str) -> None:
    if " " in expected:
        with pytest.raises(SwarmError, match=expected):
            media.media_type(data, as_text=as_text)
    else:
        assert media.media_type(data, as_text=as_text) == expected


@pytest.mark.parametrize(
    ("data", "wanted", "expected"),
    [
        (png(), "audio", "takes audio, the input is image/png"),
        (wav(), "image", "takes image, the input is audio/wav"),
        (b"RIFF\x10\x00\x00\x00WAVEjunkjunk", "audio", "not a readable sound file"),
        (png()[:40], "image", "not a readable image"),
        (png(7000, 7000), "image", "more than 40000000"),
        (b"   ", "text", "1 to 100000 characters"),
        (b"x" * (media.MAX_INPUT_BYTES + 1), "text", "takes at most"),
    ],
)
def test_bad_inputs_get_one_clear_error(data: bytes, wanted: Any, expected: str) -> None:
    with pytest.raises(SwarmError, match=expected):
        media.decode_input(data, wanted, "a task")


def test_a_stereo_sound_is_decoded_to_mono_at_its_rate() -> None:
    audio = media.decode_input(wav(0.5, 8000, channels=2), "audio", "a task")
    assert audio["sampling_rate"] == 8000 and audio["raw"].shape == (4000,) and audio["raw"].dtype == np.float32


PIPELINE = {
    "name": "speech-summary",
    "steps": [
        {"id": "heard", "model": "asr", "input": "$input"},
        {"id": "topic", "model": "classifier", "input": "{heard}"},
        {"id": "summary", "model": "llm", "input": "Summarize ({topic.0.label}): {heard}", "params": {"max_new_tokens": 4}},
        {"id": "spoken", "model": "tts", "input": "$summary"},
        {"id": "unused", "model": "tts", "input": "{input}"},
    ],
    "output": "spoken",
}  # fmt: skip


def test_pipeline_steps_run_in_stages_and_only_those_the_output_needs() -> None:
    spec = parse_pipeline(PIPELINE)
    assert stages(spec) == [["heard", "unused"], ["topic"], ["summary"], ["spoken"]]
    assert needed_steps(spec) == {"heard", "topic", "summary", "spoken"}


def test_a_step_input_is_made_from_earlier_outputs() -> None:
    spec = parse_pipeline(PIPELINE)
    outputs = {
        "heard": StepOutput({"text": "hello there"}, "hello there"),
        "topic": StepOutput([{"label": "greeting", "score": 0.9}], "greeting"),
        "summary": StepOutput({"text": "hi"}, "hi"),
        "spoken": StepOutput({"sampling_rate": 16000}, None, b"RIFF....", "audio/wav"),
    }
    assert step_input(spec.step("heard"), b"\x00audio", outputs) == b"\x00audio"
    assert step_input(spec.step("summary"), b"", outputs) == b"Summarize (greeting): hello there"
    assert step_input(spec.step("spoken"), b"", outputs) == b"hi"
    reader = parse_pipeline({"steps": [{"id": "a", "model": "m"}, {"id": "b", "model": "m", "input": "{a}"}]})
    with pytest.raises(SwarmError, match="step 'b' needs text from 'a', which made a audio/wav file"):
        step_input(reader.step("b"), b"", {"a": outputs["spoken"]})
    missing = parse_pipeline({"steps": [{"id": "a", "model": "m"}, {"id": "b", "model": "m", "input": "{a.x}"}]})
    with pytest.raises(SwarmError, match=r"reads 'a\.x', which 'a''s output does not have"):
        step_input(missing.step("b"), b"", {"a": outputs["heard"]})


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ([], "a mapping with name and steps"),
        ({"steps": []}, "1 to 64 steps"),
        ({"steps": [{"model": "m"}]}, "step 1 needs an id"),
        ({"steps": [{"id": "a"}]}, r"step 1 \(a\) needs a model"),
        ({"steps": [{"id": "a", "model": "m"}, {"id": "a", "model": "m"}]}, "unique"),
        ({"steps": [{"id": "a", "model": "m", "input": "{b}"}]}, "reads 'b', which is no step"),
        ({"steps": [{"id": "a", "model": "m", "input": "{b}"}, {"id": "b", "model": "m", "input": "$a"}]}, "a cycle"),
        ({"steps": [{"id": "a", "model": "m", "input": "{}"}]}, "names no step"),
        ({"steps": [{"id": "a", "model": "m"}], "output": "z"}, "output 'z' is no step"),
        ({"steps": [{"id": "a", "model": "m", "route": "h:1"}, {"id": "b", "model": "m"}]}, "pin different routes"),
    ],
)
def test_bad_pipelines_are_refused_before_running(record: Any, expected: str) -> None:
    with pytest.raises(SwarmError, match=expected):
        parse_pipeline(record)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ({"text": "hi"}, "hi"),
        ([{"label": "cat", "score": 0.9}, {"label": "dog", "score": 0.1}], "cat"),
        ({"summary_text": "short"}, "short"),
        ({"sequence": "s", "labels": ["a"], "scores": [1.0]}, None),
        ([], None),
    ],
)
def test_the_text_of_a_task_output(output: Any, expected: str | None) -> None:
    assert output_text(output) == expected


def test_a_meta_archive_keeps_component_folders_and_refuses_hostile_paths(tmp_path: Path) -> None:
    """A diffusers pipeline's meta chunk holds files one folder deep; extraction refuses any other path."""
    source = tmp_path / "source"
    (source / "unet").mkdir(parents=True)
    (source / "model_index.json").write_text("{}")
    (source / "unet" / "config.json").write_text('{"a": 1}')
    archive = tmp_path / "meta.tar"
    files = (source / "model_index.json", source / "unet" / "config.json")
    write_meta_archive(archive, files, source, (("swarm-components.json", b"{}"),))
    written = extract_meta_archive(archive, tmp_path / "out")
    assert sorted(path.relative_to(tmp_path / "out").as_posix() for path in written) == [
        "model_index.json",
        "swarm-components.json",
        "unet/config.json",
    ]
    assert (tmp_path / "out" / "unet" / "config.json").read_text() == '{"a": 1}'
    for hostile in ("../escape", "/etc/passwd", "a/b/c", ".hidden", "unet/.hidden", "a//b"):
        bad = tmp_path / "bad.tar"
        with tarfile.open(bad, "w") as tar:
            info = tarfile.TarInfo(hostile)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        with pytest.raises(SwarmError, match="not a plain file"):
            extract_meta_archive(bad, tmp_path / "hostile")


class CountingGenerator:
    """A language model's client that makes `tokens` pieces of text, stopping when asked (as SwarmClient.generate
    does after each token); records what it was asked."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.pieces = 0

    def generate(self, prompt: str, new_tokens: int, _params: Any, on_text: Any = None, should_stop: Any = None) -> Any:
        self.prompts.append(prompt)
        text = ""
        for _ in range(new_tokens):
            self.pieces += 1
            text += "x"
            if on_text is not None:
                on_text("x")
            if should_stop is not None and should_stop():
                break
        return SimpleNamespace(generation=SimpleNamespace(text=text))


def test_a_cancelled_pipeline_stops_its_language_model_and_starts_no_further_step() -> None:
    steps = [{"id": "summary", "model": "llm", "input": "$input", "params": {"max_new_tokens": 100}},
             {"id": "again", "model": "other", "input": "$summary", "params": {"max_new_tokens": 1}}]  # fmt: skip
    # The language model streams (it makes the output): the client leaves while its third piece goes out.
    llm, cancelled = CountingGenerator(), threading.Event()

    def on_text(_piece: str) -> None:
        if llm.pieces == 3:
            cancelled.set()

    streamed = parse_pipeline({"name": "p", "output": "summary", "steps": steps})
    with pytest.raises(PipelineCancelled, match="steps finished: summary"):
        run_pipeline(streamed, {"llm": llm, "other": CountingGenerator()}, b"hi", on_text=on_text, cancelled=cancelled)
    assert llm.pieces == 3
    # The client leaves once the first step ended: the second never starts.
    other, cancelled = CountingGenerator(), threading.Event()
    whole = parse_pipeline({"name": "p", "steps": steps})
    with pytest.raises(PipelineCancelled, match="steps finished: summary"):
        run_pipeline(whole, {"llm": CountingGenerator(), "other": other}, b"hi",
                     on_step=lambda *_: cancelled.set(), cancelled=cancelled)  # fmt: skip
    assert other.prompts == []
    finished = run_pipeline(whole, {"llm": CountingGenerator(), "other": other}, b"hi", cancelled=threading.Event())
    assert other.prompts == ["x" * 100] and finished.final.text == "x"  # not cancelled: every step runs
