"""Running a task model on the swarm. A model published whole: find the peers that run it, send each request to one
of them (taking turns), and to another one when that peer is gone or busy; the client needs none of its chunks. A
model published in block chunks (swarm.tasks.sharded): the client runs the task's pipeline with the model's
embeddings and head, and the blocks' part along a route of the peers that serve them, re-planned around a peer that
fails."""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from swarm import transport
from swarm.client.routing import (
    BAD_RESULT,
    BUSY,
    RATE_LIMITED,
    PeerInfo,
    UncoveredError,
    candidates_for_model,
    fails_over,
    route_avoiding,
)
from swarm.client.session import ComputeClient, PeerFailure, in_dtype, query_peers, run_encoder
from swarm.config import Settings
from swarm.errors import SwarmError
from swarm.manifest import Manifest
from swarm.model.families import family_named
from swarm.tasks import media
from swarm.tasks.catalog import TaskSpec, checked_params, task_named
from swarm.tasks.protocol import BAD_INPUT, TaskResult, read_result, task_request
from swarm.wire import Hop

if TYPE_CHECKING:
    from swarm.client.resolve import Resolver
    from swarm.tasks.sharded import ShardedTask

# The blocks a task request's single hop names (a task peer runs its whole model whatever they say).
WHOLE_MODEL = (0, 1)
# Routes one request of a split model may try after failures at peers.
MAX_ROUTES = 4


def check_task(manifest: Manifest, wanted: str | None = None) -> TaskSpec:
    """The task `manifest` was published for; an error when it has none, or another one than `wanted`."""
    if manifest.task is None:
        raise SwarmError(
            f"{manifest.name} is published for text generation or embedding, not a task: use --prompt or --embed"
        )
    spec = task_named(manifest.task)
    if wanted is not None and task_named(wanted).name != spec.name:
        raise SwarmError(f"{manifest.name} is published for {spec.name}, not {task_named(wanted).name}")
    return spec


