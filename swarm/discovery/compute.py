"""Compute peers on the DHT: each announces its ZeroMQ port (BEP 5, explicit port) on the model's compute key
through its Presence; clients and joiners look the key up."""

from __future__ import annotations

import time

from swarm.address import Address
from swarm.discovery.slots import compute_key
from swarm.manifest import Manifest
from swarm.torrent import dht
from swarm.torrent.presence import Presence
from swarm.torrent.session import TorrentNode


def announce_compute_peer(presence: Presence, manifest: Manifest, port: int) -> None:
    """Keep this machine's compute port announced for the model (expires on the DHT unless renewed)."""
    presence.announce(compute_key(manifest), port)


def find_compute_peers(node: TorrentNode, manifest: Manifest, timeout: float, *, once: bool = False) -> list[Address]:
    """Compute peers announced for the model; [] when none answered within timeout (with `once`: when the first
    DHT lookup ended without any, for callers that want who serves now rather than to wait for one).

    SwarmError only when the DHT cannot be reached at all (no bootstrap node answers)."""
    deadline = time.monotonic() + timeout
    dht.wait_for_dht(node, timeout)
    return dht.get_peers(node, compute_key(manifest), max(0.1, deadline - time.monotonic()), once=once)
