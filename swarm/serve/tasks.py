"""The HTTP face of task models and pipelines: OpenAI's /v1/audio/transcriptions, /v1/audio/speech and
/v1/images/generations, and for everything else /v1/tasks/{task} and /v1/pipelines/{name}.

Files come as multipart uploads (OpenAI's shape) or base64 in JSON; files go back as the body (speech) or base64 in
JSON. Requests run in worker threads; a bad input is a 400 naming what is wrong, a failing swarm a 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.params import Depends
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse

from swarm.errors import SwarmError
from swarm.serve.errors import ApiError, bad_request
from swarm.serve.metrics import ServeMetrics
from swarm.serve.models import ModelRegistry, ServedPipeline, ServedTask
from swarm.tasks import media
from swarm.tasks.catalog import MAX_INPUT_BYTES, MAX_TEXT_CHARS, task_named
from swarm.tasks.pipeline import StepOutput
from swarm.tasks.pipeline_run import PipelineCancelled, PipelineResult, run_pipeline
from swarm.tasks.protocol import TaskResult

InWorker = Callable[..., Awaitable[Any]]
SPEECH_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm"}


class SpeechRequest(BaseModel):
    """OpenAI's /v1/audio/speech body. `voice` and `instructions` are accepted and change nothing: a swarm text-to-
    audio model speaks with the one voice it has. Only speed 1 is supported."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    input: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    voice: str | dict[str, Any] | None = None
    instructions: str | None = None
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)


class ImageRequest(BaseModel):
    """OpenAI's /v1/images/generations body: `n` images of `size` ("WIDTHxHEIGHT"), as base64 PNG. Image i is drawn
    from seed `seed` + i (not OpenAI's: repeatable images)."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    prompt: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    n: int = Field(1, ge=1, le=8)
    size: str | None = Field(None, pattern=r"^[0-9]{1,4}x[0-9]{1,4}$")
    response_format: Literal["b64_json", "url"] = "b64_json"
    seed: int = Field(0, ge=0, le=2**31 - 8)


class TaskRequest(BaseModel):
    """A /v1/tasks/{task} or /v1/pipelines/{name} body in JSON: text as `input`, a file as `input_base64`."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    input: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    input_base64: str | None = Field(None, max_length=MAX_INPUT_BYTES * 4 // 3 + 4)
    params: dict[str, Any] = Field(default_factory=dict)
    # Pipelines only: answer as server-sent events (each step as it ends, a language model's text as it comes).
    stream: bool = False

    def data(self) -> bytes:
        if (self.input is None) == (self.input_base64 is None):
            raise bad_request("give exactly one of input (text) or input_base64 (a file)", "input")
        if self.input is not None:
            return self.input.encode("utf-8")
        try:
            return base64.b64decode(self.input_base64 or "", validate=True)
        except binascii.Error as error:
            raise bad_request(f"input_base64 is not base64: {error}", "input_base64") from None


def add_task_routes(
    app: FastAPI, models: ModelRegistry, in_worker: InWorker, authorized: Depends, metrics: ServeMetrics
) -> None:
    @app.post("/v1/audio/transcriptions", dependencies=[authorized])
    async def transcriptions(
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form()],
        response_format: Annotated[str, Form()] = "json",
    ) -> Response:
        served = _task_model(models, model, "automatic-speech-recognition")
        if response_format not in ("json", "text"):
            raise bad_request(
                f"response_format {response_format!r} is not supported: use json or text", "response_format"
            )
        result: TaskResult = await in_worker(served.client.run, await _upload(file), {})
        text = str(result.output.get("text", "")) if isinstance(result.output, dict) else ""
        return PlainTextResponse(text) if response_format == "text" else Response(json.dumps({"text": text}),
                                                                                    media_type="application/json")  # fmt: skip

    @app.post("/v1/audio/speech", dependencies=[authorized])
    async def speech(request: SpeechRequest) -> Response:
        served = _task_model(models, request.model, "text-to-audio")
        if request.response_format == "aac":
            raise bad_request("aac is not supported: use mp3, opus, flac, wav or pcm", "response_format")
        if request.speed != 1.0:
            raise bad_request("this model speaks at one speed: leave speed at 1", "speed")
        result: TaskResult = await in_worker(served.client.run, request.input.encode("utf-8"), {})
        audio = media.read_audio(result.file or b"")
        encoded = media.encode_audio(audio.samples, audio.sampling_rate, request.response_format)
        return Response(encoded, media_type=SPEECH_TYPES[request.response_format])

    @app.post("/v1/images/generations", dependencies=[authorized])
    async def images(request: ImageRequest) -> dict[str, Any]:
        served = _task_model(models, request.model, "text-to-image")
        if request.response_format == "url":
            raise bad_request("this server answers images as b64_json only", "response_format")
        params: dict[str, Any] = {}
        if request.size is not None:
            width, height = (int(side) for side in request.size.split("x"))
            params.update(width=width, height=height)
        drawn = [
            await in_worker(served.client.run, request.prompt.encode("utf-8"), params | {"seed": request.seed + index})
            for index in range(request.n)
        ]
        data = [{"b64_json": base64.b64encode(result.file or b"").decode("ascii")} for result in drawn]
        return {"created": int(time.time()), "data": data}

    @app.post("/v1/tasks/{task}", dependencies=[authorized])
    async def task(task: str, http: Request) -> dict[str, Any]:
        request, data = await _task_body(http)
        served = _task_model(models, request.model or "", task)
        result: TaskResult = await in_worker(served.client.run, data, request.params)
        return {"object": "task.result", "model": served.name} | _result_record(result)

    @app.post("/v1/pipelines/{name}", dependencies=[authorized], response_model=None)
    async def pipeline(name: str, http: Request) -> dict[str, Any] | EventSourceResponse:
        served = models.pipeline(name)
        request, data = await _task_body(http)
        if request.stream:
            return EventSourceResponse(_pipeline_events(name, served, data, in_worker, metrics))
        return _pipeline_record(name, await in_worker(run_pipeline, served.spec, served.clients, data))


