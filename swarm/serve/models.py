"""The models a server answers for, and keeping their lists of compute peers current.

Each model is a client made once at start (its tokenizer, embeddings and head loaded); requests share it, each
generation on a session and sockets of its own. Peers that join or leave later are found by looking in the DHT
again every `Settings.peer_rediscovery_interval` seconds (a pinned --route is kept as given).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from swarm.client.generate import SamplingParams, TokenDecoder
from swarm.client.resolve import Resolver
from swarm.client.run import EmbedResult, SwarmClient
from swarm.config import Settings
from swarm.errors import SwarmError
from swarm.manifest import Manifest
from swarm.serve.errors import INVALID_REQUEST, ApiError, bad_request
from swarm.serve.generation import Generator
from swarm.tasks.client import TaskClient
from swarm.tasks.pipeline import PipelineSpec
from swarm.tasks.pipeline_run import close_clients

log = logging.getLogger(__name__)


class ServedClient(Generator, Protocol):
    """What the server uses of a model's client (a SwarmClient, or an ensemble of them)."""

    @property
    def name(self) -> str: ...

    @property
    def causal(self) -> bool: ...

    def encode(self, prompt: str) -> list[int]: ...

    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]: ...

    def fit_to_context(self, prompt_length: int, max_new_tokens: int) -> int: ...

    def embed(self, text: str) -> EmbedResult: ...

    def decoder(self) -> TokenDecoder: ...

    def close(self) -> None: ...


@dataclass
class ServedTask:
    """A task model (speech recognition, image classification, ...): requests go to its peers whole."""

    name: str
    client: TaskClient
    created: int = field(default_factory=lambda: int(time.time()))

    def peer_count(self) -> int:
        return len({peer.peer_id or peer.address for peer in self.client.peers})

    def describe(self) -> dict[str, Any]:
        record = {"id": self.name, "object": "model", "created": self.created, "owned_by": "swarm"}
        return record | {"task": self.client.spec.name}


@dataclass
class ServedPipeline:
    """A pipeline of models (swarm.tasks.pipeline) and a client per model it runs."""

    spec: PipelineSpec
    clients: dict[str, Any]

    def close(self) -> None:
        close_clients(self.clients)


@dataclass
class ServedModel:
    name: str
    client: ServedClient
    created: int = field(default_factory=lambda: int(time.time()))
    # The SwarmClients whose peers the DHT is asked about again (one per model of an ensemble).
    swarm_clients: list[SwarmClient] = field(default_factory=list)

    def peer_count(self) -> int:
        """Compute peers known (one peer reached at two addresses is one)."""
        return sum(len({peer.peer_id or peer.address for peer in client.peers}) for client in self.swarm_clients)

    def describe(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "swarm"}


class ModelRegistry:
    """The models a server answers for: generators and encoders, task models, and pipelines (by name)."""

    def __init__(
        self,
        models: Sequence[ServedModel],
        tasks: Sequence[ServedTask] = (),
        pipelines: Mapping[str, ServedPipeline] | None = None,
    ) -> None:
        self.models = {model.name: model for model in models}
        self.tasks = {task.name: task for task in tasks}
        self.pipelines = dict(pipelines or {})

    def get(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            task = self.tasks.get(name)
            if task is not None:
                raise bad_request(
                    f"{name} runs the task {task.client.spec.name}: POST /v1/tasks/{task.client.spec.name}"
                )
            raise self._unknown(name)
        return model

    def task(self, name: str) -> ServedTask:
        task = self.tasks.get(name)
        if task is None:
            if name in self.models:
                raise bad_request(f"{name} generates or embeds text: it runs no task", "model")
            raise self._unknown(name)
        return task

    def pipeline(self, name: str) -> ServedPipeline:
        pipeline = self.pipelines.get(name)
        if pipeline is None:
            known = ", ".join(sorted(self.pipelines)) or "none"
            raise ApiError(404, f"No pipeline '{name}' here; this server runs: {known}", INVALID_REQUEST, "not_found")
        return pipeline

    def _unknown(self, name: str) -> ApiError:
        known = ", ".join(sorted([*self.models, *self.tasks]))
        return ApiError(
            404, f"The model '{name}' does not exist here; this server has: {known}", INVALID_REQUEST,
            "model_not_found", "model",
        )  # fmt: skip

    def __iter__(self) -> Any:
        return iter([*self.models.values(), *self.tasks.values()])

    def close(self) -> None:
        for served in self:
            served.client.close()
        for pipeline in self.pipelines.values():
            pipeline.close()


def connect_model(
    settings: Settings, reference: str, route: Sequence[str], torrent_peers: Sequence[str], shared_route: bool = False
) -> tuple[SwarmClient | TaskClient, Resolver | None]:
    """A client for `reference` (a TaskClient for a task model) and, unless its route is given, the resolver that
    finds its peers again later (kept open: it holds the DHT node). A model whose peers are not found yet is served
    once they are. `shared_route`: the route lists peers of several models (an ensemble's); this one uses those
    serving it."""
    resolver = Resolver(settings, torrent_peers)
    try:
        manifest, torrent_data = resolver.manifest(reference)
        if manifest.task is not None:
            return _connect_task(manifest, torrent_data, route, resolver)
        pinned = () if shared_route else route
        client = SwarmClient.from_resolved(resolver, manifest, torrent_data, pinned, require_peers=False)
        if shared_route and route:
            client.find_peers(route, pinned=False)
    except BaseException:
        resolver.close()
        raise
    if route:
        resolver.close()
        return client, None
    return client, resolver


def _connect_task(
    manifest: Manifest, torrent_data: bytes, route: Sequence[str], resolver: Resolver
) -> tuple[TaskClient, Resolver | None]:
    client = TaskClient.for_manifest(resolver, manifest, torrent_data)
    if route:
        resolver.close()
        client.find_peers(route, pinned=True)
        return client, None
    try:
        client.find_peers(resolver.compute_addresses(manifest), pinned=False)
    except SwarmError as error:
        log.warning("no peers of %s yet: %s", manifest.name, error)
    return client, resolver


class WatchedClient(Protocol):
    """A client whose peers are looked for again (a SwarmClient or a TaskClient)."""

    @property
    def manifest(self) -> Manifest: ...

    def find_peers(self, addresses: Sequence[str], pinned: bool) -> None: ...


class PeerWatch(threading.Thread):
    """Asks the DHT for the models' compute peers every `interval` seconds, until stopped."""

    def __init__(self, watched: Sequence[tuple[WatchedClient, Resolver]], interval: float) -> None:
        super().__init__(name="peer-watch", daemon=True)
        self.watched = list(watched)
        self.interval = interval
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            for client, resolver in self.watched:
                try:
                    client.find_peers(resolver.compute_addresses(client.manifest), pinned=False)
                except SwarmError as error:
                    log.warning("looking for peers of %s: %s", client.manifest.name, error)

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=5)
        for _, resolver in self.watched:
            resolver.close()


def sampling_params(temperature: float, top_p: float, seed: int | None, choice: int) -> SamplingParams:
    """Choice `choice` of a request: its own seed (seed + choice) so the choices differ and each repeats."""
    return SamplingParams(temperature=temperature, top_p=top_p, seed=None if seed is None else seed + choice)
