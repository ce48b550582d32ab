"""What `swarm serve` does: make a client per model, bind the address, run the ASGI app under uvicorn."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import uvicorn

from swarm.address import Address
from swarm.client.ensemble import EnsembleClient
from swarm.client.resolve import Resolver, parse_route
from swarm.client.run import SwarmClient
from swarm.config import Settings
from swarm.errors import SwarmError
from swarm.serve.app import make_app
from swarm.serve.metrics import ServeMetrics
from swarm.serve.models import (
    ModelRegistry,
    PeerWatch,
    ServedModel,
    ServedPipeline,
    ServedTask,
    WatchedClient,
    connect_model,
)
from swarm.tasks.client import TaskClient
from swarm.tasks.pipeline import read_pipeline, step_models
from swarm.tasks.pipeline_run import close_clients

# Seconds open streams get to finish when the server is told to stop; then they are cut (their sessions close).
GRACEFUL_SHUTDOWN_SECONDS = 5


def bind(address: Address) -> socket.socket:
    """A listening TCP socket on `address` (port 0: a free one); a taken address is a one-line error."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address.pair)
    except OSError as error:
        listener.close()
        if error.errno == errno.EADDRINUSE:
            raise SwarmError(f"{address} is taken by another program: choose another with --listen") from error
        raise SwarmError(f"cannot listen on {address}: {error.strerror}") from error
    listener.listen(512)
    return listener


def connect_models(
    settings: Settings,
    references: Sequence[str],
    route: Sequence[str],
    torrent_peers: Sequence[str],
    ensemble: str | None = None,
    pipeline_files: Sequence[Path] = (),
) -> tuple[ModelRegistry, list[tuple[WatchedClient, Resolver]]]:
    """The models served: one per reference (a task model's own kind; or one ensemble of them all, named A+B+...)
    and the pipelines of `pipeline_files`; and the (client, resolver) pairs whose peers the DHT is asked about
    later."""
    clients: list[SwarmClient | TaskClient] = []
    watched: list[tuple[WatchedClient, Resolver]] = []
    pipelines: dict[str, ServedPipeline] = {}
    try:
        for reference in references:
            client, resolver = connect_model(settings, reference, route, torrent_peers, shared_route=bool(ensemble))
            clients.append(client)
            if resolver is not None:
                watched.append((client, resolver))
        for path in pipeline_files:
            pipeline = connect_pipeline(settings, path, torrent_peers, watched)
            pipelines[pipeline.spec.name] = pipeline
        tasks = [ServedTask(client.manifest.name, client) for client in clients if isinstance(client, TaskClient)]
        models = [client for client in clients if isinstance(client, SwarmClient)]
        if ensemble is None:
            served = [ServedModel(client.name, client, swarm_clients=[client]) for client in models]
            return ModelRegistry(served, tasks, pipelines), watched
        if tasks:
            raise SwarmError(f"{tasks[0].name} runs the task {tasks[0].client.spec.name}: it joins no ensemble")
        together = EnsembleClient(models, ensemble)
        return ModelRegistry([ServedModel(together.name, together, swarm_clients=models)], (), pipelines), watched
    except BaseException:
        for client in clients:
            client.close()
        for pipeline in pipelines.values():
            pipeline.close()
        for _, resolver in watched:
            resolver.close()
        raise


def connect_pipeline(
    settings: Settings, path: Path, torrent_peers: Sequence[str], watched: list[tuple[WatchedClient, Resolver]]
) -> ServedPipeline:
    """The pipeline `path` defines, with a client per model its steps run, connected as served models are (a model
    whose peers are not up yet is served once they are; those not pinned are looked for again: added to
    `watched`)."""
    spec = read_pipeline(path)
    clients: dict[str, Any] = {}
    try:
        for model, route_text in step_models(spec).items():
            client, resolver = connect_model(
                settings, model, parse_route(route_text) if route_text else [], torrent_peers
            )
            clients[model] = client
            if resolver is not None:
                watched.append((client, resolver))
    except BaseException:
        close_clients(clients)
        raise
    return ServedPipeline(spec, clients)


def serve_until_stopped(
    settings: Settings,
    registry: ModelRegistry,
    watched: Sequence[tuple[WatchedClient, Resolver]],
    announce: Callable[[dict[str, Any]], None],
) -> None:
    """Answer HTTP requests until SIGINT/SIGTERM; then let open streams end (briefly) and close every client."""
    listener = bind(settings.serve_listen)
    host, port = listener.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    executor = ThreadPoolExecutor(max_workers=settings.serve_max_generations + 8, thread_name_prefix="generation")
    metrics = ServeMetrics()
    app = make_app(registry, settings, metrics, executor)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS
    )
    watch = PeerWatch(watched, settings.peer_rediscovery_interval)
    watch.start()
    announce(
        {
            "event": "serving",
            "address": f"http://{shown_host}:{port}",
            "models": [{"id": model.name, "peers": model.peer_count()} for model in registry],
            "pipelines": sorted(registry.pipelines),
        }
    )
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    try:
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        watch.stop()
        executor.shutdown(wait=True, cancel_futures=True)
        registry.close()
        listener.close()
