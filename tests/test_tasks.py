"""Any transformers task through the swarm: for each task a tiny model (random weights, real processors) is
published, a real `swarm join` peer runs it, and `swarm run --model NAME --input FILE` (typed as a user types it)
answers exactly what local transformers answers on the same input: the pipeline where transformers 5 still has one,
the model's `generate` where it does not (summarization, translation, image-to-text). Bad inputs get one clear
error, and the peer goes on serving."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import soundfile
import soxr
import torch
from PIL import Image

from swarm.tasks.runner import TASK_SEED
from tests.conftest import SWARM, load_tool
from tests.peer_harness import PeerProcess, peer_environment, start_peers
from tests.test_dht import LineProcess
from tests.test_interop import free_port
from tests.test_user_path import wait_line

SENTENCE = "Beautiful is better than ugly. Explicit is better than implicit."
RATE = 16_000


@dataclass(frozen=True)
class Case:
    """A task's model (made by tools/make_task_model.py), how it is published, its input and parameters."""

    task: str
    input: str  # "text", "image", "audio", "audio8k"
    seed_flags: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    local_kwargs: tuple[tuple[str, Any], ...] = ()


CASES = {
    "text-classification": Case("text-classification", "text", params=("top_k=3",), local_kwargs=(("top_k", 3),)),
    "token-classification": Case("token-classification", "text"),
    "feature-extraction": Case("feature-extraction", "text", seed_flags=("--task", "feature-extraction")),
    "zero-shot-classification": Case(
        "zero-shot-classification",
        "text",
        ("--task", "zero-shot-classification"),
        ("candidate_labels=code,art,music",),
        (("candidate_labels", ["code", "art", "music"]),),
    ),
    "image-classification": Case("image-classification", "image"),
    "depth-estimation": Case("depth-estimation", "image"),
    "object-detection": Case("object-detection", "image", params=("threshold=0",), local_kwargs=(("threshold", 0),)),
    "automatic-speech-recognition": Case("automatic-speech-recognition", "audio"),
    "speech-at-8-khz": Case("automatic-speech-recognition", "audio8k"),
    "text-to-audio": Case("text-to-audio", "text"),
    "image-to-text": Case("image-to-text", "image"),
    "summarization": Case("summarization", "text"),
    "translation": Case("translation", "text", seed_flags=("--task", "translation")),
    "text-to-image": Case(
        "text-to-image",
        "text",
        params=("num_inference_steps=2", "height=16", "width=16"),
        local_kwargs=(("num_inference_steps", 2), ("height", 16), ("width", 16)),
    ),
}
# One model and peer per task (the 8 kHz case uses the speech model).
MODELS = sorted({case.task for case in CASES.values()})


def model_name(task: str) -> str:
    return task.replace("-", "")[:20]


@pytest.fixture(scope="module")
def task_swarm(tmp_path_factory: pytest.TempPathFactory, make_model_tool: ModuleType) -> Iterator[dict[str, Any]]:
    """Every task's model published into one catalog, and a peer running each (started together)."""
    tool = load_tool("make_task_model")
    root = tmp_path_factory.mktemp("tasks")
    environment = peer_environment(os.environ, home=root / "home")
    flags = {case.task: case.seed_flags for case in CASES.values()}
    directories = {}
    for task in MODELS:
        directories[task] = tool.make_task_model(task, root / "models" / task, seed=3)
        command = [SWARM, "seed", str(directories[task]), "--name", model_name(task), "--prepare-only", *flags[task]]
        subprocess.run(command, env=environment, check=True, capture_output=True)
    # A language model too, for pipelines that generate between tasks.
    directories["llm"] = make_model_tool.make_model("llama", root / "models" / "llm", layers=2, seed=4, log=print)
    subprocess.run([SWARM, "seed", str(directories["llm"]), "--name", "llm", "--prepare-only"], env=environment,
                   check=True, capture_output=True)  # fmt: skip
    # A seedbox anchors discovery, as the README has it: the peers join through it.
    bootstrap = f"127.0.0.1:{free_port()}"
    seedbox = LineProcess([SWARM, "seedbox", "--listen", bootstrap], environment)
    peers: list[PeerProcess] = []
    try:
        for _ in range(len(MODELS) + 1):
            wait_line(seedbox, "seeding ", timeout=120, refuse=("refused", "not findable"))
        commands = [["--model", model_name(task), "--bootstrap", bootstrap] for task in [*MODELS, "llm"]]
        peers = start_peers(commands, environment, root / "logs")
        yield {
            "dirs": directories,
            "peers": dict(zip([*MODELS, "llm"], peers, strict=True)),
            "environment": environment,
            "root": root,
            "bootstrap": bootstrap,
        }
    finally:
        for peer in peers:
            peer.stop()
        seedbox.stop()


