"""Finding what a run needs: the model's manifest, the client's own chunks, and the compute peers.

Names resolve through the local catalog first and the DHT second; peers come from `--route` (pinned addresses)
or DHT discovery, and each one is asked for its `info` (blocks, throughput, load) before a route is planned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from swarm import transport
from swarm.address import Address
from swarm.client.peer_keys import choose_addresses, keyed_claims
from swarm.client.session import ComputeClient, query_peers
from swarm.config import Settings
from swarm.discovery.compute import find_compute_peers, keys_listed
from swarm.discovery.resolve import resolve_model
from swarm.distribute import chunks_for_client, fetch_chunks, open_node
from swarm.errors import SwarmError
from swarm.manifest import Manifest, chunk_problem
from swarm.model.families import family_named
from swarm.torrent.session import TorrentNode

log = logging.getLogger(__name__)


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
    if manifest.task is not None:
        raise SwarmError(f"{manifest.name} is published for the task {manifest.task}: give it --input FILE|TEXT")
    if embed and is_causal(manifest):
        raise SwarmError(f"{manifest.name} is a causal language model: use --prompt instead of --embed")
    if not embed and not is_causal(manifest):
        raise SwarmError(f"{manifest.name} is an encoder: use --embed instead of --prompt")


# How an ensemble combines its models (--ensemble): generation policies for causal language models, `mean` for
# encoders' embeddings.
GENERATION_POLICIES = ("mean-logits", "vote")
EMBEDDING_POLICIES = ("mean",)


def check_policy(policy: str, causal: bool) -> None:
    """An ensemble policy that fits the models' kind: mean-logits or vote to generate, mean to embed."""
    if policy not in GENERATION_POLICIES + EMBEDDING_POLICIES:
        raise SwarmError(f"unknown --ensemble {policy}: use mean-logits or vote to generate, mean to embed")
    if causal and policy not in GENERATION_POLICIES:
        raise SwarmError(
            f"--ensemble {policy} averages embeddings (--embed); to generate use --ensemble mean-logits or vote"
        )
    if not causal and policy not in EMBEDDING_POLICIES:
        raise SwarmError(f"--ensemble {policy} combines generated tokens (--prompt); to embed use --ensemble mean")


def model_references(model: str, ensemble: str | None, embed: bool) -> list[str]:
    """--model's references: one model, or A,B,... combined as --ensemble says (which must fit --prompt/--embed).
    A single reference with a comma in it is one model when it is a path that exists and --ensemble is not given."""
    if ensemble is None and ("," not in model or Path(model).exists()):
        return [model]
    references = [item.strip() for item in model.split(",") if item.strip()]
    if ensemble is None:
        policies = "mean" if embed else "mean-logits or vote"
        raise SwarmError(
            f"--model names {len(references)} models ({', '.join(references)}): say how to combine them with "
            f"--ensemble {policies}"
        )
    if len(references) < 2:
        raise SwarmError(f"--ensemble {ensemble} needs several models: give --model A,B,...")
    check_policy(ensemble, causal=not embed)
    return references


def check_one_kind(manifests: Sequence[Manifest]) -> None:
    """An ensemble's models are all causal language models or all encoders."""
    kinds = {
        manifest.name: "a causal language model" if is_causal(manifest) else "an encoder" for manifest in manifests
    }
    first = manifests[0].name
    for name, kind in kinds.items():
        if kind != kinds[first]:
            raise SwarmError(
                f"{first} is {kinds[first]} but {name} is {kind}: an ensemble's models must be of one kind"
            )


def parse_route(text: str) -> list[str]:
    """'HOST:PORT,HOST:PORT' (tcp:// optional) → wire addresses, in order; a clear error for a malformed one."""
    addresses = [Address.parse(item.strip(), "--route").tcp for item in text.split(",") if item.strip()]
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
        # Keyed addresses of peers the DHT vouched for (public swarms): not looked up again.
        self._vouched: set[Address] = set()
        # The peers the last compute_addresses found but left out, each with why (a sentence naming it).
        self.left_out: dict[str, str] = {}

    @property
    def node(self) -> TorrentNode:
        if self._node is None:
            self._node = open_node(self.settings, short_lived=True)
        return self._node

    def manifest(self, reference: str) -> tuple[Manifest, bytes]:
        """The verified manifest and torrent bytes for a name, path or magnet link."""
        try:
            # The local catalog first, without starting a node.
            resolution = resolve_model(reference, self.settings)
        except SwarmError:
            if not self.settings.bootstrap:
                raise
            resolution = resolve_model(reference, self.settings, self.node)
        return resolution.manifest, resolution.torrent_data

    def client_chunks(self, manifest: Manifest, torrent_data: bytes) -> dict[str, Path]:
        """Paths of the client's chunks, fetched over BitTorrent when missing or corrupt, each verified."""
        chunk_ids = client_chunk_ids(manifest)
        missing = [chunk_id for chunk_id in chunk_ids if self._problem(manifest, chunk_id)]
        if missing:
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
        found = find_compute_peers(self.node, manifest, timeout / 2)
        if not found:
            # Seen on loopback swarms: a node that resolved the name and fetched chunks, then sat idle while the
            # model loaded, found no compute peers that a new node found at once. Ask again from a new node.
            self.close()
            found = find_compute_peers(self.node, manifest, max(1.0, deadline - time.monotonic()))
        addresses = list(dict.fromkeys(address.tcp for address in found))
        if not addresses:
            raise SwarmError(
                f"no compute peers for {manifest.name} found in the DHT within {self.settings.discovery_timeout:g} s"
            )
        self.left_out = {}
        if not transport.checks_peer_keys():
            return addresses
        return self._keyed_addresses(manifest, addresses, max(1.0, deadline - time.monotonic()))

    def _keyed_addresses(self, manifest: Manifest, addresses: list[str], timeout: float) -> list[str]:
        """The peers at `addresses` at the ports only their own keys answer at, each key vouched for by the DHT
        (swarm.client.peer_keys); SwarmError when no peer is left."""
        with ComputeClient(self.settings.client_reply_host, min(timeout, self.settings.request_timeout)) as endpoint:
            infos = query_peers(endpoint, addresses, endpoint.timeout)
        fresh = set(keyed_claims(infos).values()) - self._vouched
        self._vouched |= keys_listed(self.node, fresh, timeout)
        choice = choose_addresses(addresses, infos, self._vouched)
        self.left_out = {address: f"peer {address} not used: {why}" for address, why in choice.left_out.items()}
        for reason in self.left_out.values():
            log.warning("%s", reason)
        if not choice.addresses:
            reasons = "; ".join(self.left_out.values())
            raise SwarmError(f"no compute peer of {manifest.name} found in the DHT could be used: {reasons}")
        return choice.addresses

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
