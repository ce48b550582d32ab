"""Running a pipeline (swarm.tasks.pipeline) on the swarm: a client per model (a TaskClient for task models, a
SwarmClient for language models), the stages in order, the steps of a stage at once, each step timed. A step that
fails fails over inside its client like any request; when every peer fails, the error names the step."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from swarm.client.resolve import Resolver
from swarm.config import Settings
from swarm.errors import SwarmError
from swarm.tasks.client import TaskClient
from swarm.tasks.pipeline import (
    PipelineSpec,
    Step,
    StepOutput,
    needed_steps,
    output_text,
    stages,
    step_input,
    step_models,
)

# New tokens of a language-model step that sets no max_new_tokens.
DEFAULT_NEW_TOKENS = 64
# Steps of one stage running at once.
MAX_PARALLEL_STEPS = 8


class StepClient(Protocol):
    def close(self) -> None: ...


@dataclass(frozen=True)
class PipelineResult:
    name: str
    output_step: str
    outputs: dict[str, StepOutput]
    # Seconds each step took, from its request to its answer.
    seconds: dict[str, float]

    @property
    def final(self) -> StepOutput:
        return self.outputs[self.output_step]

    def to_json(self) -> dict[str, Any]:
        steps = {
            step_id: {"output": output.output, "text": output.text, "file_type": output.file_type,
                      "seconds": round(self.seconds[step_id], 4)}
            for step_id, output in self.outputs.items()
        }  # fmt: skip
        return {"pipeline": self.name, "output": self.output_step, "steps": steps}


def connect_clients(settings: Settings, spec: PipelineSpec, torrent_peers: Sequence[str] = ()) -> dict[str, Any]:
    """A client per model the needed steps name, its peers those a step pins (`route`) or else those the DHT knows
    (all closed on error). Steps of one model share its client: they pin the same peers or none."""
    from swarm.client.resolve import parse_route
    from swarm.client.run import SwarmClient

    clients: dict[str, Any] = {}
    resolver = Resolver(settings, torrent_peers)
    try:
        for model, route_text in step_models(spec).items():
            manifest, torrent_data = resolver.manifest(model)
            route = parse_route(route_text) if route_text else []
            if manifest.task is None:
                clients[model] = SwarmClient.from_resolved(resolver, manifest, torrent_data, route)
                continue
            clients[model] = TaskClient.for_manifest(resolver, manifest, torrent_data)
            clients[model].find_peers(route or resolver.compute_addresses(manifest), pinned=bool(route))
    except BaseException:
        close_clients(clients)
        raise
    finally:
        resolver.close()
    return clients


def close_clients(clients: Mapping[str, StepClient]) -> None:
    for client in clients.values():
        client.close()


class PipelineCancelled(SwarmError):
    """The pipeline's caller left: the steps that had not started never ran, a language model stopped generating."""


def run_pipeline(
    spec: PipelineSpec,
    clients: Mapping[str, Any],
    data: bytes,
    on_text: Callable[[str], None] | None = None,
    on_step: Callable[[str, StepOutput, float], None] | None = None,
    cancelled: threading.Event | None = None,
) -> PipelineResult:
    """Every step the output needs, stage by stage; `on_text` streams the output step's text when a language model
    makes it, `on_step` hears of each step as it ends (its output and seconds). Once `cancelled` is set, a language
    model stops after its next token and no further stage starts (PipelineCancelled)."""
    needed = needed_steps(spec)
    outputs: dict[str, StepOutput] = {}
    seconds: dict[str, float] = {}
    with ThreadPoolExecutor(max_workers=MAX_PARALLEL_STEPS, thread_name_prefix="pipeline-step") as pool:
        for stage in stages(spec):
            _stop_if(cancelled, outputs)
            running = {}
            for step_id in (step_id for step_id in stage if step_id in needed):
                step = spec.step(step_id)
                streams = on_text if step_id == spec.output else None
                running[step_id] = pool.submit(
                    _timed, step, clients[step.model], step_input(step, data, outputs), streams, cancelled
                )
            for step_id, future in running.items():
                try:
                    outputs[step_id], seconds[step_id] = future.result()
                    if on_step is not None:
                        on_step(step_id, outputs[step_id], seconds[step_id])
                except SwarmError as error:
                    # From the error: a failing peer stays a failure of the swarm (a 5xx in swarm serve).
                    raise SwarmError(f"step {step_id!r} ({spec.step(step_id).model}) failed: {error}") from error
    _stop_if(cancelled, outputs)
    return PipelineResult(spec.name, spec.output, outputs, seconds)


def _stop_if(cancelled: threading.Event | None, done: Mapping[str, StepOutput]) -> None:
    if cancelled is not None and cancelled.is_set():
        finished = ", ".join(done) or "none"
        raise PipelineCancelled(f"the pipeline was cancelled by its caller (steps finished: {finished})")


def _timed(
    step: Step, client: Any, data: bytes, on_text: Callable[[str], None] | None, cancelled: threading.Event | None
) -> tuple[StepOutput, float]:  # fmt: skip
    started = time.perf_counter()
    if isinstance(client, TaskClient):
        result = client.run(data, step.params)
        output = StepOutput(result.output, output_text(result.output), result.file, result.file_type)
    else:
        output = _generate(step, client, data, on_text, cancelled.is_set if cancelled is not None else None)
    return output, time.perf_counter() - started


def _generate(
    step: Step,
    client: Any,
    data: bytes,
    on_text: Callable[[str], None] | None,
    should_stop: Callable[[], bool] | None = None,
) -> StepOutput:
    """A language model's step: the text it generates after the input (greedy unless params say otherwise)."""
    from swarm.client.generate import SamplingParams

    params = dict(step.params)
    new_tokens = params.pop("max_new_tokens", DEFAULT_NEW_TOKENS)
    try:
        sampling = SamplingParams(**params).check()
    except TypeError as error:
        raise SwarmError(f"step {step.id!r}: params: {error}") from None
    if not isinstance(new_tokens, int) or isinstance(new_tokens, bool) or new_tokens < 1:
        raise SwarmError(f"step {step.id!r}: max_new_tokens must be a positive integer")
    try:
        prompt = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SwarmError(f"{step.model} generates from text, but its input is a file") from None
    result = client.generate(prompt, new_tokens, sampling, on_text=on_text, should_stop=should_stop)
    return StepOutput({"text": result.generation.text}, result.generation.text)