def inputs(root: Path) -> dict[str, Path]:
    """The input files: text, a 48x32 PNG of noise, a second of noise as WAV at 16 kHz and at 8 kHz."""
    made = {"text": root / "input.txt", "image": root / "input.png", "audio": root / "input.wav"}
    made["text"].write_text(SENTENCE)
    pixels = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(made["image"])
    noise = (0.1 * np.random.default_rng(1).standard_normal(RATE)).astype(np.float32)
    soundfile.write(made["audio"], noise, RATE, subtype="FLOAT")
    made["audio8k"] = root / "input8k.wav"
    soundfile.write(made["audio8k"], noise[::2].copy(), RATE // 2, subtype="FLOAT")
    return made


def swarm_run(task_swarm: dict[str, Any], name: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    peer: PeerProcess = task_swarm["peers"][CASES[name].task]
    command = [SWARM, "run", "--model", model_name(CASES[name].task), *arguments, "--route", peer.address]
    return subprocess.run(command, env=task_swarm["environment"], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", list(CASES))
def test_the_swarm_answers_as_local_transformers_does(task_swarm: dict[str, Any], name: str) -> None:
    case = CASES[name]
    files = inputs(task_swarm["root"])
    out = task_swarm["root"] / f"{name}.out"
    arguments = ["--input", str(files[case.input]), "--json", "--out", str(out)]
    for param in case.params:
        arguments += ["--param", param]
    answer = swarm_run(task_swarm, name, *arguments)
    assert answer.returncode == 0, answer.stderr + task_swarm["peers"][case.task].log()
    swarm = json.loads(answer.stdout)
    assert swarm["task"] == case.task
    local = local_answer(case, task_swarm["dirs"][case.task], files[case.input])
    compare(case.task, swarm, out, local)


def local_answer(case: Case, model_dir: Path, input_file: Path) -> Any:
    """What transformers gives on the same input, run here."""
    from transformers import pipeline

    if case.task in ("summarization", "translation", "image-to-text"):
        return local_generated(case.task, model_dir, input_file)
    if case.task == "text-to-image":
        from diffusers import DiffusionPipeline

        draw = DiffusionPipeline.from_pretrained(model_dir)
        return draw(SENTENCE, generator=torch.Generator().manual_seed(TASK_SEED), **dict(case.local_kwargs)).images[0]
    pipe = pipeline(case.task, model=str(model_dir))
    kwargs = dict(case.local_kwargs)
    if case.input == "text":
        torch.manual_seed(TASK_SEED)  # text-to-audio samples noise: the peer seeds every request the same way
        if case.task == "feature-extraction":
            kwargs["return_tensors"] = True
        return pipe(SENTENCE, **kwargs)
    if case.input == "image":
        return pipe(Image.open(input_file).convert("RGB"), **kwargs)
    samples, rate = soundfile.read(input_file, dtype="float32")
    if rate != RATE:
        samples = soxr.resample(samples, rate, RATE)
    return pipe({"raw": samples, "sampling_rate": RATE})


def local_generated(task: str, model_dir: Path, input_file: Path) -> str:
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if task == "image-to-text":
        model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
        pixels = AutoImageProcessor.from_pretrained(model_dir)(
            Image.open(input_file).convert("RGB"), return_tensors="pt"
        )
        output = model.generate(**pixels)
    else:
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
        output = model.generate(**tokenizer(SENTENCE, return_tensors="pt", truncation=True))
    return str(tokenizer.decode(output[0], skip_special_tokens=True))


def compare(task: str, swarm: dict[str, Any], out: Path, local: Any) -> None:
    """Labels and text exactly; scores, features, depth and sound within float tolerance."""
    if task == "feature-extraction":
        assert torch.allclose(torch.tensor(swarm["features"]), local.float(), atol=1e-5)
    elif task == "depth-estimation":
        assert torch.allclose(torch.tensor(swarm["depth"]), local["predicted_depth"].float(), rtol=1e-4, atol=1e-12)
        assert swarm["file_type"] == "image/png"
        got = np.asarray(Image.open(out), dtype=np.int16)
        assert np.abs(got - np.asarray(local["depth"], dtype=np.int16)).max() <= 1
    elif task == "text-to-image":
        assert swarm["file_type"] == "image/png" and swarm["output"] == {"width": 16, "height": 16, "seed": 0}
        got = np.asarray(Image.open(out), dtype=np.int16)
        assert np.abs(got - np.asarray(local, dtype=np.int16)).max() <= 2
    elif task == "text-to-audio":
        samples, rate = soundfile.read(out, dtype="float32")
        assert swarm["file_type"] == "audio/wav" and rate == local["sampling_rate"]
        assert samples.shape == local["audio"].reshape(-1).shape
        # 16-bit samples (libsndfile writes x * 32767 and reads n / 32768): within two steps of the local values.
        assert np.abs(samples - np.clip(local["audio"].reshape(-1), -1, 1)).max() <= 2 / 32768
    elif task in ("summarization", "translation", "image-to-text"):
        key = {"summarization": "summary_text", "translation": "translation_text"}.get(task, "generated_text")
        assert swarm["output"] == {key: local}
    else:
        assert_close(swarm["output"], plain(local))


def plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def assert_close(got: Any, expected: Any, where: str = "output") -> None:
    if isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-6), where
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(expected), where
        for key in expected:
            assert_close(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), where
        for index, item in enumerate(expected):
            assert_close(got[index], item, f"{where}[{index}]")
    else:
        assert got == expected, where


@pytest.mark.parametrize(
    ("name", "arguments", "error"),
    [
        ("automatic-speech-recognition", ["--input", "{image}"], "takes audio, the input is image/png"),
        ("image-classification", ["--input", "{audio}"], "takes image, the input is audio/wav"),
        ("image-classification", ["--input", "{missing}"], "no such file"),
        ("text-classification", ["--input", "hello", "--param", "device=cuda"], "takes NAME=VALUE with NAME one of"),
        ("text-classification", ["--input", "hello", "--task", "image-classification"], "not image-classification"),
        ("text-classification", ["--prompt", "hello"], "published for the task text-classification"),
        ("zero-shot-classification", ["--input", "hello"], "needs the parameter 'candidate_labels'"),
        ("text-to-audio", ["--input", "hello"], "makes a sound: give --out FILE"),
        ("image-classification", ["--input", "{huge}"], "takes at most 26214400"),
    ],
)
def test_bad_input_gets_one_clear_error(
    task_swarm: dict[str, Any], name: str, arguments: list[str], error: str
) -> None:
    root = task_swarm["root"]
    huge = root / "huge.png"
    if not huge.exists():
        huge.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(26 * 1024 * 1024))
    paths = {key: str(path) for key, path in inputs(root).items()} | {
        "missing": str(root / "nope.png"),
        "huge": str(huge),
    }
    answer = swarm_run(task_swarm, name, *(argument.format(**paths) for argument in arguments))
    assert answer.returncode != 0
    lines = answer.stderr.strip().splitlines()
    assert len(lines) == 1 and error in lines[0], answer.stderr


def test_a_peer_refuses_what_a_client_would_not_send_and_goes_on_serving(task_swarm: dict[str, Any]) -> None:
    """Requests a well-behaved client never sends (a sound that is not one, an image to a speech model, too many
    bytes), straight to the peer: each is refused with bad_input, and the next good request is answered."""
    from swarm.tasks.protocol import as_bytes_tensor
    from swarm.wire import Kind
    from tests.peer_harness import ComputeClient, request, route

    peer = task_swarm["peers"]["automatic-speech-recognition"]
    client = ComputeClient()
    files = inputs(task_swarm["root"])
    bad = {
        "not a readable sound file": b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(64),
        "takes audio, the input is image/png": files["image"].read_bytes(),
        "more than 26214400": b"RIFF" + bytes(26 * 1024 * 1024),
    }
    try:
        for expected, data in bad.items():
            message = request(
                Kind.TASK, route=route((peer.address, 0, 1)), body={"task": "automatic-speech-recognition"}
            )
            client.send(peer.address, message, {"input": as_bytes_tensor(data)})
            reply = client.receive_direct(peer.address)
            assert reply.header.kind is Kind.ERROR and reply.header.body["code"] == "bad_input", reply.header
            assert expected in reply.header.body["message"]
    finally:
        client.close()
    good = swarm_run(task_swarm, "automatic-speech-recognition", "--input", str(files["audio"]), "--json")
    assert good.returncode == 0, good.stderr
    assert isinstance(json.loads(good.stdout)["output"]["text"], str)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_batching_peer_answers_each_request_of_a_burst_on_its_own(task_swarm: dict[str, Any]) -> None:
    """Good and hostile task requests sent at once to a peer that batches (bytes that are no text, parameters that
    are no object, an unknown one, another task's name): each good one gets its result, each bad one bad_input,
    and the peer goes on serving."""
    from swarm.tasks.protocol import as_bytes_tensor
    from swarm.wire import Kind
    from tests.peer_harness import ComputeClient, request, route

    peer = task_swarm["peers"]["text-classification"]
    hop = route((peer.address, 0, 1))
    sent = {
        "good": ({"task": "text-classification"}, SENTENCE.encode()),
        "not text": ({"task": "text-classification"}, b"\x89PNG\r\n\x1a\n" + bytes(40)),
        "params": ({"task": "text-classification", "params": [1, 2]}, b"hello"),
        "unknown": ({"task": "text-classification", "params": {"temperature": 1}}, b"hello"),
        "other task": ({"task": "token-classification"}, b"hello"),
        "good too": ({"task": "text-classification", "params": {"top_k": 2}}, b"hello there"),
    }
    client = ComputeClient()
    try:
        ids = {}
        for name, (body, data) in sent.items():
            message = request(Kind.TASK, route=hop, body=body)
            ids[message.request_id] = name
            client.send(peer.address, message, {"input": as_bytes_tensor(data)})
        replies = {ids[reply.header.request_id]: reply.header for reply in
                   (client.receive_direct(peer.address) for _ in sent)}  # fmt: skip
    finally:
        client.close()
    assert {name for name, header in replies.items() if header.kind is Kind.RESULT} == {"good", "good too"}
    assert all(header.body["code"] == "bad_input" for name, header in replies.items() if not name.startswith("good"))
    again = swarm_run(task_swarm, "text-classification", "--input", SENTENCE, "--json")
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize(
    "task", ["text-classification", "token-classification", "zero-shot-classification", "image-classification"]
)
def test_requests_that_reach_a_task_peer_together_run_as_one_batch(task_swarm: dict[str, Any], task: str) -> None:
    """Texts of different lengths (images of different sizes) sent at once: the peer runs them through its pipeline
    as one batch, and each gets the answer local transformers gives it alone."""
    from transformers import pipeline

    from swarm.client.resolve import Resolver
    from swarm.config import Settings
    from swarm.tasks.client import TaskClient
    from tests.test_batching import all_at_once, batching

    if task == "image-classification":
        rng = np.random.default_rng(5)
        images = [Image.fromarray(rng.integers(0, 256, (16 + 8 * index, 40 - 4 * index, 3), dtype=np.uint8))
                  for index in range(6)]  # fmt: skip
        texts = [png(image) for image in images]
    else:
        texts = [" ".join(SENTENCE.split()[: 2 + index]).encode() for index in range(6)]
    # A classification without top_k: a lone text's answer is a list of one label, a batch's one label per text.
    params = {} if task == "text-classification" else dict(CASES[task].local_kwargs)
    peer = task_swarm["peers"][task]
    resolver = Resolver(Settings(home=task_swarm["root"] / "home"))
    try:
        manifest, torrent_data = resolver.manifest(model_name(task))
        client = TaskClient.for_manifest(resolver, manifest, torrent_data)
    finally:
        resolver.close()
    local = pipeline(task, model=str(task_swarm["dirs"][task]))
    decoded = [Image.open(io.BytesIO(data)).convert("RGB") if task == "image-classification" else data.decode()
               for data in texts]  # fmt: skip
    expected = [plain(local(value, **params)) for value in decoded]
    with client:
        client.find_peers([peer.address], pinned=True)
        # Requests start together but may still reach the peer one by one: a few rounds make a batch sure.
        for _round in range(5):
            answers = all_at_once(len(texts), lambda index: client.run(texts[index], params).output, 120)
            for answer, wanted in zip(answers, expected, strict=True):
                assert_close(answer, wanted)
            if batching(peer.address)["largest"] > 1:
                break
    assert batching(peer.address)["largest"] > 1


def test_a_task_peer_says_which_task_it_runs(task_swarm: dict[str, Any]) -> None:
    from swarm.wire import Kind
    from tests.peer_harness import ComputeClient, request

    peer = task_swarm["peers"]["text-to-audio"]
    assert peer.serving["task"] == "text-to-audio" and peer.serving["replica"] is True
    client = ComputeClient()
    try:
        client.send(peer.address, request(Kind.INFO))
        assert client.receive_direct(peer.address).header.body["task"] == "text-to-audio"
    finally:
        client.close()


PIPELINE = """
name: speech-summary-speech
steps:
  - id: heard
    model: {asr}
    route: {asr_peer}
  - id: summary
    model: llm
    input: "Summarize: {{heard}}"
    params: {{max_new_tokens: 8}}
    route: {llm_peer}
  - id: spoken
    model: {tts}
    input: "Said {{summary}}"
    route: {tts_peer}
"""


def pipeline_file(task_swarm: dict[str, Any], text: str = PIPELINE) -> Path:
    peers = task_swarm["peers"]
    path = task_swarm["root"] / "pipeline.yaml"
    path.write_text(
        text.format(
            asr=model_name("automatic-speech-recognition"),
            tts=model_name("text-to-audio"),
            asr_peer=peers["automatic-speech-recognition"].address.removeprefix("tcp://"),
            llm_peer=peers["llm"].address.removeprefix("tcp://"),
            tts_peer=peers["text-to-audio"].address.removeprefix("tcp://"),
        )
    )
    return path


def test_a_pipeline_of_speech_recognition_a_language_model_and_speech(task_swarm: dict[str, Any]) -> None:
    """Speech to text, a summary by a language model, text to speech: three peers, and the final sound's bytes are
    those of the three local steps in a row."""
    files, out = inputs(task_swarm["root"]), task_swarm["root"] / "spoken.wav"
    command = [SWARM, "pipeline", str(pipeline_file(task_swarm)), "--input", str(files["audio"]), "--out", str(out)]
    answer = subprocess.run([*command, "--json"], env=task_swarm["environment"], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    record = json.loads(answer.stdout)
    assert list(record["steps"]) == ["heard", "summary", "spoken"]
    assert all(step["seconds"] > 0 for step in record["steps"].values())
    assert record["steps"]["spoken"]["file_type"] == "audio/wav"
    assert out.read_bytes() == local_pipeline_bytes(task_swarm["dirs"], files["audio"])


def local_pipeline_bytes(directories: dict[str, Path], audio_file: Path) -> bytes:
    """The three steps run here with transformers, one thread (as a peer runs), the sound written as a peer does."""
    from transformers import pipeline

    from swarm.tasks.media import wav_bytes

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = local_summary(directories, audio_file)
        speak = pipeline("text-to-audio", model=str(directories["text-to-audio"]))
        torch.manual_seed(TASK_SEED)  # as the peer seeds each request
        spoken = speak(f"Said {summary}")
    finally:
        torch.set_num_threads(threads)
    return wav_bytes(spoken["audio"], spoken["sampling_rate"])


def local_summary(directories: dict[str, Path], audio_file: Path) -> str:
    """The first two steps run here: the transcription, and the language model's greedy 8 tokens after it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    samples, rate = soundfile.read(audio_file, dtype="float32")
    heard = pipeline("automatic-speech-recognition", model=str(directories["automatic-speech-recognition"]))(
        {"raw": samples, "sampling_rate": rate}
    )["text"]
    tokenizer = AutoTokenizer.from_pretrained(directories["llm"])
    model = AutoModelForCausalLM.from_pretrained(directories["llm"]).eval()
    prompt = torch.tensor([tokenizer(f"Summarize: {heard}")["input_ids"]])
    generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=8)
    return str(tokenizer.decode(generated[0, prompt.shape[1] :].tolist(), skip_special_tokens=True))


def test_a_pipeline_step_whose_input_does_not_fit_fails_naming_the_step(task_swarm: dict[str, Any]) -> None:
    wrong = (
        PIPELINE
        + """  - id: look
    model: {image}
    input: $spoken
    route: {image_peer}
"""
    )
    peers = task_swarm["peers"]
    text = wrong.replace("{image}", model_name("image-classification")).replace(
        "{image_peer}", peers["image-classification"].address.removeprefix("tcp://")
    )
    files = inputs(task_swarm["root"])
    command = [SWARM, "pipeline", str(pipeline_file(task_swarm, text)), "--input", str(files["audio"])]
    answer = subprocess.run(command, env=task_swarm["environment"], capture_output=True, text=True, timeout=300)
    assert answer.returncode != 0
    assert answer.stderr.strip().splitlines() == [
        f"error: step 'look' ({model_name('image-classification')}) failed: {model_name('image-classification')} "
        "(image-classification) takes image, the input is audio/wav"
    ]


def test_the_readme_path_run_and_serve_find_task_peers_through_the_seedbox(task_swarm: dict[str, Any]) -> None:
    """`swarm run --input` and `swarm serve` knowing only the seedbox, as the README shows them; OpenAI's client
    transcribes and speaks, and /v1/tasks and /v1/pipelines answer as `swarm run` and `swarm pipeline` do."""
    files, bootstrap, environment = inputs(task_swarm["root"]), task_swarm["bootstrap"], task_swarm["environment"]
    classifier = model_name("text-classification")
    command = [SWARM, "run", "--model", classifier, "--input", SENTENCE, "--bootstrap", bootstrap]
    ran = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    local = local_answer(CASES["text-classification"], task_swarm["dirs"]["text-classification"], files["text"])
    assert_close(json.loads(ran.stdout), plain(local)[:1])  # the pipeline's default: the top label
    # A BERT classifier is published in blocks and runs whole where it fits (here); a speech model always whole.
    shown = subprocess.run([SWARM, "status", classifier, "--bootstrap", bootstrap], env=environment,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert f"{classifier}@" in shown.stdout, shown.stdout
    assert "(task text-classification, 2 blocks, whole replicas or spans)" in shown.stdout, shown.stdout
    assert "whole model  task text-classification" in shown.stdout, shown.stdout
    speech = model_name("automatic-speech-recognition")
    shown = subprocess.run([SWARM, "status", speech, "--bootstrap", bootstrap], env=environment,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "(task automatic-speech-recognition, whole replicas)" in shown.stdout, shown.stdout
    assert "whole model  task automatic-speech-recognition" in shown.stdout, shown.stdout

    asr, tts = model_name("automatic-speech-recognition"), model_name("text-to-audio")
    definition, summary_only = task_swarm["root"] / "served.yaml", task_swarm["root"] / "summary.yaml"
    definition.write_text(PIPELINE_BY_DHT.format(asr=asr, tts=tts))
    summary_only.write_text(PIPELINE_BY_DHT.format(asr=asr, tts=tts).replace("spoken-summary", "heard-summary")
                            + "output: summary\n")  # fmt: skip
    long_summary = task_swarm["root"] / "long.yaml"
    long_summary.write_text(summary_only.read_text().replace("heard-summary", "long-summary")
                            .replace("max_new_tokens: 8", f"max_new_tokens: {LONG_SUMMARY_TOKENS}"))  # fmt: skip
    # `swarm pipeline` as the README shows it: no step pins a route, the DHT finds every model's peers.
    spoken = task_swarm["root"] / "by-dht.wav"
    command = [SWARM, "pipeline", str(definition), "--input", str(files["audio"]), "--out", str(spoken),
               "--bootstrap", bootstrap]  # fmt: skip
    piped = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert spoken.read_bytes() == local_pipeline_bytes(task_swarm["dirs"], files["audio"])
    port = free_port()
    painter = model_name("text-to-image")
    server = LineProcess([SWARM, "serve", "--model", f"{asr},{tts},{classifier},{painter}", "--pipeline", str(definition), "--pipeline", str(summary_only), "--pipeline", str(long_summary),
                          "--bootstrap", bootstrap, "--listen", f"127.0.0.1:{port}"], environment)  # fmt: skip
    try:
        assert wait_line(server, "serving ", timeout=120).startswith(f"serving {asr} (1 peers), {tts} (1 peers)")
        check_served(f"http://127.0.0.1:{port}/v1", task_swarm, files)
    finally:
        server.stop()


# A language model step long enough to be running when a client leaves the stream.
LONG_SUMMARY_TOKENS = 400
PIPELINE_BY_DHT = """
name: spoken-summary
steps:
  - id: heard
    model: {asr}
  - id: summary
    model: llm
    input: "Summarize: {{heard}}"
    params: {{max_new_tokens: 8}}
  - id: spoken
    model: {tts}
    input: "Said {{summary}}"
"""


def check_served(base: str, task_swarm: dict[str, Any], files: dict[str, Path]) -> None:
    import base64

    import httpx
    import openai

    directories = task_swarm["dirs"]
    api = openai.OpenAI(base_url=base, api_key="none", max_retries=0, timeout=120)
    with files["audio"].open("rb") as audio:
        heard = api.audio.transcriptions.create(model=model_name("automatic-speech-recognition"), file=audio)
    local_heard = local_answer(CASES["automatic-speech-recognition"], directories["automatic-speech-recognition"],
                               files["audio"])  # fmt: skip
    assert heard.text == local_heard["text"]
    spoken = api.audio.speech.create(model=model_name("text-to-audio"), input=SENTENCE, voice="alloy",
                                     response_format="wav")  # fmt: skip
    samples, rate = soundfile.read(io.BytesIO(spoken.read()), dtype="float32")
    expected = local_answer(CASES["text-to-audio"], directories["text-to-audio"], files["text"])
    assert rate == expected["sampling_rate"] and samples.shape == expected["audio"].reshape(-1).shape
    classified = httpx.post(f"{base}/tasks/text-classification", timeout=120, json={
        "model": model_name("text-classification"), "input": SENTENCE, "params": {"top_k": 3}})  # fmt: skip
    assert classified.status_code == 200, classified.text
    local = local_answer(CASES["text-classification"], directories["text-classification"], files["text"])
    assert_close(classified.json()["output"], plain(local))
    wrong = httpx.post(f"{base}/tasks/image-classification", timeout=120, json={
        "model": model_name("text-classification"), "input": SENTENCE})  # fmt: skip
    assert wrong.status_code == 400 and "runs text-classification, not image-classification" in wrong.text
    painted = api.images.generate(model=model_name("text-to-image"), prompt=SENTENCE, size="16x16")
    from diffusers import DiffusionPipeline

    draw = DiffusionPipeline.from_pretrained(directories["text-to-image"])
    local_image = draw(SENTENCE, height=16, width=16, generator=torch.Generator().manual_seed(0)).images[0]
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(painted.data[0].b64_json or ""))), dtype=np.int16)
    assert np.abs(got - np.asarray(local_image, dtype=np.int16)).max() <= 2
    encoded = base64.b64encode(files["audio"].read_bytes()).decode()
    piped = httpx.post(f"{base}/pipelines/spoken-summary", timeout=300, json={"input_base64": encoded})
    assert piped.status_code == 200, piped.text
    assert list(piped.json()["steps"]) == ["heard", "summary", "spoken"]
    assert base64.b64decode(piped.json()["file_base64"]) == local_pipeline_bytes(directories, files["audio"])
    check_streamed_pipeline(base, encoded, local_summary(directories, files["audio"]))
    check_a_left_stream_stops_its_pipeline(base, encoded)


def check_streamed_pipeline(base: str, encoded: str, summary: str) -> None:
    """A pipeline ending in a language model, streamed: each step as it ends, the text as it comes, the result."""
    import httpx

    body = {"input_base64": encoded, "stream": True}
    with httpx.stream("POST", f"{base}/pipelines/heard-summary", json=body, timeout=300) as response:
        assert response.status_code == 200
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    events = [json.loads(line) for line in lines[:-1]]
    kinds = [(event["object"], event.get("step")) for event in events if event["object"] != "pipeline.text"]
    assert kinds == [("pipeline.step", "heard"), ("pipeline.step", "summary"), ("pipeline.result", None)]
    pieces = [event["text"] for event in events if event["object"] == "pipeline.text"]
    assert len(pieces) > 1 and "".join(pieces) == events[-1]["text"] == summary


def check_a_left_stream_stops_its_pipeline(base: str, encoded: str) -> None:
    """A client that leaves a streamed pipeline while its language model generates: the server stops the pipeline
    (tests/test_task_policies.py shows what stopping does) and counts it as cancelled."""
    import httpx

    def cancelled() -> float:
        metrics = httpx.get(base.removesuffix("/v1") + "/metrics", timeout=30).text
        name = 'swarm_serve_pipelines_cancelled_total{pipeline="long-summary"}'
        return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name))

    body = {"input_base64": encoded, "stream": True}
    with httpx.stream("POST", f"{base}/pipelines/long-summary", json=body, timeout=300) as response:
        assert response.status_code == 200
        seen = []
        for line in response.iter_lines():
            if line.startswith("data: {"):
                seen.append(json.loads(line.removeprefix("data: ")))
            if seen and seen[-1]["object"] == "pipeline.text":
                break  # the language model is generating: leave
    assert [event.get("step") for event in seen if event["object"] == "pipeline.step"] == ["heard"]
    deadline = time.monotonic() + 30
    while cancelled() < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cancelled() == 1
