"""The tasks a replica peer serves besides text generation: what each takes, gives back and lets a caller tune.

Pure: no transformers import. A task is chosen when a model is published (`task_for`), recorded in its manifest,
and checked again by every peer and client that reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from swarm.errors import SwarmError

Media = Literal["text", "audio", "image"]
# Uploads larger than this are refused before they are sent (OpenAI's audio endpoints take 25 MB as well).
MAX_INPUT_BYTES = 25 * 1024 * 1024
# Most characters of a text input (the models' own context limits apply after tokenizing).
MAX_TEXT_CHARS = 100_000


@dataclass(frozen=True)
class Param:
    """One tunable parameter: its type, range (numbers), or allowed values (choices), or list length (labels)."""

    kind: Literal["int", "float", "bool", "choice", "text", "labels"]
    low: float = 0
    high: float = 0
    choices: tuple[str, ...] = ()
    required: bool = False


@dataclass(frozen=True)
class TaskSpec:
    """`input`: what the caller sends; `output`: "json" only, or a file (audio/image bytes) beside the JSON;
    `engine`: what runs it: the transformers pipeline of the task, the model's `generate` (tasks whose pipelines
    transformers 5 removed: encoder-decoder text generation and image captioning), or a diffusers pipeline;
    `splits`: the task's model is a base model with a small head on top, so a model of a family with block adapters
    is published in block chunks and its blocks spread over peers, the client running the rest; `batches`: a peer runs
    requests of it that arrive together as one batch of its pipeline (deterministic tasks whose pipelines take
    lists)."""

    name: str
    input: Media
    output: Literal["json", "audio", "image"] = "json"
    params: Mapping[str, Param] = field(default_factory=dict)
    engine: Literal["pipeline", "generate", "diffusers"] = "pipeline"
    splits: bool = False
    batches: bool = False


_TOP_K = Param("int", 1, 1000)
_NEW_TOKENS = Param("int", 1, 1024)
_SPECS = (
    TaskSpec("text-classification", "text", params={"top_k": _TOP_K}, splits=True, batches=True),
    TaskSpec(
        "token-classification",
        "text",
        params={"aggregation_strategy": Param("choice", choices=("none", "simple", "first", "average", "max"))},
        splits=True,
        batches=True,
    ),
    TaskSpec("feature-extraction", "text", splits=True),
    TaskSpec(
        "zero-shot-classification",
        "text",
        params={
            "candidate_labels": Param("labels", 1, 64, required=True),
            "hypothesis_template": Param("text", 1, 500),
            "multi_label": Param("bool"),
        },
        splits=True,
        batches=True,
    ),
    TaskSpec("image-classification", "image", params={"top_k": _TOP_K}, batches=True),
    TaskSpec("depth-estimation", "image", output="image"),
    TaskSpec("object-detection", "image", params={"threshold": Param("float", 0.0, 1.0)}),
    TaskSpec("automatic-speech-recognition", "audio"),
    TaskSpec("text-to-audio", "text", output="audio"),
    TaskSpec("image-to-text", "image", params={"max_new_tokens": _NEW_TOKENS}, engine="generate"),
    TaskSpec("summarization", "text", params={"max_new_tokens": _NEW_TOKENS}, engine="generate"),
    TaskSpec("translation", "text", params={"max_new_tokens": _NEW_TOKENS}, engine="generate"),
    TaskSpec(
        "text-to-image",
        "text",
        output="image",
        params={
            "num_inference_steps": Param("int", 1, 200),
            "guidance_scale": Param("float", 0.0, 50.0),
            "height": Param("int", 8, 2048),
            "width": Param("int", 8, 2048),
            "negative_prompt": Param("text", 1, 2000),
            "seed": Param("int", 0, 2**31 - 1),
        },
        engine="diffusers",
    ),
)
TASKS: Mapping[str, TaskSpec] = {spec.name: spec for spec in _SPECS}
ALIASES = {
    "text-to-speech": "text-to-audio",
    "sentiment-analysis": "text-classification",
    "ner": "token-classification",
}

# Which task an architecture's class name implies, by its ending (transformers names task heads this way).
_ARCHITECTURE_ENDINGS = (
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForImageClassification", "image-classification"),
    ("ForImageClassificationWithTeacher", "image-classification"),
    ("ForDepthEstimation", "depth-estimation"),
    ("ForObjectDetection", "object-detection"),
    ("ForCTC", "automatic-speech-recognition"),
    ("ForSpeechSeq2Seq", "automatic-speech-recognition"),
    ("ForTextToSpeech", "text-to-audio"),
    ("ForTextToWaveform", "text-to-audio"),
    ("MTModel", "translation"),
)
_ARCHITECTURES = {
    "WhisperForConditionalGeneration": "automatic-speech-recognition",
    "VitsModel": "text-to-audio",
    "VisionEncoderDecoderModel": "image-to-text",
    "BlipForConditionalGeneration": "image-to-text",
    "BartForConditionalGeneration": "summarization",
    "T5ForConditionalGeneration": "summarization",
    "PegasusForConditionalGeneration": "summarization",
}


def task_named(name: str) -> TaskSpec:
    """The task called `name` (or one of its aliases); a clear error listing the tasks otherwise."""
    spec = TASKS.get(ALIASES.get(name, name))
    if spec is None:
        raise SwarmError(f"unknown task {name!r}; tasks: {', '.join(TASKS)} (and text generation, the default)")
    return spec


def task_for(config: Mapping[str, Any], requested: str | None) -> str | None:
    """The task a model is published for: `requested` when given, else the one its architecture names; None for
    a text generator or an encoder without a head (the span-served kinds)."""
    if requested is not None:
        return task_named(requested).name
    if "_diffusers_version" in config:
        # A diffusers pipeline's model_index.json: the text-to-image pipelines are the ones swarm runs.
        return "text-to-image"
    architectures = config.get("architectures")
    architecture = architectures[0] if isinstance(architectures, list) and architectures else None
    if not isinstance(architecture, str):
        return None
    if architecture in _ARCHITECTURES:
        return _ARCHITECTURES[architecture]
    for ending, task in _ARCHITECTURE_ENDINGS:
        if architecture.endswith(ending):
            return task
    return None


def split_into_spans(task: str | None, has_block_adapter: bool) -> bool:
    """Whether a model is published in block chunks (spans on peers) rather than as one full chunk (replicas):
    text generators and encoders of a family with block adapters, and task models of such a family whose task is
    a small head over the base model. Peers then take what their memory holds: all blocks, or a span."""
    if not has_block_adapter:
        return False
    return task is None or task_named(task).splits


def checked_params(spec: TaskSpec, params: object) -> dict[str, Any]:
    """The caller's parameters, each known to the task and in range (they come from the network or the command
    line); a clear error naming the first bad one."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise SwarmError(f"{spec.name} parameters must be an object")
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        allowed = ", ".join(spec.params) or "none"
        raise SwarmError(f"{spec.name} takes no parameter {unknown[0]!r} (it takes: {allowed})")
    for name, rule in spec.params.items():
        if rule.required and name not in params:
            raise SwarmError(f"{spec.name} needs the parameter {name!r}")
    return {name: _checked_value(name, spec.params[name], value) for name, value in params.items()}


