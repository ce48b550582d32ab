"""A BitTorrent tracker for the torrents a seedbox holds: BEP 3 announces over HTTP with BEP 23 compact peer
lists, and BEP 48 scrapes, so that standard clients and swarm nodes whose torrents name the seedbox's
/announce find each other and the seedbox at once, without a DHT.

Pure: requests come in as query strings and go out as bencoded bytes; the HTTP app (swarm/seedbox_http.py) only
moves them. Everything in a request is untrusted: a malformed one gets a BitTorrent "failure reason", never an
exception. Only torrents the seedbox holds are tracked (no open tracker for strangers' content).
"""

from __future__ import annotations

import ipaddress
import socket
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field

from swarm.torrent.bencode import bencode

# Seconds between a client's announces that the tracker asks for, and how long a silent peer stays listed.
ANNOUNCE_INTERVAL = 60
PEER_TTL_SECONDS = 3 * ANNOUNCE_INTERVAL
DEFAULT_NUMWANT = 50
MAX_NUMWANT = 200
# Peers remembered per torrent; beyond this the least recently heard is forgotten.
MAX_PEERS_PER_TORRENT = 1000
EVENTS = ("", "started", "completed", "stopped", "paused")


class TrackerError(ValueError):
    """A request the tracker refuses; its text becomes the "failure reason"."""


@dataclass(frozen=True)
class Announce:
    info_hash: bytes
    peer_id: bytes
    host: str
    port: int
    left: int
    event: str
    numwant: int
    compact: bool


def _fields(query: str, limit: int) -> dict[bytes, list[bytes]]:
    """A query string's fields as raw bytes (info hashes and peer ids are binary, percent-encoded)."""
    try:
        parsed = urllib.parse.parse_qs(query, keep_blank_values=True, encoding="latin-1", max_num_fields=limit)
    except ValueError as error:
        raise TrackerError(f"malformed query: {error}") from None
    return {key.encode("latin-1"): [value.encode("latin-1") for value in values] for key, values in parsed.items()}


def _single(fields: dict[bytes, list[bytes]], name: bytes) -> bytes:
    values = fields.get(name)
    if not values:
        raise TrackerError(f"missing {name.decode()}")
    return values[0]


def _number(fields: dict[bytes, list[bytes]], name: bytes, default: int | None = None, high: int = 2**63) -> int:
    if default is not None and name not in fields:
        return default
    text = _single(fields, name)
    if not text.isdigit() or int(text) > high:
        raise TrackerError(f"invalid {name.decode()}")
    return int(text)


def parse_announce(query: str, remote_host: str) -> Announce:
    """An announce request's query string (info_hash and peer_id are raw bytes, percent-encoded)."""
    fields = _fields(query, 32)
    info_hash, peer_id = _single(fields, b"info_hash"), _single(fields, b"peer_id")
    if len(info_hash) != 20:
        raise TrackerError("info_hash must be 20 bytes")
    if len(peer_id) != 20:
        raise TrackerError("peer_id must be 20 bytes")
    port = _number(fields, b"port", high=65535)
    if port == 0:
        raise TrackerError("invalid port")
    event = fields.get(b"event", [b""])[0].decode("latin-1")
    if event not in EVENTS:
        raise TrackerError("invalid event")
    return Announce(
        info_hash=info_hash,
        peer_id=peer_id,
        host=remote_host,
        port=port,
        left=_number(fields, b"left", default=0),
        event=event,
        numwant=min(_number(fields, b"numwant", default=DEFAULT_NUMWANT), MAX_NUMWANT),
        compact=fields.get(b"compact", [b"1"])[0] != b"0",
    )


def parse_scrape(query: str) -> list[bytes]:
    fields = _fields(query, 64)
    hashes = fields.get(b"info_hash", [])
    if any(len(item) != 20 for item in hashes):
        raise TrackerError("info_hash must be 20 bytes")
    return hashes


@dataclass
class _Peer:
    host: str
    port: int
    seeding: bool
    seen: float


@dataclass
class PeerTable:
    """The peers of each tracked torrent, by peer id; peers silent for PEER_TTL_SECONDS are forgotten."""

    ttl: float = PEER_TTL_SECONDS
    torrents: dict[bytes, dict[bytes, _Peer]] = field(default_factory=dict)

    def track(self, info_hashes: Iterable[bytes]) -> None:
        for info_hash in info_hashes:
            self.torrents.setdefault(info_hash, {})

    def announce(self, request: Announce, now: float | None = None, own: tuple[str, int] | None = None) -> bytes:
        """The bencoded answer to an announce (a failure for a torrent not tracked here). `own`: the tracker's
        own BitTorrent address as the asking peer reaches it (a seedbox seeds what it tracks): listed first."""
        now = time.monotonic() if now is None else now
        peers = self.torrents.get(request.info_hash)
        if peers is None:
            return failure("unregistered torrent")
        self._expire(peers, now)
        if request.event == "stopped":
            peers.pop(request.peer_id, None)
        else:
            peers.pop(request.peer_id, None)  # re-inserted last: the dict keeps recency order
            peers[request.peer_id] = _Peer(request.host, request.port, request.left == 0, now)
            while len(peers) > MAX_PEERS_PER_TORRENT:
                peers.pop(next(iter(peers)))
        others = [peer for peer_id, peer in peers.items() if peer_id != request.peer_id]
        # Newest first: the peers most likely still there.
        chosen = ([_Peer(own[0], own[1], True, now)] if own else []) + list(reversed(others))
        chosen = chosen[: request.numwant]
        complete = sum(peer.seeding for peer in peers.values())
        reply = {
            b"interval": ANNOUNCE_INTERVAL,
            b"min interval": ANNOUNCE_INTERVAL // 2,
            b"complete": complete,
            b"incomplete": len(peers) - complete,
            b"peers": compact_peers(chosen) if request.compact else [_peer_dict(peer) for peer in chosen],
        }
        if request.compact:
            reply[b"peers6"] = compact_peers(chosen, family=socket.AF_INET6)
        return bencode(reply)

    def scrape(self, info_hashes: list[bytes], now: float | None = None) -> bytes:
        now = time.monotonic() if now is None else now
        files = {}
        for info_hash in info_hashes or list(self.torrents):
            peers = self.torrents.get(info_hash)
            if peers is None:
                continue
            self._expire(peers, now)
            complete = sum(peer.seeding for peer in peers.values())
            files[info_hash] = {b"complete": complete, b"downloaded": 0, b"incomplete": len(peers) - complete}
        return bencode({b"files": files})

    def _expire(self, peers: dict[bytes, _Peer], now: float) -> None:
        for peer_id in [peer_id for peer_id, peer in peers.items() if now - peer.seen > self.ttl]:
            del peers[peer_id]


def compact_peers(peers: Iterable[_Peer], family: int = socket.AF_INET) -> bytes:
    """BEP 23 (IPv4: 4 + 2 bytes each) or BEP 7 (IPv6: 16 + 2 bytes each) peer strings."""
    packed = b""
    for peer in peers:
        try:
            address = ipaddress.ip_address(peer.host)
        except ValueError:
            continue
        if (address.version == 4) == (family == socket.AF_INET):
            packed += address.packed + peer.port.to_bytes(2, "big")
    return packed


def _peer_dict(peer: _Peer) -> dict[bytes, object]:
    return {b"ip": peer.host.encode(), b"port": peer.port}


def failure(reason: str) -> bytes:
    return bencode({b"failure reason": reason.encode()})
