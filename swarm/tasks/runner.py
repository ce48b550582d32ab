"""A replica that runs a transformers task on whole inputs: bytes in (text, a sound, an image), JSON and perhaps a
file out. Tasks with a transformers pipeline run through it; those whose pipelines transformers 5 removed
(summarization, translation, image-to-text) run the model's `generate` the way those pipelines did."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.utils import logging as transformers_logging

from swarm.errors import SwarmError
from swarm.manifest import Manifest
from swarm.model.chunker import assemble_model_dir
from swarm.tasks import media
from swarm.tasks.catalog import TaskSpec, checked_params, task_named

# Every request starts from this seed: a task that samples (text-to-audio's noise) answers the same input the same
# way, on any peer, as a local pipeline does after torch.manual_seed(TASK_SEED).
TASK_SEED = 0


@dataclass(frozen=True)
class TaskOutput:
    """What a task gives back: JSON-ready `result` (the pipeline's own output: a dict or a list); a `file` (WAV, PNG) with its media type; tensors too large or
    too exact for JSON (feature vectors, a depth map's values)."""

    result: Any
    file: bytes | None = None
    file_type: str | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


class TaskRunner:
    """The model of a manifest with a task, loaded from its meta chunk (config, processors) and full chunk."""

    replica = True
    causal = False
    start, end = 0, 1
    hidden_size = 0
    vocab_size = 0

    def __init__(
        self,
        manifest: Manifest,
        meta_path: Path,
        full_paths: dict[str, Path],
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.spec: TaskSpec = task_named(manifest.task or "")
        # A model published in blocks is whole here: the peer serves every one of them (what its info says).
        self.end = max(manifest.num_blocks, 1)
        self.device = torch.device(device)
        transformers_logging.disable_progress_bar()
        # Processors may read their files after loading: the directory lives as long as the runner.
        self._folder = tempfile.TemporaryDirectory(prefix="swarm-task-")
        directory = assemble_model_dir(meta_path, full_paths, Path(self._folder.name))
        try:
            self._load(directory, dtype)
        except (OSError, ValueError, KeyError, ImportError) as error:
            raise SwarmError(f"cannot load {manifest.name} for {self.spec.name}: {error}") from error

    def _load(self, directory: Path, dtype: torch.dtype) -> None:
        from transformers import (
            AutoImageProcessor,
            AutoModelForImageTextToText,
            AutoModelForSeq2SeqLM,
            AutoTokenizer,
            pipeline,
        )

        self.pipeline: Any = None
        if self.spec.engine == "diffusers":
            self.pipeline = load_diffusion(directory, dtype, self.device)
            return
        if self.spec.engine == "pipeline":
            self.pipeline = pipeline(self.spec.name, model=str(directory), device=self.device, dtype=dtype)  # type: ignore[call-overload]
            return
        model_class = AutoModelForImageTextToText if self.spec.input == "image" else AutoModelForSeq2SeqLM
        self.model = model_class.from_pretrained(directory, dtype=dtype).eval().to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.image_processor = AutoImageProcessor.from_pretrained(directory) if self.spec.input == "image" else None

    def covers(self, blocks: tuple[int, int]) -> bool:
        return True

    def benchmark(self) -> float:
        # Tasks take whole inputs of any size: no tokens-per-second figure means anything for them.
        return 0.0

    @torch.no_grad()
    def run(self, data: bytes, params: object) -> TaskOutput:
        """The task on `data` (checked and decoded here: it comes from the network) with the caller's `params`."""
        checked = checked_params(self.spec, params)
        value = media.decode_input(data, self.spec.input, self.spec.name)
        if self.spec.input == "audio":
            value = self._at_model_rate(value)
        torch.manual_seed(TASK_SEED)
        if self.spec.engine == "diffusers":
            return self._draw(value, checked)
        if self.spec.engine == "generate":
            return TaskOutput(self._generate(value, checked))
        return pipeline_output(self.pipeline, self.spec.name, value, checked)

    @torch.no_grad()
    def run_many(self, requests: Sequence[tuple[bytes, object]]) -> list[TaskOutput | SwarmError]:
        """Requests that arrived together: those of a task that `batches` and with the same parameters as one batch
        of the pipeline, the others one by one; each answer (or what is wrong with its input) in order."""
        if not self.spec.batches:
            return [_answer_or_error(partial(self.run, data, params)) for data, params in requests]
        answers: list[TaskOutput | SwarmError | None] = [None] * len(requests)
        groups: dict[str, list[tuple[int, Any]]] = {}
        for index, (data, params) in enumerate(requests):
            try:
                checked = checked_params(self.spec, params)
                value = media.decode_input(data, self.spec.input, self.spec.name)
            except SwarmError as error:
                answers[index] = error
                continue
            groups.setdefault(json.dumps(checked, sort_keys=True), []).append((index, value))
        for key, members in groups.items():
            torch.manual_seed(TASK_SEED)
            values = [value for _, value in members]
            outputs = self.pipeline(values, batch_size=len(values), **json.loads(key))
            for (index, _), output in zip(members, outputs, strict=True):
                answers[index] = task_output(self.spec.name, _as_alone(self.spec.name, output))
        return [answer if answer is not None else SwarmError("no answer") for answer in answers]

    def _at_model_rate(self, audio: dict[str, Any]) -> dict[str, Any]:
        """The sound resampled to the rate the model's feature extractor takes (soxr: transformers would need
        torchaudio)."""
        wanted = int(getattr(self.pipeline.feature_extractor, "sampling_rate", audio["sampling_rate"]))
        if audio["sampling_rate"] == wanted:
            return audio
        import soxr

        return {"raw": soxr.resample(audio["raw"], audio["sampling_rate"], wanted), "sampling_rate": wanted}

    def _draw(self, prompt: str, params: dict[str, Any]) -> TaskOutput:
        """A diffusers pipeline's image of `prompt`, its noise drawn from `seed` (TASK_SEED unless given)."""
        seed = params.pop("seed", TASK_SEED)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        image = self.pipeline(prompt=prompt, generator=generator, **params).images[0]
        return TaskOutput(
            {"width": image.width, "height": image.height, "seed": seed}, media.png_bytes(image), media.PNG
        )

    def _generate(self, value: Any, params: dict[str, Any]) -> dict[str, Any]:
        if self.image_processor is not None:
            inputs = self.image_processor(images=value, return_tensors="pt")
        else:
            inputs = self.tokenizer(value, return_tensors="pt", truncation=True)
        inputs = {name: tensor.to(self.device) for name, tensor in inputs.items()}
        output = self.model.generate(**inputs, **params)
        text = self.tokenizer.decode(output[0], skip_special_tokens=True)
        key = {"summarization": "summary_text", "translation": "translation_text"}.get(self.spec.name, "generated_text")
        return {key: text}


def _answer_or_error(run: Callable[[], TaskOutput]) -> TaskOutput | SwarmError:
    try:
        return run()
    except SwarmError as error:
        return error


def _as_alone(task: str, output: Any) -> Any:
    """One input's part of a batched pipeline's output, shaped as the pipeline gives it for that input alone (a lone
    text's classification comes as a list of its labels)."""
    return [output] if task == "text-classification" and isinstance(output, dict) else output


def load_diffusion(directory: Path, dtype: torch.dtype, device: torch.device) -> Any:
    """A diffusers pipeline from `directory` (its class named in model_index.json); diffusers is optional."""
    try:
        from diffusers import DiffusionPipeline
        from diffusers.utils import logging as diffusers_logging
    except ImportError:
        raise SwarmError("text-to-image needs diffusers: pip install 'swarm[diffusers]'") from None
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    pipeline = DiffusionPipeline.from_pretrained(directory, torch_dtype=dtype).to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def pipeline_output(pipeline: Any, task: str, value: Any, params: dict[str, Any]) -> TaskOutput:
    """What a transformers pipeline of `task` gives for `value`: feature vectors exactly (as a tensor), the rest as
    `task_output` makes it."""
    if task == "feature-extraction":
        features = pipeline(value, return_tensors=True)
        return TaskOutput({"shape": list(features.shape)}, tensors={"features": features.float().contiguous()})
    return task_output(task, pipeline(value, **params))


def task_output(task: str, output: Any) -> TaskOutput:
    """A pipeline's output as JSON plus a file: a depth map as a PNG (its float values as a tensor), a sound as a
    WAV; labels, scores, boxes and text as JSON (numpy numbers made plain)."""
    if task == "depth-estimation":
        depth = output["predicted_depth"].float().cpu().contiguous()
        return TaskOutput({"shape": list(depth.shape)}, media.png_bytes(output["depth"]), media.PNG, {"depth": depth})
    if task == "text-to-audio":
        rate = int(output["sampling_rate"])
        audio = np.asarray(output["audio"], dtype=np.float32)
        return TaskOutput({"sampling_rate": rate, "samples": int(audio.size)}, media.wav_bytes(audio, rate), media.WAV)
    return TaskOutput(json_ready(output))


def json_ready(value: Any) -> Any:
    """`value` with numpy and torch scalars made Python numbers, tuples made lists (what json.dumps takes)."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    return value
