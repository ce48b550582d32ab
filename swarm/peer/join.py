"""`swarm join`: decide what to host, fetch and verify those chunks, load them, serve, keep seeding.

Threads: the main thread runs the compute loop (PeerServer.serve); one background thread owns the
TorrentNode (libtorrent is not thread-safe here): it pumps alerts, re-announces the peer in the DHT and
saves resume data. The node is handed to that thread only after the fetch, so it is never shared. Until the
blocks are loaded a third thread imports torch and transformers (swarm.peer.preload): this module imports
them only where it computes, so a join looks the model up and fetches it meanwhile.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from swarm import signing
from swarm.address import Address, parse_all
from swarm.config import Settings
from swarm.discovery.compute import announce_compute_peer, announce_peer_key, find_compute_peers
from swarm.discovery.keeper import hold_name
from swarm.discovery.resolve import resolve_model
from swarm.distribute import chunks_for_blocks, fetch_chunks, open_node
from swarm.errors import SwarmError
from swarm.manifest import Chunk, Manifest
from swarm.peer.admission import AdmissionLimits, cache_token_budget, kv_bytes_per_token
from swarm.peer.allocator import unmap_large_blocks
from swarm.peer.metrics import PeerMetrics, metrics_server
from swarm.peer.precision import ITEM_SIZES, check_device, compute_dtype
from swarm.peer.preload import start_preload
from swarm.peer.selection import HostingPlan, coverage_from_spans, plan_hosting
from swarm.torrent.presence import Presence
from swarm.torrent.session import TorrentNode

if TYPE_CHECKING:
    from swarm.http_thread import ServerThread  # uvicorn is loaded only by peers that serve metrics
    from swarm.peer.heal import Healer, Loader
    from swarm.peer.replica import ReplicaRunner
    from swarm.peer.runner import SpanRunner
    from swarm.peer.server import PeerServer
    from swarm.tasks.runner import TaskRunner

log = logging.getLogger("swarm.peer")

Emit = Callable[[dict[str, Any]], None]
# Seconds to wait for `info` answers from the peers already serving, when choosing a span.
_INFO_TIMEOUT = 3.0
# Seconds to look for the peers already serving (once the DHT answers): a small swarm answers within one.
_COVERAGE_LOOKUP_SECONDS = 5.0


@dataclass(frozen=True)
class JoinOptions:
    model: str
    blocks: tuple[int, int] | None = None
    memory_bytes: int | None = None
    peers: tuple[str, ...] = ()
    device: str = "cpu"
    dtype: str = "auto"
    advertise_host: str | None = None


def memory_budget(options: JoinOptions, settings: Settings) -> int:
    if options.memory_bytes is not None:
        return options.memory_bytes
    return int(psutil.virtual_memory().available * settings.memory_fraction)


def bytes_per_block(manifest: Manifest, compute_itemsize: int) -> int:
    """Largest weight bytes per block over the block chunks, scaled to the compute dtype."""
    per_block = [
        chunk.size / (chunk.blocks[1] - chunk.blocks[0])
        for chunk in manifest.chunks
        if chunk.kind == "blocks" and chunk.blocks is not None
    ]
    if not per_block:
        return 1
    stored_itemsize = ITEM_SIZES.get(manifest.dtype, 4)
    return max(1, int(max(per_block) * compute_itemsize / stored_itemsize))


def _kv_bytes_per_token(manifest: Manifest, plan: HostingPlan, itemsize: int) -> int:
    layers = manifest.num_blocks if plan.replica else plan.end - plan.start
    return kv_bytes_per_token(manifest.config, layers, itemsize)


def chunks_to_fetch(manifest: Manifest, plan: HostingPlan) -> list[Chunk]:
    """Meta plus the full chunk (replica) or every blocks chunk overlapping the span, with what they require; a
    whole replica of a model in blocks takes every chunk."""
    if plan.replica and manifest.num_blocks:
        return list(manifest.chunks)
    return chunks_for_blocks(manifest, plan.start, plan.end)


def swarm_coverage(manifest: Manifest, node: TorrentNode, settings: Settings) -> list[int]:
    """Per-block count of the compute peers already serving `manifest`, found in the DHT and asked for `info`.

    Zeros without bootstrap nodes or when the lookup fails: the joiner then picks as if alone.
    """
    coverage = [0] * manifest.num_blocks
    if not settings.bootstrap:
        return coverage
    try:
        # Who serves now: the lookup ends when peers were found or when it finished without any (a first peer
        # waited the whole timeout for nobody before, 3.9 s of its start).
        found = find_compute_peers(node, manifest, timeout=_COVERAGE_LOOKUP_SECONDS, once=True)
    except SwarmError as error:
        log.warning("cannot look up compute peers: %s", error)
        return coverage
    # Imports torch, not transformers: Python's import lock waits for the preload thread if need be.
    from swarm.client.routing import PeerInfo
    from swarm.client.session import ComputeClient, query_peers

    # A peer that left is still announced for a while: its refused connection fails at once (no 3 s wait).
    with ComputeClient(timeout=_INFO_TIMEOUT) as client:
        infos = query_peers(client, [address.tcp for address in found], _INFO_TIMEOUT)
    spans = [info.blocks for info in infos.values() if isinstance(info, PeerInfo) and info.model == manifest.name]
    return coverage_from_spans(manifest.num_blocks, spans)


def fetch_verified(
    manifest: Manifest,
    torrent_data: bytes,
    chunks: list[Chunk],
    node: TorrentNode,
    options: JoinOptions,
    settings: Settings,
    stop: threading.Event,
) -> None:
    """Bring `chunks` onto disk over BitTorrent (chunks already there and verified are kept), check every
    SHA-256, and leave the torrent in the node so it goes on seeding them."""
    fetch_chunks(
        node,
        manifest,
        torrent_data,
        [chunk.id for chunk in chunks],
        settings.models_dir(),
        peers=options.peers,
        timeout=settings.network_timeout,
        resume_dir=settings.resume_dir,
        stop=stop,
        full_verify=settings.full_verify,
    )


class TorrentKeeper(threading.Thread):
    """Owns the TorrentNode after the fetch: pumps alerts (the node saves resume data from there), keeps this
    peer's compute port, its torrents and the model's name findable on the DHT, and closes the node at the end."""

    def __init__(
        self,
        node: TorrentNode,
        manifest: Manifest,
        compute_port: int,
        settings: Settings,
        keyed_address: str | None = None,
    ) -> None:
        super().__init__(name="torrent", daemon=True)
        self.node = node
        # Set when this peer chose its own blocks: it keeps the swarm whole from this thread (swarm.peer.heal).
        self.healer: Healer | None = None
        self.presence = Presence(node, settings.announce_interval)
        announce_compute_peer(self.presence, manifest, compute_port)
        if keyed_address is not None:
            keyed = Address.parse(keyed_address)
            announce_peer_key(self.presence, keyed.key, keyed.port)
        try:
            hold_name(node, self.presence, manifest, settings, signing.load_key(settings.keys_dir))
        except SwarmError as error:
            log.warning("%s is not kept findable by name: %s", manifest.name, error)
        self.stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.presence.tick()
                if self.healer is not None:
                    self.healer.tick()
                # The node saves resume data periodically from its pump, and once more on close.
                # Batched: this thread shares the GIL with the compute loop, so it wakes at most 4 times a second.
                self.node.pump(wait_seconds=0.25, min_wait_seconds=0.25)
        except Exception:  # seeding trouble must not take the compute server down
            log.exception("torrent thread failed")
        finally:
            started = time.monotonic()
            try:
                self.presence.close()
                self.node.close()
            except Exception:
                log.exception("closing the torrent session failed")
            log.info("torrent session closed in %.1f s", time.monotonic() - started)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=15)


def join(options: JoinOptions, settings: Settings, stop: threading.Event, emit: Emit) -> None:
    """Everything `swarm join` does, until `stop` is set."""
    device = check_device(options.device)
    parse_all(options.peers, "--peer")
    preload = start_preload()
    metrics = PeerMetrics()
    # Bound before anything is fetched: a taken metrics address fails at once, not after minutes of fetching.
    metrics_http = metrics_server(metrics, settings.metrics_listen)
    node: TorrentNode | None = None
    try:
        node = open_node(settings)
        prepared = _prepare(options, settings, node, device, metrics, stop, emit, preload)
    except BaseException:
        if node is not None:
            node.close()
        if metrics_http is not None:
            metrics_http.stop()
        raise
    server, manifest = prepared.server, prepared.manifest
    torrent_port = node.listen_port
    # From here on only the keeper's thread touches the node.
    keeper = TorrentKeeper(node, manifest, server.port, settings, server.keyed_address)
    if options.blocks is None and not server.runner.replica and settings.rebalance_interval > 0:
        from swarm.peer.heal import Healer, dht_peer_finder  # imported by the preload, which _prepare waited for

        keeper.healer = Healer(
            manifest,
            server,
            _span_loader(manifest, prepared.torrent_data, node, options, settings, stop, device, prepared.dtype),
            settings.rebalance_interval,
            dht_peer_finder(node, manifest),
            emit,
            random.Random(),
        )
    keeper.start()
    try:
        _serve(server, torrent_port, metrics_http, stop, emit)
    finally:
        log.info("stopping: closing sessions, then the torrent session")
        server.close()
        keeper.stop()
    emit({"event": "stopped", "address": server.address})


@dataclass(frozen=True)
class _Prepared:
    manifest: Manifest
    torrent_data: bytes
    dtype: str
    server: PeerServer


def _prepare(
    options: JoinOptions,
    settings: Settings,
    node: TorrentNode,
    device: str,
    metrics: PeerMetrics,
    stop: threading.Event,
    emit: Emit,
    preload: threading.Thread,
) -> _Prepared:
    """Resolve the model, choose the blocks, fetch, verify and load them, and open the compute socket."""
    resolution = resolve_model(options.model, settings, node)
    manifest, torrent_data = resolution.manifest, resolution.torrent_data
    if manifest.task is None:
        # Before any weights or caches are allocated: the KV budget then bounds what caches keep resident. Not for
        # tasks: they keep no caches, and unmapping their large temporaries made text-to-audio 3x slower.
        unmap_large_blocks()
    dtype = compute_dtype(options.dtype, manifest.dtype, device)
    itemsize = ITEM_SIZES[dtype]
    coverage = [0] * manifest.num_blocks
    if options.blocks is None and manifest.num_blocks:
        coverage = swarm_coverage(manifest, node, settings)
    plan = plan_hosting(
        num_blocks=manifest.num_blocks,
        bytes_per_block=bytes_per_block(manifest, itemsize),
        full_bytes=sum(chunk.size for chunk in manifest.chunks if chunk.kind != "meta"),
        budget_bytes=memory_budget(options, settings),
        coverage=coverage,
        requested=options.blocks,
        whole_when_fits=manifest.task is not None,
    )
    chunks = chunks_to_fetch(manifest, plan)
    emit(
        {
            "event": "fetching",
            "model": manifest.name,
            "blocks": [plan.start, plan.end],
            "replica": plan.replica,
            "chunks": [chunk.id for chunk in chunks],
        }
    )
    fetch_verified(manifest, torrent_data, chunks, node, options, settings, stop)
    emit({"event": "loading", "model": manifest.name, "blocks": [plan.start, plan.end], "device": device})
    # transformers' lazily loaded attributes are not safe to import from two threads at once: wait for the preload.
    preload.join()
    server = _start_compute(manifest, plan, chunks, options, settings, device, dtype, metrics)
    return _Prepared(manifest, torrent_data, dtype, server)


def _start_compute(
    manifest: Manifest,
    plan: HostingPlan,
    chunks: list[Chunk],
    options: JoinOptions,
    settings: Settings,
    device: str,
    dtype: str,
    metrics: PeerMetrics,
) -> PeerServer:
    """Load the blocks, measure them and open the compute socket."""
    from swarm.peer.server import PeerIdentity, PeerServer

    runner = _load(manifest, plan, chunks, settings.models_dir(), device, dtype)
    throughput = runner.benchmark()
    itemsize = ITEM_SIZES[dtype]
    limits = AdmissionLimits(
        max_sessions=settings.max_sessions,
        max_session_tokens=settings.max_session_tokens,
        max_total_tokens=cache_token_budget(
            settings.max_cached_tokens, settings.kv_memory, _kv_bytes_per_token(manifest, plan, itemsize)
        ),
        max_batch=settings.max_batch,
        sessions_per_minute=settings.sessions_per_minute,
        session_burst=settings.session_burst,
    )
    identity = PeerIdentity(
        model=manifest.name,
        info_hash=manifest.torrent.info_hash_v2 or manifest.torrent.info_hash_v1 or "",
        family=manifest.family,
        dtype=dtype,
    )
    return PeerServer(
        runner,
        identity,
        settings.compute_listen,
        limits,
        settings.session_idle_timeout,
        advertise_host=options.advertise_host,
        throughput=round(throughput, 3),
        connect_timeout=settings.forward_connect_timeout,
        liveness_timeout=settings.liveness_timeout,
        busy_poll_seconds=settings.busy_poll_seconds,
        max_step_batch=settings.max_step_batch,
        metrics=metrics,
    )


def _serve(
    server: PeerServer, torrent_port: int, metrics_http: ServerThread | None, stop: threading.Event, emit: Emit
) -> None:
    """Answer the swarm, and metrics scrapes when asked to, until `stop` is set."""
    try:
        if metrics_http is not None:
            metrics_http.start()
        emit(
            {
                "event": "serving",
                "address": server.address,
                # The same peer, answered only by its own key (for --route; None in a private swarm or plaintext).
                "keyed_address": server.keyed_address,
                "model": server.identity.model,
                "blocks": [server.runner.start, server.runner.end],
                "replica": server.runner.replica,
                "task": server.info_body()["task"],
                "dtype": server.identity.dtype,
                "throughput": server.throughput,
                "torrent_port": torrent_port,
                "metrics": f"http://{metrics_http.address}/metrics" if metrics_http is not None else None,
            }
        )
        server.serve(stop)
    finally:
        if metrics_http is not None:
            metrics_http.stop()


def _span_loader(
    manifest: Manifest,
    torrent_data: bytes,
    node: TorrentNode,
    options: JoinOptions,
    settings: Settings,
    stop: threading.Event,
    device: str,
    dtype: str,
) -> Loader:
    """What a move to other blocks does before the switch: fetch and verify their chunks, load, measure."""

    def load(blocks: tuple[int, int]) -> tuple[SpanRunner, float]:
        plan = HostingPlan(*blocks)
        chunks = chunks_to_fetch(manifest, plan)
        fetch_verified(manifest, torrent_data, chunks, node, options, settings, stop)
        runner = _load_span(manifest, plan, chunks, settings.models_dir(), device, dtype)
        return runner, round(runner.benchmark(), 3)

    return load


def _load(
    manifest: Manifest, plan: HostingPlan, chunks: list[Chunk], models_dir: Path, device: str, dtype_name: str
) -> SpanRunner | ReplicaRunner | TaskRunner:
    from swarm.peer.replica import ReplicaRunner  # imported by the preload before anything is loaded
    from swarm.wire import DTYPES

    dtype = DTYPES[dtype_name]
    if plan.replica:
        meta = next(chunk for chunk in chunks if chunk.kind == "meta")
        full = {chunk.id: models_dir / chunk.file for chunk in chunks if chunk.kind != "meta"}
        if manifest.task is not None:
            from swarm.tasks.runner import TaskRunner

            return TaskRunner(manifest, models_dir / meta.file, full, device, dtype)
        return ReplicaRunner(manifest, models_dir / meta.file, next(iter(full.values())), device, dtype)
    return _load_span(manifest, plan, chunks, models_dir, device, dtype_name)


def _load_span(
    manifest: Manifest, plan: HostingPlan, chunks: list[Chunk], models_dir: Path, device: str, dtype_name: str
) -> SpanRunner:
    from swarm.peer.runner import SpanRunner
    from swarm.wire import DTYPES

    paths = [models_dir / chunk.file for chunk in chunks if chunk.kind == "blocks"]
    return SpanRunner(manifest, plan.start, plan.end, paths, device, DTYPES[dtype_name])
