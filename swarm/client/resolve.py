"""Finding what a run needs: the model's manifest, the client's own chunks, and the compute peers.

Names resolve through the local catalog first and the DHT second; peers come from `--route` (pinned addresses)
or DHT discovery, and each one is asked for its `info` (blocks, throughput, load) before a route is planned.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from swarm import discovery
from swarm.config import Settings, parse_host_port
from swarm.distribute import chunks_for_client, fetch_chunks, open_node
from swarm.errors import SwarmError
from swarm.manifest import Manifest, chunk_problem
from swarm.model.families import family_named
from swarm.torrent.session import TorrentNode


def client_chunk_ids(manifest: Manifest) -> list[str]:
    """Chunks the client itself loads: meta (tokenizer, config), embed and head, and whatever those require.

    A model served only as whole replicas needs just the meta chunk here: the replica peers hold the weights.
    """
    return [chunk.id for chunk in chunks_for_client(manifest) if chunk.kind != "full"]


def is_causal(manifest: Manifest) -> bool:
    """Whether the model generates text (a causal LM) rather than encoding it; models kept whole are served as
    causal language models."""
    family = family_named(manifest.family) if manifest.family else None
    return family is None or family.causal


def check_run_mode(manifest: Manifest, embed: bool) -> None:
    """--embed needs an encoder, --prompt a causal language model: say which one to use instead."""
    if embed and is_causal(manifest):
        raise SwarmError(f"{manifest.name} is a causal language model: use --prompt instead of --embed")
    if not embed and not is_causal(manifest):
        raise SwarmError(f"{manifest.name} is an encoder: use --embed instead of --prompt")


def parse_route(text: str) -> list[str]:
    """'HOST:PORT,HOST:PORT' (tcp:// optional) → wire addresses, in order; a clear error for a malformed one."""
    # Imported here: swarm.wire brings torch, and resolving a name should fail fast without it.
    from swarm.wire import format_address

    addresses = []
    for item in text.split(","):
        item = item.strip().removeprefix("tcp://")
        if not item:
            continue
        try:
            host, port = parse_host_port(item)
            addresses.append(format_address(host, port))
        except (ValueError, SwarmError) as error:
            raise SwarmError(f"--route: {error}") from None
    if not addresses:
        raise SwarmError("--route lists no peers: give HOST:PORT[,HOST:PORT...]")
    return list(dict.fromkeys(addresses))


class Resolver:
    """Resolves a model and fetches the client's chunks, opening a BitTorrent node only when one is needed
    (a name the catalog does not know, chunks missing on disk, DHT peer discovery)."""

    def __init__(self, settings: Settings, torrent_peers: Sequence[str] = ()) -> None:
        self.settings = settings
        # BitTorrent peers (HOST:PORT) to fetch chunks from directly, besides those the DHT finds.
        self.torrent_peers = tuple(torrent_peers)
        self._node: TorrentNode | None = None

    @property
    def node(self) -> TorrentNode:
        if self._node is None:
            # The client's node is short-lived and only fetches: any free port will do.
            host, _ = parse_host_port(self.settings.torrent_listen)
            self._node = open_node(replace(self.settings, torrent_listen=f"{host}:0"))
        return self._node

    def manifest(self, reference: str) -> tuple[Manifest, bytes | None]:
        """The verified manifest (and torrent bytes when known) for a name, path or magnet link."""
        try:
            # The local catalog first, without starting a node.
            manifest, torrent_data = discovery.resolve_model(reference, None, self.settings)
        except SwarmError:
            if not self.settings.bootstrap:
                raise
            manifest, torrent_data = discovery.resolve_model(reference, self.node, self.settings)
        if not manifest.signature_valid():
            raise SwarmError(f"the manifest of {manifest.name} has an invalid signature; refusing to use it")
        return manifest, torrent_data

    def client_chunks(self, manifest: Manifest, torrent_data: bytes | None) -> dict[str, Path]:
        """Paths of the client's chunks, fetched over BitTorrent when missing or corrupt, each verified."""
        chunk_ids = client_chunk_ids(manifest)
        missing = [chunk_id for chunk_id in chunk_ids if self._problem(manifest, chunk_id)]
        if missing:
            if torrent_data is None:
                raise SwarmError(
                    f"{manifest.name}: chunks {', '.join(missing)} are not on disk and its torrent is unknown"
                )
            fetch_chunks(
                self.node,
                manifest,
                torrent_data,
                missing,
                self.settings.models_dir(),
                peers=self.torrent_peers,
                timeout=self.settings.network_timeout,
                full_verify=self.settings.full_verify,
            )
        return local_chunk_paths(manifest, self.settings, chunk_ids)

    def _problem(self, manifest: Manifest, chunk_id: str) -> str | None:
        return chunk_problem(manifest, manifest.chunk(chunk_id), self.settings.models_dir())

    def compute_addresses(self, manifest: Manifest) -> list[str]:
        """Compute peers' addresses from the DHT (needs --bootstrap)."""
        if not self.settings.bootstrap:
            raise SwarmError(
                f"no compute peers for {manifest.name}: give --route HOST:PORT[,HOST:PORT...] "
                "or --bootstrap HOST:PORT to find peers through the DHT"
            )
        timeout = self.settings.discovery_timeout
        deadline = time.monotonic() + timeout
        found = discovery.find_compute_peers(self.node, manifest, timeout / 2)
        if not found:
            # Seen on loopback swarms: a node that resolved the name and fetched chunks, then sat idle while the
            # model loaded, found no compute peers that a new node found at once. Ask again from a new node.
            self.close()
            found = discovery.find_compute_peers(self.node, manifest, max(1.0, deadline - time.monotonic()))
        from swarm.wire import format_address

        addresses = []
        for item in found:
            try:
                host, port = item if isinstance(item, tuple) else parse_host_port(str(item).removeprefix("tcp://"))
                addresses.append(format_address(str(host), int(port)))
            except (ValueError, TypeError, SwarmError):
                continue  # a malformed DHT record is somebody else's problem, not a reason to fail
        if not addresses:
            raise SwarmError(
                f"no compute peers for {manifest.name} found in the DHT within {self.settings.discovery_timeout:g} s"
            )
        return list(dict.fromkeys(addresses))

    def close(self) -> None:
        if self._node is not None:
            self._node.close()
            self._node = None


def local_chunk_paths(manifest: Manifest, settings: Settings, chunk_ids: Sequence[str]) -> dict[str, Path]:
    """Paths of the client's chunks on disk, each verified against the manifest's SHA-256.

    Raises SwarmError listing the chunks that are missing or corrupt.
    """
    problems = {}
    paths = {}
    for chunk_id in chunk_ids:
        chunk = manifest.chunk(chunk_id)
        problem = chunk_problem(manifest, chunk, settings.models_dir())
        if problem:
            problems[chunk_id] = problem
        else:
            paths[chunk_id] = settings.models_dir() / chunk.file
    if problems:
        listed = ", ".join(f"{chunk_id} ({problem})" for chunk_id, problem in problems.items())
        raise SwarmError(f"{manifest.name}: the client needs chunks that are not usable on disk: {listed}")
    return paths
