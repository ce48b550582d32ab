"""The swarm as a whole, per model: its chunks' seeders, its compute peers (blocks, throughput, load, version)
and how well each block is served (pure: built from what swarm.survey found). `swarm status` prints it, and a
seedbox serves it at /swarm with a live page at / (swarm/status_page.html)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from swarm.address import Address
from swarm.manifest import Manifest
from swarm.peer.selection import coverage_from_spans

if TYPE_CHECKING:
    # The client's modules bring torch; a seedbox serves this module's page without it.
    from swarm.client.routing import PeerInfo

DOCUMENT_VERSION = 1


@dataclass(frozen=True)
class ModelSurvey:
    """What was found about one model: who seeds its torrent, which compute peers answered, which did not."""

    manifest: Manifest
    seeders: Sequence[Address]
    peers: Sequence[PeerInfo]
    silent: Sequence[str] = ()


def model_view(survey: ModelSurvey) -> dict[str, Any]:
    """One model's part of the status document.

    A model served as whole replicas (no block chunks) counts as one block that every replica serves."""
    manifest = survey.manifest
    blocks = max(manifest.num_blocks, 1)
    spans = [(0, 1) if manifest.num_blocks == 0 else peer.blocks for peer in survey.peers]
    coverage = coverage_from_spans(blocks, spans)
    uncovered = [block for block, count in enumerate(coverage) if count == 0]
    once = [block for block, count in enumerate(coverage) if count == 1]
    return {
        "name": manifest.name,
        "fingerprint": manifest.fingerprint,
        "info_hash": manifest.torrent.info_hash_v2 or manifest.torrent.info_hash_v1,
        "num_blocks": manifest.num_blocks,
        "task": manifest.task,
        "served_as": served_as(manifest),
        "seeders": sorted(str(seeder) for seeder in survey.seeders),
        "peers": [_peer_view(peer) for peer in sorted(survey.peers, key=lambda peer: (peer.blocks, peer.address))],
        "silent_peers": sorted(survey.silent),
        "coverage": coverage,
        "uncovered": uncovered,
        "held_once": once,
        "summary": _summary(coverage, uncovered, once),
    }


def served_as(manifest: Manifest) -> str:
    """How peers serve a model: models of a family with block adapters in spans across peers, others whole on each
    peer; a task model in blocks whole where it fits a peer, else in spans."""
    if not manifest.num_blocks:
        return "replicas"
    return "spans" if manifest.task is None else "replicas or spans"


def _peer_view(peer: PeerInfo) -> dict[str, Any]:
    return {
        "address": peer.address,
        "blocks": list(peer.blocks),
        "replica": peer.replica,
        "task": peer.task or None,
        "throughput": round(peer.throughput, 3),
        "sessions": max(peer.max_sessions - peer.free_sessions, 0),
        "max_sessions": peer.max_sessions,
        "dtype": peer.dtype,
        "version": peer.version,
    }


def _summary(coverage: Sequence[int], uncovered: Sequence[int], once: Sequence[int]) -> str:
    from swarm.client.routing import block_ranges_text

    if uncovered:
        return f"blocks {block_ranges_text(uncovered)} have no server"
    if once:
        return f"every block is served; blocks {block_ranges_text(once)} by one peer only"
    return f"every block is served by at least {min(coverage)} peers" if coverage else "no blocks"


def status_document(
    surveys: Sequence[ModelSurvey], excluded: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """What `swarm status` shows; `excluded`: the peers this machine's output checks caught (address → entry)."""
    return {
        "version": DOCUMENT_VERSION,
        "models": [model_view(survey) for survey in surveys],
        "excluded": [{"peer": address, **entry} for address, entry in sorted((excluded or {}).items())],
    }


def status_page() -> bytes:
    """The live coverage page (HTML with its script inline: nothing is fetched from outside the machine)."""
    return resources.files("swarm").joinpath("status_page.html").read_bytes()