def _checked_value(name: str, rule: Param, value: object) -> Any:
    if rule.kind in ("int", "float"):
        numeric = isinstance(value, int) or (rule.kind == "float" and isinstance(value, float))
        if not numeric or isinstance(value, bool) or not rule.low <= value <= rule.high:  # type: ignore[operator]
            raise SwarmError(f"parameter {name!r} must be a number from {rule.low:g} to {rule.high:g}")
        return value
    if rule.kind == "bool":
        if not isinstance(value, bool):
            raise SwarmError(f"parameter {name!r} must be true or false")
        return value
    if rule.kind == "choice":
        if value not in rule.choices:
            raise SwarmError(f"parameter {name!r} must be one of {', '.join(rule.choices)}")
        return value
    if rule.kind == "text":
        if not isinstance(value, str) or not rule.low <= len(value) <= rule.high:
            raise SwarmError(f"parameter {name!r} must be text of {rule.low:g} to {rule.high:g} characters")
        return value
    if not (isinstance(value, list) and rule.low <= len(value) <= rule.high):
        raise SwarmError(f"parameter {name!r} must be a list of {rule.low:g} to {rule.high:g} labels")
    if not all(isinstance(label, str) and 0 < len(label) <= 200 for label in value):
        raise SwarmError(f"parameter {name!r} must hold labels of 1 to 200 characters")
    return list(value)


def parse_params(spec: TaskSpec, pairs: Sequence[str]) -> dict[str, Any]:
    """`--param NAME=VALUE` pairs as the task's parameters: numbers and true/false by the parameter's kind, labels
    split at commas; then checked like any caller's (`checked_params`)."""
    params: dict[str, Any] = {}
    for pair in pairs:
        name, equals, text = pair.partition("=")
        rule = spec.params.get(name.strip())
        if not equals or rule is None:
            allowed = ", ".join(spec.params) or "none"
            raise SwarmError(f"--param {pair!r}: {spec.name} takes NAME=VALUE with NAME one of: {allowed}")
        params[name.strip()] = _parsed(name.strip(), rule, text.strip())
    return checked_params(spec, params)


def _parsed(name: str, rule: Param, text: str) -> Any:
    try:
        if rule.kind == "int":
            return int(text)
        if rule.kind == "float":
            return float(text)
    except ValueError:
        raise SwarmError(f"parameter {name!r} must be a number, not {text!r}") from None
    if rule.kind == "bool":
        if text.lower() not in ("true", "false"):
            raise SwarmError(f"parameter {name!r} must be true or false, not {text!r}")
        return text.lower() == "true"
    if rule.kind == "labels":
        return [label.strip() for label in text.split(",") if label.strip()]
    return text
