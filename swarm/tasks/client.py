"""Running a task model on the swarm: find the peers that run it, send each request to one of them (taking turns),
and to another one when that peer is gone or busy. The client needs none of the model's chunks."""

from __future__ import annotations

import itertools
import random
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from swarm import transport
from swarm.client.routing import PeerInfo, UncoveredError, candidates_for_model
from swarm.client.session import ComputeClient, PeerFailure, query_peers
from swarm.config import Settings
from swarm.errors import SwarmError
from swarm.manifest import Manifest
from swarm.tasks import media
from swarm.tasks.catalog import TaskSpec, checked_params, task_named
from swarm.tasks.protocol import BAD_INPUT, TaskResult, read_result, task_request
from swarm.wire import Hop

# The blocks a task request's single hop names (a task peer runs its whole model whatever they say).
WHOLE_MODEL = (0, 1)


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
    """The peers that run one task model, and requests to them."""

    def __init__(self, manifest: Manifest, settings: Settings, spread_seed: int | None = None) -> None:
        self.manifest = manifest
        self.spec = check_task(manifest)
        self.settings = settings
        self.peers: list[PeerInfo] = []
        self.context = transport.Context()
        self._turns = itertools.count(random.randrange(1 << 16) if spread_seed is None else spread_seed)
        self._lock = threading.Lock()
        # One endpoint per thread, kept between requests: a new one costs a connection each way (the peer connects
        # back to its reply socket), which is most of a small task's time on the wire.
        self._local = threading.local()
        self._endpoints: list[ComputeClient] = []

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
        peers = [peer for peer in candidates.peers if peer.task == self.spec.name]
        if not peers:
            unreachable = "; ".join(candidates.unreachable.values())
            raise SwarmError(
                f"no peer runs {self.manifest.name} ({self.spec.name}) yet"
                + (f"; not reachable: {unreachable}" if unreachable else "")
            )
        with self._lock:
            self.peers = peers

    def run(self, data: bytes, params: Mapping[str, Any] | None = None) -> TaskResult:
        """The task on `data` (a file's bytes, or UTF-8 text for text tasks) at one peer; another when it fails for
        a reason another peer would not have. Bad input fails at once, here when it can be told, else at the peer."""
        checked = checked_params(self.spec, dict(params or {}))
        found = media.media_type(data, as_text=self.spec.input == "text")
        if media.media_kind(found) != self.spec.input:
            raise SwarmError(f"{self.manifest.name} ({self.spec.name}) takes {self.spec.input}, the input is {found}")
        with self._lock:
            turn, peers = next(self._turns), list(self.peers)
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
        reasons = "; ".join(str(failure) for failure in failures)
        raise SwarmError(f"every peer running {self.manifest.name} failed: {reasons}") from failures[-1]

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
