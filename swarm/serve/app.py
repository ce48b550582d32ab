"""The HTTP application: OpenAI's /v1 endpoints, the chat page at /, Prometheus metrics at /metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from swarm.client.run import route_record
from swarm.config import Settings
from swarm.errors import SwarmError
from swarm.serve.embeddings import embedding_response
from swarm.serve.errors import AUTHENTICATION, RATE_LIMIT, SERVER, ApiError, bad_request, from_swarm, swarm_failure
from swarm.serve.generation import Finished, Generation, GenerationSpec, Piece, usage
from swarm.serve.logprobs import chat_logprobs, completion_logprobs
from swarm.serve.metrics import ServeMetrics
from swarm.serve.models import ModelRegistry, ServedModel, sampling_params
from swarm.serve.schema import ChatRequest, CompletionRequest, EmbeddingRequest, Sampling
from swarm.serve.tasks import add_task_routes

log = logging.getLogger(__name__)

# New tokens of a request that sets no limit, when the model's context does not set a smaller one.
UNLIMITED_NEW_TOKENS = 4096
# Builds the chunk of a stream (or the body of an answer) for one choice: index, text, finish reason.
ChunkMaker = Callable[[int, str | None, str | None], dict[str, Any]]


class Admission:
    """Counts running generations; refuses what would go past the limit (429) rather than queueing without end."""

    def __init__(self, limit: int, metrics: ServeMetrics) -> None:
        self.limit = limit
        self.running = 0
        self.metrics = metrics

    def take(self, count: int) -> None:
        if self.running + count > self.limit:
            raise ApiError(
                429,
                f"this server runs at most {self.limit} generations at once and {self.running} are running; "
                "retry shortly",
                RATE_LIMIT,
                "too_many_generations",
            )
        self.running += count
        self.metrics.generations.set(self.running)

    def give_back(self, count: int) -> None:
        self.running -= count
        self.metrics.generations.set(self.running)


class RequestMetrics:
    """ASGI middleware: counts answers by route and status, and times them to their last byte (streams too)."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.request_seconds.labels(path).observe(time.perf_counter() - started)


def make_app(models: ModelRegistry, settings: Settings, metrics: ServeMetrics, executor: Executor) -> FastAPI:
    app = FastAPI(title="swarm", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestMetrics, metrics=metrics)
    admission = Admission(settings.serve_max_generations, metrics)
    _add_error_handlers(app)
    authorized = Depends(_key_check(settings.api_key))

    @app.get("/", response_class=HTMLResponse)
    async def chat_page() -> str:
        return resources.files("swarm.serve").joinpath("chat_page.html").read_text()

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        for model in models:
            metrics.peers.labels(model.name).set(model.peer_count())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=[authorized])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model.describe() for model in models]}

    @app.get("/v1/models/{name:path}", dependencies=[authorized])
    async def get_model(name: str) -> dict[str, Any]:
        return models.get(name).describe()

    @app.post("/v1/completions", dependencies=[authorized])
    async def completions(request: CompletionRequest) -> Response:
        model = _generator_model(models, request.model)
        prompts = [await _run(executor, _prompt_ids, model, prompt) for prompt in request.prompts()]
        specs = [
            _spec(model, ids, request.max_tokens, request, choice) for ids in prompts for choice in range(request.n)
        ]
        prompt_tokens = sum(len(ids) for ids in prompts)
        return await _answer(
            model, specs, prompt_tokens, request, _completion_maker(request.model), admission, metrics, executor
        )

    @app.post("/v1/chat/completions", dependencies=[authorized])
    async def chat_completions(request: ChatRequest) -> Response:
        model = _generator_model(models, request.model)
        ids = await _run(executor, model.client.encode_chat, request.chat())
        specs = [_spec(model, ids, request.token_limit, request, choice) for choice in range(request.n)]
        return await _answer(model, specs, len(ids), request, _chat_maker(request.model), admission, metrics, executor)

    async def in_worker(function: Callable[..., Any], *arguments: Any) -> Any:
        return await _run(executor, function, *arguments)

    add_task_routes(app, models, in_worker, authorized, metrics)

    @app.post("/v1/embeddings", dependencies=[authorized])
    async def embeddings(request: EmbeddingRequest) -> dict[str, Any]:
        model = models.get(request.model)
        if model.client.causal:
            raise bad_request(f"{model.name} generates text; embeddings come from encoder models", "model")
        results = await asyncio.gather(*(_run(executor, model.client.embed, text) for text in request.texts()))
        return embedding_response(request, results)

    return app