async def _pipeline_events(
    name: str, served: ServedPipeline, data: bytes, in_worker: InWorker, metrics: ServeMetrics
) -> AsyncIterator[dict[str, str]]:
    """A pipeline's run as server-sent events: `pipeline.step` as each step ends, `pipeline.text` for each piece of a
    language model's output step, then `pipeline.result` (or an error in OpenAI's shape) and [DONE]."""
    loop, queue = asyncio.get_running_loop(), asyncio.Queue[dict[str, Any] | None]()

    def put(event: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, event)

    def on_step(step: str, output: StepOutput, seconds: float) -> None:
        put({"object": "pipeline.step", "step": step, "text": output.text, "file_type": output.file_type,
             "seconds": round(seconds, 4)})  # fmt: skip

    def on_text(piece: str) -> None:
        put({"object": "pipeline.text", "step": served.spec.output, "text": piece})

    cancelled = threading.Event()
    running = asyncio.ensure_future(
        in_worker(run_pipeline, served.spec, served.clients, data, on_text, on_step, cancelled)
    )
    running.add_done_callback(lambda _: queue.put_nowait(None))
    running.add_done_callback(_count_cancelled(metrics, name))
    try:
        while (event := await queue.get()) is not None:
            yield {"data": json.dumps(event)}
        try:
            yield {"data": json.dumps(_pipeline_record(name, running.result()))}
        except ApiError as error:
            yield {"data": json.dumps(error.body())}
        yield {"data": "[DONE]"}
    finally:
        # The client left (or the stream ended): steps not started yet never run, a language model stops.
        cancelled.set()


def _count_cancelled(metrics: ServeMetrics, name: str) -> Callable[[asyncio.Future[Any]], None]:
    def done(future: asyncio.Future[Any]) -> None:
        error = None if future.cancelled() else future.exception()
        if isinstance(error, ApiError) and isinstance(error.__cause__, PipelineCancelled):
            metrics.pipelines_cancelled.labels(pipeline=name).inc()

    return done


def _pipeline_record(name: str, result: PipelineResult) -> dict[str, Any]:
    final = result.final
    steps = {step: {"text": output.text, "file_type": output.file_type, "seconds": round(result.seconds[step], 4)}
             for step, output in result.outputs.items()}  # fmt: skip
    record = {"object": "pipeline.result", "pipeline": name, "output": final.output, "text": final.text}
    return record | _file_record(final.file, final.file_type) | {"steps": steps}


def _task_model(models: ModelRegistry, name: str, task: str) -> ServedTask:
    """The served task model `name`, which must run `task` (a 400 naming both otherwise)."""
    if not name:
        raise bad_request("the request names no model", "model")
    served = models.task(name)
    try:
        wanted = task_named(task).name
    except SwarmError as error:
        raise ApiError(404, str(error), "invalid_request_error", "not_found") from None
    if served.client.spec.name != wanted:
        raise bad_request(f"{name} runs {served.client.spec.name}, not {wanted}", "model")
    return served


async def _upload(file: UploadFile) -> bytes:
    data = await file.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise bad_request(f"the file is larger than {MAX_INPUT_BYTES} bytes", "file")
    return data


async def _task_body(http: Request) -> tuple[TaskRequest, bytes]:
    """The request and its input's bytes, from JSON or from a multipart form (file, model, params as JSON text)."""
    if http.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await http.form()
        upload, params = form.get("file"), form.get("params", "{}")
        if not isinstance(upload, UploadFile) or not isinstance(params, str):
            raise bad_request("a multipart task request needs a file (and params as JSON text)", "file")
        model = form.get("model")
        try:
            parsed = json.loads(params)
        except ValueError:
            raise bad_request("params is not JSON", "params") from None
        fields = TaskRequest(model=model if isinstance(model, str) else None, input=None, input_base64=None,
                             params=parsed if isinstance(parsed, dict) else {})  # fmt: skip
        return fields, await _upload(upload)
    try:
        request = TaskRequest.model_validate_json(await http.body())
    except ValueError as error:
        raise bad_request(f"the request body is not a task request: {str(error)[:300]}") from None
    return request, request.data()


def _result_record(result: TaskResult) -> dict[str, Any]:
    record = {"task": result.task, "output": result.output, "peer": result.peer, "seconds": round(result.seconds, 4)}
    record |= {name: tensor.tolist() for name, tensor in result.tensors.items()}
    return record | _file_record(result.file, result.file_type)


def _file_record(file: bytes | None, file_type: str | None) -> dict[str, Any]:
    if file is None:
        return {}
    return {"file_type": file_type, "file_base64": base64.b64encode(file).decode("ascii")}
