"""What `swarm serve` does: make a client per model, bind the address, run the ASGI app under uvicorn."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvicorn

from swarm.address import Address
from swarm.client.ensemble import EnsembleClient
from swarm.client.resolve import Resolver
from swarm.client.run import SwarmClient
from swarm.config import Settings
from swarm.errors import SwarmError
from swarm.serve.app import make_app
from swarm.serve.metrics import ServeMetrics
from swarm.serve.models import ModelRegistry, PeerWatch, ServedModel, connect_model

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
) -> tuple[list[ServedModel], list[tuple[SwarmClient, Resolver]]]:
    """A served model per reference (or one ensemble of them all, named A+B+...), and the (client, resolver)
    pairs whose peers the DHT is asked about later."""
    clients: list[SwarmClient] = []
    watched: list[tuple[SwarmClient, Resolver]] = []
    try:
        for reference in references:
            client, resolver = connect_model(settings, reference, route, torrent_peers, shared_route=bool(ensemble))
            clients.append(client)
            if resolver is not None:
                watched.append((client, resolver))
        if ensemble is None:
            return [ServedModel(client.name, client, swarm_clients=[client]) for client in clients], watched
        together = EnsembleClient(clients, ensemble)
        return [ServedModel(together.name, together, swarm_clients=clients)], watched
    except BaseException:
        for client in clients:
            client.close()
        for _, resolver in watched:
            resolver.close()
        raise


def serve_until_stopped(
    settings: Settings,
    served: Sequence[ServedModel],
    watched: Sequence[tuple[SwarmClient, Resolver]],
    announce: Callable[[dict[str, Any]], None],
) -> None:
    """Answer HTTP requests until SIGINT/SIGTERM; then let open streams end (briefly) and close every client."""
    listener = bind(settings.serve_listen)
    host, port = listener.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    executor = ThreadPoolExecutor(max_workers=settings.serve_max_generations + 8, thread_name_prefix="generation")
    metrics = ServeMetrics()
    app = make_app(ModelRegistry(served), settings, metrics, executor)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS
    )
    watch = PeerWatch(watched, settings.peer_rediscovery_interval)
    watch.start()
    announce(
        {
            "event": "serving",
            "address": f"http://{shown_host}:{port}",
            "models": [{"id": model.name, "peers": model.peer_count()} for model in served],
        }
    )
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    try:
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        watch.stop()
        executor.shutdown(wait=True, cancel_futures=True)
        for model in served:
            model.client.close()
        listener.close()