class TaskClient:
    """The peers that run one task model, and requests to them. A model published in block chunks needs the
    client's chunks (`chunk_paths`: meta, embed, head; see `for_manifest`)."""

    def __init__(
        self,
        manifest: Manifest,
        settings: Settings,
        chunk_paths: Mapping[str, Path] | None = None,
        spread_seed: int | None = None,
    ) -> None:
        self.manifest = manifest
        self.spec = check_task(manifest)
        self.settings = settings
        self.peers: list[PeerInfo] = []
        self.sharded: ShardedTask | None = None
        if manifest.num_blocks:
            if chunk_paths is None:
                raise SwarmError(f"{manifest.name} is split into blocks: the client needs its meta, embed and head")
            from swarm.tasks.sharded import ShardedTask

            self.sharded = ShardedTask(manifest, chunk_paths, self._through_blocks)
        family = family_named(manifest.family or "")
        # Encoder blocks take the whole text with its padding mask; causal ones one unpadded text.
        self._causal = family is not None and family.causal
        self.context = transport.Context()
        self._turns = itertools.count(random.randrange(1 << 16) if spread_seed is None else spread_seed)
        self._lock = threading.Lock()
        # One endpoint per thread, kept between requests: a new one costs a connection each way (the peer connects
        # back to its reply socket), which is most of a small task's time on the wire.
        self._local = threading.local()
        self._endpoints: list[ComputeClient] = []

    @classmethod
    def for_manifest(cls, resolver: Resolver, manifest: Manifest, torrent_data: bytes) -> TaskClient:
        """A client of `manifest`, with the chunks it runs itself fetched first when the model is split."""
        chunk_paths = resolver.client_chunks(manifest, torrent_data) if manifest.num_blocks else None
        return cls(manifest, resolver.settings, chunk_paths)

    def endpoint(self) -> ComputeClient:
        return ComputeClient.for_peers(self.settings, self.context, self.peers)

    def _thread_endpoint(self) -> ComputeClient:
        """This thread's endpoint (a new one when the peers changed: member keys come with them)."""
        endpoint: ComputeClient | None = getattr(self._local, "endpoint", None)
        peers = getattr(self._local, "peers", None)
        if endpoint is None or peers is not self.peers:
            endpoint = self.endpoint()
            self._local.endpoint, self._local.peers = endpoint, self.peers
            with self._lock:
                self._endpoints.append(endpoint)
        return endpoint

    def find_peers(self, addresses: Sequence[str], pinned: bool) -> None:
        """Ask `addresses` for their info; keep those that run this model's task (a pinned one that does not is an
        error naming it)."""
        with self.endpoint() as endpoint:
            infos = query_peers(endpoint, addresses, timeout=self.settings.request_timeout)
        candidates = candidates_for_model(self.manifest, infos, pinned=pinned)
        peers = [peer for peer in candidates.peers if self._serves(peer)]
        if not peers:
            unreachable = "; ".join(candidates.unreachable.values())
            raise SwarmError(
                f"no peer runs {self.manifest.name} ({self.spec.name}) yet"
                + (f"; not reachable: {unreachable}" if unreachable else "")
            )
        with self._lock:
            self.peers = peers

    def _serves(self, peer: PeerInfo) -> bool:
        """Replicas that run the task; for a split model, span peers too (its client runs the rest)."""
        return peer.task == self.spec.name if peer.replica else self.sharded is not None

    def run(self, data: bytes, params: Mapping[str, Any] | None = None) -> TaskResult:
        """The task on `data` (a file's bytes, or UTF-8 text for text tasks) at one peer; another when it fails for
        a reason another peer would not have. Bad input fails at once, here when it can be told, else at the peer."""
        checked = checked_params(self.spec, dict(params or {}))
        found = media.media_type(data, as_text=self.spec.input == "text")
        if media.media_kind(found) != self.spec.input:
            raise SwarmError(f"{self.manifest.name} ({self.spec.name}) takes {self.spec.input}, the input is {found}")
        with self._lock:
            turn, peers = next(self._turns), [peer for peer in self.peers if peer.replica]
        # Whole replicas first: the request is one round trip and the client runs nothing. A split model's spans
        # otherwise.
        if not peers and self.sharded is not None:
            return self._run_split(self.sharded, data, checked)
        if not peers:
            raise UncoveredError(f"no peer runs {self.manifest.name} ({self.spec.name}) yet")
        failures: list[PeerFailure] = []
        endpoint = self._thread_endpoint()
        for offset in range(len(peers)):
            peer = peers[(turn + offset) % len(peers)]
            header, tensors = task_request(uuid.uuid4().hex, self.spec, data, found, checked)
            try:
                reply = endpoint.request([Hop(peer.address, WHOLE_MODEL)], header, tensors)
            except PeerFailure as failure:
                if failure.code == BAD_INPUT:
                    raise SwarmError(f"{self.spec.name} refused the input: {failure}") from None
                failures.append(failure)
                continue
            return read_result(reply.header, reply.tensors, peer.address, reply.seconds)
        if self.sharded is not None and any(not peer.replica for peer in self.peers):
            return self._run_split(self.sharded, data, checked)
        reasons = "; ".join(str(failure) for failure in failures)
        raise SwarmError(f"every peer running {self.manifest.name} failed: {reasons}") from failures[-1]

    def _run_split(self, sharded: ShardedTask, data: bytes, params: dict[str, Any]) -> TaskResult:
        started = time.perf_counter()
        self._local.routes = []
        output = sharded.run(data, params)
        peers = ", ".join(dict.fromkeys(hop.address for route in self._local.routes for hop in route))
        elapsed = time.perf_counter() - started
        return TaskResult(self.spec.name, output.result, output.file, output.file_type, output.tensors, peers, elapsed)

    def _through_blocks(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The model's blocks on `hidden` along a route of peers; another route when a peer fails or is busy."""
        failed: set[str] = set()
        busy: set[str] = set()
        failures: list[PeerFailure] = []
        endpoint = self._thread_endpoint()
        for _ in range(MAX_ROUTES):
            with self._lock:
                turn, peers = next(self._turns), [peer for peer in self.peers if not peer.replica]
            route = route_avoiding(self.manifest.num_blocks, peers, failed, busy, turn)
            try:
                output = self._send(endpoint, route, hidden, mask)
            except PeerFailure as failure:
                if not fails_over(failure.code):
                    raise SwarmError(f"{self.spec.name} failed at peer {failure.address}: {failure}") from None
                (busy if failure.code in (BUSY, RATE_LIMITED) else failed).add(failure.address)
                failures.append(failure)
                continue
            self._local.routes.append(route)
            return output
        reasons = "; ".join(str(failure) for failure in failures)
        raise SwarmError(f"every route for {self.manifest.name} failed: {reasons}")

    def _send(
        self, endpoint: ComputeClient, route: list[Hop], hidden: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        # In the dtype the first hop computes in (it says so in its info).
        hidden = in_dtype(hidden, next((peer.dtype for peer in self.peers if peer.address == route[0].address), ""))
        if self._causal:
            if mask is not None and not bool(mask.all()):
                raise SwarmError(f"{self.manifest.name} runs one unpadded text at a time through causal blocks")
            mask = None  # causal blocks take a stateless step at positions 0..n, no padding mask
        output = run_encoder(endpoint, route, hidden, mask)
        if tuple(output.shape) != tuple(hidden.shape):
            last = route[-1].address
            raise PeerFailure(f"peer {last} returned hidden states of shape {list(output.shape)}", last, BAD_RESULT)
        return output

    def close(self) -> None:
        with self._lock:
            endpoints, self._endpoints = self._endpoints, []
        for endpoint in endpoints:
            endpoint.close()
        self.context.close(linger_ms=0)

    def __enter__(self) -> TaskClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
