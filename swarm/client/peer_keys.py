"""Which address to reach each compute peer of a public swarm at: the port its own key answers at, once the DHT
vouches for that key (pure; swarm.discovery.compute explains why the DHT can vouch).

Every public-swarm node can answer at a peer's plain address (they all share the public swarm's key), so a client
that used it would be encrypting to whoever sits on the path. A peer's `info` names its own key and the port that
key answers at; the client keeps the peer only when the DHT lists the peer's IP and that port under the key, and
then talks to it at HOST:KEY_PORT/KEY, where only the key's holder can complete a handshake."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from swarm.address import Address
from swarm.client.routing import PeerInfo
from swarm.errors import SwarmError


@dataclass(frozen=True)
class KeyedChoice:
    """The addresses to use, and the peers left out with why."""

    addresses: list[str]
    left_out: dict[str, str] = field(default_factory=dict)


def claimed_keyed_address(address: str, info: PeerInfo) -> Address | None:
    """The keyed address a peer reached at `address` claims in its info: its host, its key port and its key."""
    if not info.member_key or not info.key_port:
        return None
    return Address(Address.parse(address).host, info.key_port, info.member_key)


def keyed_claims(infos: Mapping[str, PeerInfo | SwarmError]) -> dict[str, Address]:
    """Plain address → the keyed address its peer claims, for every peer that answered with one."""
    claims = {}
    for address, info in infos.items():
        claimed = claimed_keyed_address(address, info) if isinstance(info, PeerInfo) else None
        if claimed is not None:
            claims[address] = claimed
    return claims


def choose_addresses(
    addresses: Sequence[str], infos: Mapping[str, PeerInfo | SwarmError], vouched: set[Address]
) -> KeyedChoice:
    """Each peer's keyed address when the DHT `vouched` for it; every other peer is left out, with the reason: one
    that did not answer, claimed no key (someone on the path may have removed it) or a key the DHT does not list
    at its address (someone may be answering in its place)."""
    claims = keyed_claims(infos)
    chosen: list[str] = []
    left_out: dict[str, str] = {}
    for address in addresses:
        info, claimed = infos.get(address), claims.get(address)
        if isinstance(info, SwarmError) or info is None:
            left_out[address] = f"no answer ({info})" if info is not None else "no answer"
        elif claimed is None:
            left_out[address] = "it named no key of its own (a public swarm's peers all do)"
        elif claimed not in vouched:
            left_out[address] = f"the DHT does not list its key at {claimed.host}:{claimed.port}"
        else:
            chosen.append(claimed.tcp)
    return KeyedChoice(list(dict.fromkeys(chosen)), left_out)
