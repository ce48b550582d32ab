"""Pipelines of models, the pure part: a YAML definition read and checked, the order its steps may run in (steps
that need nothing from each other run together), and each step's input made from the pipeline's input and the
outputs of the steps before it.

    name: speech-summary
    steps:
      - id: heard
        model: asr                      # a task model: its task is in its manifest
        input: $input                   # the pipeline's input (bytes: a file, or text)
      - id: summary
        model: llm                      # a language model: generates from the text it is given
        input: "Summarize: {heard}"     # {step}: that step's text; {step.a.0.b}: a value in its JSON output
        params: {max_new_tokens: 24}
        route: 10.0.0.5:7000            # optional: pinned peers, as `swarm run --route` (default: the DHT's)
      - id: spoken
        model: tts
        input: $summary                 # $step: that step's file when it made one, else its text
    output: spoken                      # default: the last step

The definition is checked whole before anything runs: unknown steps, cycles, a step no one reads.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarm.errors import SwarmError

PIPELINE_INPUT = "input"
# The keys whose string is a task output's text, in the order they are looked for.
TEXT_KEYS = ("text", "generated_text", "summary_text", "translation_text", "label")
MAX_STEPS = 64
_ID_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class Step:
    id: str
    model: str
    # "$input", "$STEP", or a template with {input}, {STEP}, {STEP.path}.
    input: str
    params: Mapping[str, Any] = field(default_factory=dict)
    # Pinned peers HOST:PORT,... of the step's model (as `swarm run --route`); empty: found through the DHT.
    route: str = ""

    @property
    def needs(self) -> tuple[str, ...]:
        """The steps whose outputs this one reads (not the pipeline's input)."""
        return tuple(name for name in _references(self.input) if name != PIPELINE_INPUT)


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    steps: tuple[Step, ...]
    output: str

    def step(self, step_id: str) -> Step:
        return next(step for step in self.steps if step.id == step_id)


@dataclass(frozen=True)
class StepOutput:
    """What a step gave: its JSON output, its text (generated, transcribed, the top label), a file."""

    output: Any
    text: str | None = None
    file: bytes | None = None
    file_type: str | None = None


def read_pipeline(path: Path) -> PipelineSpec:
    """The pipeline a YAML file defines (checked as `parse_pipeline` does)."""
    import yaml

    try:
        record = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise SwarmError(f"cannot read the pipeline {path}: {error}") from None
    return parse_pipeline(record, str(path))


def parse_pipeline(record: object, origin: str = "pipeline") -> PipelineSpec:
    """A pipeline definition (parsed YAML or JSON), checked: a clear error naming the step that is wrong."""
    if not isinstance(record, dict):
        raise SwarmError(f"{origin}: a pipeline is a mapping with name and steps")
    name = record.get("name", "pipeline")
    raw_steps = record.get("steps")
    if not isinstance(name, str) or not isinstance(raw_steps, list) or not 0 < len(raw_steps) <= MAX_STEPS:
        raise SwarmError(f"{origin}: needs a name and a list of 1 to {MAX_STEPS} steps")
    steps = tuple(_step(raw, index, origin) for index, raw in enumerate(raw_steps))
    ids = [step.id for step in steps]
    if len(set(ids)) != len(ids) or PIPELINE_INPUT in ids:
        raise SwarmError(f"{origin}: step ids must be unique and not {PIPELINE_INPUT!r}")
    for step in steps:
        unknown = [needed for needed in step.needs if needed not in ids]
        if unknown:
            raise SwarmError(f"{origin}: step {step.id!r} reads {unknown[0]!r}, which is no step")
    routes: dict[str, str] = {}
    for step in steps:
        if routes.setdefault(step.model, step.route) != step.route:
            raise SwarmError(f"{origin}: steps of {step.model} pin different routes; pin one (or none)")
    output = record.get("output", ids[-1])
    if output not in ids:
        raise SwarmError(f"{origin}: output {output!r} is no step")
    spec = PipelineSpec(name, steps, output)
    stages(spec)  # refuses cycles now, before anything runs
    return spec


def _step(raw: object, index: int, origin: str) -> Step:
    where = f"{origin}: step {index + 1}"
    if not isinstance(raw, dict):
        raise SwarmError(f"{where} must be a mapping with id, model and input")
    step_id, model, text = raw.get("id"), raw.get("model"), raw.get("input", f"${PIPELINE_INPUT}")
    if not isinstance(step_id, str) or _ID_RE.fullmatch(step_id) is None:
        raise SwarmError(f"{where} needs an id: letters, digits, _ and -")
    if not isinstance(model, str) or not model:
        raise SwarmError(f"{where} ({step_id}) needs a model")
    if not isinstance(text, str):
        raise SwarmError(f"{where} ({step_id}): input must be text ($input, $STEP or a template)")
    params, route = raw.get("params", {}), raw.get("route", "")
    if not isinstance(params, dict):
        raise SwarmError(f"{where} ({step_id}): params must be a mapping")
    if not isinstance(route, str):
        raise SwarmError(f"{where} ({step_id}): route must be HOST:PORT[,HOST:PORT...]")
    try:
        _references(text)
    except ValueError as error:
        raise SwarmError(f"{where} ({step_id}): input template: {error}") from None
    return Step(step_id, model, text, params, route)


def _references(text: str) -> list[str]:
    """Names an input refers to: "$name" alone, or the first part of each {name.path} field of a template."""
    if text.startswith("$"):
        return [text[1:]]
    names = []
    for _literal, field_name, _spec, _conversion in string.Formatter().parse(text):
        if field_name is not None:
            if not field_name:
                raise ValueError("{} names no step")
            names.append(field_name.split(".")[0])
    return names


def stages(spec: PipelineSpec) -> list[list[str]]:
    """The steps in the order they may run: each stage's steps need only steps of earlier stages (they run
    together). A cycle is an error naming its steps."""
    done: set[str] = set()
    waiting = [step.id for step in spec.steps]
    order = []
    while waiting:
        ready = [step_id for step_id in waiting if set(spec.step(step_id).needs) <= done]
        if not ready:
            raise SwarmError(f"pipeline {spec.name}: steps {', '.join(waiting)} wait on each other (a cycle)")
        order.append(ready)
        done.update(ready)
        waiting = [step_id for step_id in waiting if step_id not in done]
    return order


def needed_steps(spec: PipelineSpec) -> set[str]:
    """The steps the output depends on (itself included): the others need not run."""
    needed, queue = set(), [spec.output]
    while queue:
        step_id = queue.pop()
        if step_id not in needed:
            needed.add(step_id)
            queue.extend(spec.step(step_id).needs)
    return needed


def step_models(spec: PipelineSpec) -> dict[str, str]:
    """The models the needed steps run, each with the route its steps pin ("" for none: the DHT's peers)."""
    return {spec.step(step_id).model: spec.step(step_id).route for step_id in sorted(needed_steps(spec))}


def step_input(step: Step, pipeline_input: bytes, outputs: Mapping[str, StepOutput]) -> bytes:
    """The bytes a step runs on: the pipeline's input, an earlier step's file or text, or a template filled in.
    An output that has no text where text is asked for is an error naming both steps."""
    if step.input.startswith("$"):
        source = step.input[1:]
        if source == PIPELINE_INPUT:
            return pipeline_input
        earlier = outputs[source]
        if earlier.file is not None:
            return earlier.file
        return _text_of(step, source, earlier).encode("utf-8")
    parts = []
    for literal, field_name, _spec, _conversion in string.Formatter().parse(step.input):
        parts.append(literal)
        if field_name is not None:
            parts.append(_field(step, field_name, pipeline_input, outputs))
    return "".join(parts).encode("utf-8")


def _field(step: Step, field_name: str, pipeline_input: bytes, outputs: Mapping[str, StepOutput]) -> str:
    source, *path = field_name.split(".")
    if source == PIPELINE_INPUT:
        try:
            return pipeline_input.decode("utf-8")
        except UnicodeDecodeError:
            raise SwarmError(f"step {step.id!r} reads the pipeline's input as text, but it is a file") from None
    earlier = outputs[source]
    if not path:
        return _text_of(step, source, earlier)
    value = earlier.output
    for key in path:
        if isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            raise SwarmError(f"step {step.id!r} reads {field_name!r}, which {source!r}'s output does not have")
    if isinstance(value, (dict, list)):
        raise SwarmError(f"step {step.id!r} reads {field_name!r}: that is not a single value")
    return str(value)


def _text_of(step: Step, source: str, earlier: StepOutput) -> str:
    if earlier.text is None:
        made = f"a {earlier.file_type} file" if earlier.file is not None else "no text"
        raise SwarmError(f"step {step.id!r} needs text from {source!r}, which made {made}")
    return earlier.text


def output_text(output: Any) -> str | None:
    """A task output's text: the first of TEXT_KEYS in it (or in its first item: classifiers list their labels
    best first)."""
    if isinstance(output, list) and output:
        output = output[0]
    if isinstance(output, dict):
        for key in TEXT_KEYS:
            if isinstance(output.get(key), str):
                return str(output[key])
    return None