async def _run(executor: Executor, function: Callable[..., Any], *arguments: Any) -> Any:
    """`function(*arguments)` in a worker thread. A failure of the swarm gets its 5xx status; any other
    SwarmError is about the request (400)."""
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, function, *arguments)
    except ApiError:
        raise
    except SwarmError as error:
        raise (swarm_failure(error) if from_swarm(error) else bad_request(str(error))) from error


def _generator_model(models: ModelRegistry, name: str) -> ServedModel:
    model = models.get(name)
    if not model.client.causal:
        raise bad_request(f"{model.name} is an encoder: use /v1/embeddings", "model")
    return model


def _prompt_ids(model: ServedModel, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        return model.client.encode(prompt)
    vocab = min((client.parts.vocab_size or 0 for client in model.swarm_clients), default=0)
    if vocab and any(token >= vocab for token in prompt):
        raise SwarmError(f"a prompt token id is not below {model.name}'s vocabulary size {vocab}")
    return prompt


def _spec(model: ServedModel, ids: list[int], max_tokens: int | None, request: Sampling, choice: int) -> GenerationSpec:
    if not ids:
        raise bad_request("the prompt is empty: give at least one token", "prompt")
    try:
        # No limit given: as many tokens as the model's context leaves.
        new_tokens = model.client.fit_to_context(len(ids), UNLIMITED_NEW_TOKENS if max_tokens is None else max_tokens)
    except SwarmError as error:
        raise bad_request(str(error), "messages", "context_length_exceeded") from error
    params = sampling_params(request.temperature, request.top_p, request.seed, choice)
    return GenerationSpec(ids, new_tokens, params, tuple(request.stops), request.ignore_eos, request.wanted_logprobs)


async def _answer(
    model: ServedModel,
    specs: Sequence[GenerationSpec],
    prompt_tokens: int,
    request: Sampling,
    maker: ChunkMaker,
    admission: Admission,
    metrics: ServeMetrics,
    executor: Executor,
) -> Response:
    """Run the choices; answer with one JSON body, or stream them as server-sent events."""
    admission.take(len(specs))
    generation = Generation(model.client, specs, executor)

    async def release() -> None:
        await generation.wait_closed()
        admission.give_back(len(specs))

    if request.stream:
        events = _stream(generation, model.name, prompt_tokens, request.include_usage, maker, metrics)
        return EventSourceResponse(events, background=BackgroundTask(release))
    try:
        ends = await generation.finished()
    finally:
        generation.cancel()
        await release()
    failed = next((end.error for end in ends if end.error is not None), None)
    if failed is not None:
        raise _failure(failed)
    _count(metrics, model.name, generation, prompt_tokens, ends)
    body = maker(0, None, None)
    body["choices"] = [maker(end.index, end.text, end.finish_reason)["choices"][0] for end in ends]
    if request.wanted_logprobs is not None:
        decoder = model.client.decoder()
        shape = chat_logprobs if isinstance(request, ChatRequest) else completion_logprobs
        for choice, end in zip(body["choices"], ends, strict=True):
            choice["logprobs"] = shape(end.logprobs, decoder)
    body["usage"] = usage(prompt_tokens, ends)
    body["swarm"] = _swarm_record(ends)
    return JSONResponse(body)


async def _stream(
    generation: Generation,
    model_name: str,
    prompt_tokens: int,
    include_usage: bool,
    maker: ChunkMaker,
    metrics: ServeMetrics,
) -> AsyncIterator[dict[str, str]]:
    """Server-sent events in OpenAI's chunk format, ending in [DONE]; an error ends the stream with an error
    event. If the client leaves, the generation is cancelled (its sessions close on every peer)."""
    ends: list[Finished] = []
    try:
        for index in range(len(generation.runs)):
            yield _data(maker(index, "", None))
        async for event in generation.events():
            if isinstance(event, Piece):
                yield _data(maker(event.index, event.text, None))
                continue
            if event.error is not None:
                generation.cancel()
                yield _data(_failure(event.error).body())
                return
            ends.append(event)
            chunk = maker(event.index, None, event.finish_reason)
            chunk["swarm"] = _swarm_record([event])
            yield _data(chunk)
        _count(metrics, model_name, generation, prompt_tokens, ends)
        if include_usage:
            yield _data(maker(0, None, None) | {"choices": [], "usage": usage(prompt_tokens, ends)})
        yield {"data": "[DONE]"}
    finally:
        generation.cancel()


def _data(chunk: dict[str, Any]) -> dict[str, str]:
    return {"data": json.dumps(chunk, separators=(",", ":"))}


def _failure(error: BaseException) -> ApiError:
    if isinstance(error, ApiError):
        return error
    if isinstance(error, SwarmError):
        return swarm_failure(error)
    log.error("generation failed", exc_info=error)
    return ApiError(500, f"internal error: {type(error).__name__}: {error}", SERVER, "internal")


def _count(
    metrics: ServeMetrics, model_name: str, generation: Generation, prompt_tokens: int, ends: Sequence[Finished]
) -> None:
    counts = usage(prompt_tokens, ends)
    metrics.prompt_tokens.labels(model_name).inc(counts["prompt_tokens"])
    metrics.completion_tokens.labels(model_name).inc(counts["completion_tokens"])
    metrics.failovers.labels(model_name).inc(sum(len(end.result.failovers) for end in ends if end.result))
    if generation.first_text_seconds is not None:
        metrics.first_token_seconds.labels(model_name).observe(generation.first_text_seconds)


def _swarm_record(ends: Sequence[Finished]) -> dict[str, Any]:
    """Where the answer was computed and how fast (an extension of OpenAI's shape; clients ignore it)."""
    results = [end.result for end in ends if end.result is not None]
    if not results:
        return {}
    last = results[-1]
    timings = last.generation.timings()
    return {
        "route": route_record(last.route),
        "failovers": sum(len(result.failovers) for result in results),
        "prefill_seconds": timings["prefill_seconds"],
        "tokens_per_second": timings["tokens_per_second"],
    }


def _completion_maker(model_name: str) -> ChunkMaker:
    identity, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def make(index: int, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        choice = {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        return {
            "id": identity,
            "object": "text_completion",
            "created": created,
            "model": model_name,
            "choices": [choice],
        }

    return make


def _chat_maker(model_name: str) -> ChunkMaker:
    """Chat chunks carry `delta`s; the whole answer (finish_reason given, text given) a `message`."""
    identity, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def make(index: int, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "finish_reason": finish_reason, "logprobs": None}
        if finish_reason is not None and text is not None:
            choice["message"] = {"role": "assistant", "content": text}
            kind = "chat.completion"
        else:
            choice["delta"] = {"role": "assistant", "content": ""} if text == "" else {"content": text} if text else {}
            kind = "chat.completion.chunk"
        return {"id": identity, "object": kind, "created": created, "model": model_name, "choices": [choice]}

    return make


def _key_check(api_key: str) -> Callable[[str | None], None]:
    def check(authorization: str | None = Header(None)) -> None:
        if not api_key:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(
                401, "Incorrect API key: send it as 'Authorization: Bearer KEY'", AUTHENTICATION, "invalid_api_key"
            )

    return check


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {}
        if first.get("type") == "json_invalid":
            reason = first.get("ctx", {}).get("error", "")
            return JSONResponse(bad_request(f"the request body is not valid JSON: {reason}").body(), status_code=400)
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        message = str(first.get("msg", "invalid request"))
        text = f"{where}: {message}" if where else message
        return JSONResponse(bad_request(text, where or None).body(), status_code=400)
