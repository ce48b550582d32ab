"""Compute peers on the DHT: each announces its ZeroMQ port (BEP 5, explicit port) on the model's compute key
through its Presence; clients and joiners look the key up.

A peer of a public swarm also listens with its own CURVE key on a second port and announces that port under the
key itself. A client learns the key from the peer's `info`, which anyone on the path could rewrite; it uses the key
only when the DHT lists the peer's IP and that port under it. DHT nodes record an announcement's source IP (their
announce tokens are bound to it), so a key of an attacker's choosing can only be listed at the attacker's own IP."""

from __future__ import annotations

import time
from collections.abc import Collection

from swarm.address import Address
from swarm.discovery.slots import compute_key, peer_key_target
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


def announce_peer_key(presence: Presence, key: str, port: int) -> None:
    """Keep the port where only this peer's own key (Z85) answers announced under that key."""
    presence.announce(peer_key_target(key), port)


def keys_listed(node: TorrentNode, claims: Collection[Address], timeout: float) -> set[Address]:
    """Which of `claims` (keyed addresses peers claim) the DHT vouches for: their key's listing holds their host and
    port."""
    targets = {claim.key: peer_key_target(claim.key) for claim in claims}
    listed = dht.get_peers_of_each(node, list(targets.values()), timeout) if targets else {}
    return {claim for claim in claims if Address(claim.host, claim.port) in listed.get(targets[claim.key], [])}
