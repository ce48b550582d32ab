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
from swarm.serve.errors import INVALID_REQUEST, ApiError
from swarm.serve.generation import Generator

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
    def __init__(self, models: Sequence[ServedModel]) -> None:
        self.models = {model.name: model for model in models}

    def get(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            known = ", ".join(sorted(self.models))
            raise ApiError(
                404,
                f"The model '{name}' does not exist here; this server has: {known}",
                INVALID_REQUEST,
                "model_not_found",
                "model",
            )
        return model

    def __iter__(self) -> Any:
        return iter(self.models.values())


def connect_model(
    settings: Settings, reference: str, route: Sequence[str], torrent_peers: Sequence[str], shared_route: bool = False
) -> tuple[SwarmClient, Resolver | None]:
    """A client for `reference` and, unless its route is given, the resolver that finds its peers again later
    (kept open: it holds the DHT node). A model whose peers are not found yet is served once they are.
    `shared_route`: the route lists peers of several models (an ensemble's); this one uses those serving it."""
    resolver = Resolver(settings, torrent_peers)
    try:
        manifest, torrent_data = resolver.manifest(reference)
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


class PeerWatch(threading.Thread):
    """Asks the DHT for the models' compute peers every `interval` seconds, until stopped."""

    def __init__(self, watched: Sequence[tuple[SwarmClient, Resolver]], interval: float) -> None:
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
                    log.warning("looking for peers of %s: %s", client.name, error)

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=5)
        for _, resolver in self.watched:
            resolver.close()


def sampling_params(temperature: float, top_p: float, seed: int | None, choice: int) -> SamplingParams:
    """Choice `choice` of a request: its own seed (seed + choice) so the choices differ and each repeats."""
    return SamplingParams(temperature=temperature, top_p=top_p, seed=None if seed is None else seed + choice)
