"""Direct DHT stores: this node's announcements and signed items, sent to DHT nodes chosen by address.

A DHT node never answers get_peers with itself, nor keeps the items it puts: libtorrent stores only what other
nodes send it. In a small swarm (a seedbox and one joiner) the bootstrap node is the only other DHT node, so what
the bootstrap node announces and puts would be stored nowhere its joiners look, and what a joiner announces
reaches the bootstrap node only once a lookup has run. So every long-running node also stores its announcements
and items directly in its own DHT node and in its bootstrap nodes.

libtorrent's Python binding lacks `dht_direct_request`, so this module speaks the four KRPC queries it needs
(BEP 5 get_peers/announce_peer, BEP 44 get/put) over a UDP socket of its own. Each store first asks the node for
a write token; the write then carries the receiving node's own id (learned from that answer), which libtorrent
never adds to its routing table, and BEP 43's read-only flag, so this socket never poses as a DHT node.
Answers are untrusted: anything malformed counts as "not stored".
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarm.address import Address
from swarm.torrent.bencode import BencodeError, bdecode, bencode

# Seconds one query waits for its answer: stores go to this machine or to bootstrap nodes that just answered.
QUERY_SECONDS = 1.0
MAX_PACKET_BYTES = 65536


@dataclass(frozen=True)
class SignedItem:
    """A BEP 44 mutable item to store: the signer's ed25519 seed, the salt and the raw value."""

    seed: bytes
    public_key: bytes
    salt: bytes
    value: bytes
    # Given the value the node holds in the slot (None: nothing), the value to put there (None: leave it);
    # without it, `value` is always put.
    update: Callable[[bytes | None], bytes | None] | None = None


@dataclass
class StoreReport:
    announced: int = 0
    stored: int = 0
    failures: int = 0
    answered: bool = False


def store(
    endpoint: Address,
    announcements: Sequence[tuple[bytes, int]],
    items: Sequence[SignedItem],
    timeout: float = QUERY_SECONDS,
) -> StoreReport:
    """Announce (key, port) pairs and put `items` at the DHT node listening on `endpoint`. Never raises."""
    report = StoreReport()
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            client = _Client(sock, endpoint.pair, timeout)
            for key, port in announcements:
                if client.dead:
                    break
                ok = client.announce(key, port)
                report.announced += ok
                report.failures += not ok
            for item in items:
                if client.dead:
                    break
                ok = client.put(item)
                report.stored += ok
                report.failures += not ok
            report.answered = client.answered
    except OSError:
        report.failures += 1
    return report


class _Client:
    def __init__(self, sock: socket.socket, target: tuple[str, int], timeout: float) -> None:
        self.sock = sock
        self.target = target
        self.timeout = timeout
        self.answered = False
        # A node that does not answer once is not asked again in this round.
        self.dead = False

    def query(self, name: bytes, arguments: dict[bytes, Any]) -> dict[bytes, Any] | None:
        """Send one query; the answer's "r" dictionary, or None (no answer, an error, garbage)."""
        transaction = os.urandom(2)
        message = {b"t": transaction, b"y": b"q", b"q": name, b"a": arguments, b"ro": 1}
        self.sock.sendto(bencode(message), self.target)
        deadline = time.monotonic() + self.timeout
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                data, _ = self.sock.recvfrom(MAX_PACKET_BYTES)
            except (TimeoutError, OSError):
                break
            try:
                answer = bdecode(data)
            except BencodeError:
                continue
            if not isinstance(answer, dict) or answer.get(b"t") != transaction:
                continue
            self.answered = True
            reply = answer.get(b"r")
            return reply if answer.get(b"y") == b"r" and isinstance(reply, dict) else None
        self.dead = not self.answered
        return None

    def token(self, name: bytes, argument: bytes, target: bytes) -> tuple[bytes, bytes, dict[bytes, Any]] | None:
        """(write token, the node's id, the whole answer) for a get_peers or get of `target`."""
        reply = self.query(name, {b"id": os.urandom(20), argument: target})
        if reply is None:
            return None
        token, node_id = reply.get(b"token"), reply.get(b"id")
        if not isinstance(token, bytes) or not isinstance(node_id, bytes) or len(node_id) != 20:
            return None
        return token, node_id, reply

    def announce(self, key: bytes, port: int) -> bool:
        granted = self.token(b"get_peers", b"info_hash", key)
        if granted is None:
            return False
        token, node_id, _ = granted
        arguments = {b"id": node_id, b"info_hash": key, b"port": port, b"token": token, b"implied_port": 0}
        return self.query(b"announce_peer", arguments) is not None

    def put(self, item: SignedItem) -> bool:
        # BEP 44: a mutable item lives at SHA-1(public key + salt).
        target = hashlib.sha1(item.public_key + item.salt).digest()
        granted = self.token(b"get", b"target", target)
        if granted is None:
            return False
        token, node_id, current = granted
        held = current.get(b"v")
        value = item.value if item.update is None else item.update(held if isinstance(held, bytes) else None)
        if value is None:
            return True  # the node holds what it should: nothing to do
        sequence = next_sequence(current.get(b"seq"), held, value)
        arguments: dict[bytes, Any] = {
            b"id": node_id,
            b"k": item.public_key,
            b"seq": sequence,
            b"sig": sign_item(item.seed, item.salt, sequence, value),
            b"token": token,
            b"v": value,
        }
        if item.salt:
            arguments[b"salt"] = item.salt
        return self.query(b"put", arguments) is not None


def next_sequence(stored_sequence: object, stored_value: object, value: bytes) -> int:
    """The sequence number to put `value` with: the stored one when the node already holds the same value,
    one more when it holds another (a node refuses lower numbers), 1 when it holds nothing."""
    if not isinstance(stored_sequence, int) or isinstance(stored_sequence, bool) or stored_sequence < 0:
        return 1
    return stored_sequence if stored_value == value else stored_sequence + 1


def signed_bytes(salt: bytes, sequence: int, value: bytes) -> bytes:
    """What BEP 44 signs: the bencoded salt (when there is one), seq and v entries, in that order."""
    head = b"4:salt%d:%s" % (len(salt), salt) if salt else b""
    return head + b"3:seqi%de1:v%d:%s" % (sequence, len(value), value)


def sign_item(seed: bytes, salt: bytes, sequence: int, value: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).sign(signed_bytes(salt, sequence, value))
