"""Every libtorrent DHT call: the swarm's DHT settings, waiting for bootstrap, BEP 44 mutable items, BEP 5
announce/get_peers, magnet links, and moving a small torrent known only by its info hash.

Alerts are read only through the node's single pump (`node.pump`), with listeners that are removed again
before each call returns. Nothing here decides anything: records and policies live in swarm/discovery.py.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import libtorrent as lt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarm.address import Address
from swarm.errors import SwarmError
from swarm.torrent.krpc import SignedItem
from swarm.torrent.session import TorrentNode

# BEP 44: a value may take at most 1000 bytes once bencoded, a salt at most 64 bytes.
MAX_ITEM_BYTES = 1000
MAX_SALT_BYTES = 64
# How long one wait for alerts lasts while a call polls; how often bootstrap nodes are pinged while waiting.
POLL_SECONDS = 0.1
REBOOTSTRAP_SECONDS = 1.0
# How long a lookup keeps listening for newer copies of an item after the first one arrived.
SETTLE_SECONDS = 1.0
# How long wait_for_dht waits for the routing table to fill once a bootstrap node has answered. Lookups through
# the bootstrap router alone work from then on (a join's name lookup found the name after 0.2 s in every try);
# the grace only gives a filling table its first nodes. At 2 s it was a sixth of a small swarm's join start.
ROUTER_ONLY_GRACE = 0.5
# Seconds a DHT found usable is taken as usable without looking again (see wait_for_dht).
USABLE_MEMORY_SECONDS = 30.0


@dataclass(frozen=True)
class KeyPair:
    """An ed25519 key pair as libtorrent wants it (32-byte public key, 64-byte expanded secret key), and the
    32-byte seed both come from (for signing items this project stores directly, swarm.torrent.krpc)."""

    public: bytes
    secret: bytes
    seed: bytes

    def item(
        self, salt: bytes, value: bytes, update: Callable[[bytes | None], bytes | None] | None = None
    ) -> SignedItem:
        return SignedItem(self.seed, self.public, salt, value, update)


def keypair_from_seed(seed: bytes) -> KeyPair:
    """libtorrent's ed25519_create_keypair(seed), which this build's binding does not export.

    The expanded secret key is SHA-512(seed) with the scalar clamped (RFC 8032 section 5.1.5); the public
    key is the same one `cryptography` derives from the seed, so a publisher's PEM key signs BEP 44 items.
    """
    if len(seed) != 32:
        raise SwarmError(f"an ed25519 seed has 32 bytes, not {len(seed)}")
    expanded = bytearray(hashlib.sha512(seed).digest())
    expanded[0] &= 248
    expanded[31] &= 63
    expanded[31] |= 64
    public = (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return KeyPair(public=public, secret=bytes(expanded), seed=seed)


@dataclass(frozen=True)
class Slot:
    """Where a BEP 44 mutable item lives: the signer's public key and a salt."""

    public_key: bytes
    salt: bytes = b""


@dataclass(frozen=True)
class MutableItem:
    slot: Slot
    value: bytes
    sequence: int


# --- the routing table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DhtCounters:
    nodes: int  # in the routing table
    messages_in: int  # DHT messages received since the session started (answers and queries)


def dht_counters(node: TorrentNode, timeout: float = 2.0) -> DhtCounters | None:
    """The session's DHT counters, or None when the answer does not come within timeout."""
    counters: list[DhtCounters] = []

    def listen(alert: lt.alert) -> None:
        if isinstance(alert, lt.session_stats_alert):
            values = alert.values
            counters.append(DhtCounters(int(values["dht.dht_nodes"]), int(values["dht.dht_messages_in"])))

    node.add_listener(listen)
    try:
        node.session.post_session_stats()
        deadline = time.monotonic() + timeout
        while not counters and time.monotonic() < deadline:
            node.pump(POLL_SECONDS)
    finally:
        node.remove_listener(listen)
    return counters[-1] if counters else None


def nudge_bootstrap(node: TorrentNode) -> None:
    """Ping the bootstrap nodes again (one that restarted is found again); cheap, never blocks."""
    if node.session.is_dht_running():
        for address in node.bootstrap:
            node.session.add_dht_node(address.pair)


def wait_for_dht(node: TorrentNode, timeout: float) -> DhtCounters:
    """Return once the DHT is usable; SwarmError naming the bootstrap nodes when nobody answers. Found usable
    within the last USABLE_MEMORY_SECONDS, it is taken as usable still (a join's name lookup and coverage
    lookup each waited the grace below: 1.8 s of a join's start).

    Usable: the routing table holds a node, or DHT messages came in and ROUTER_ONLY_GRACE seconds passed.
    The routing table alone is not enough: libtorrent treats nodes listed in dht_bootstrap_nodes as
    routers, which never enter the table (2.1.1), and in a two-node swarm (publisher and bootstrap node)
    the table stays empty while lookups through the router work. Lookups made before the table fills
    right after bootstrap find nothing or stall, hence the grace. The bootstrap nodes are pinged again
    every second, so one that starts later than us is found too.
    """
    if node.dht_usable_at is not None and time.monotonic() - node.dht_usable_at < USABLE_MEMORY_SECONDS:
        known = dht_counters(node, timeout=min(1.0, timeout))
        if known is not None:
            return known
    addresses = [address.pair for address in node.bootstrap]
    started = time.monotonic()
    deadline = started + timeout
    last_ping = float("-inf")
    answered_at: float | None = None
    while True:
        now = time.monotonic()
        if node.session.is_dht_running():
            if now - last_ping >= REBOOTSTRAP_SECONDS:
                for address in addresses:
                    node.session.add_dht_node(address)
                last_ping = now
            counters = dht_counters(node, timeout=max(0.1, min(1.0, deadline - now)))
            if counters is not None and counters.nodes > 0:
                node.dht_usable_at = time.monotonic()
                return counters
            if counters is not None and counters.messages_in > 0:
                answered_at = answered_at if answered_at is not None else time.monotonic()
                if time.monotonic() - answered_at >= ROUTER_ONLY_GRACE or time.monotonic() >= deadline:
                    node.dht_usable_at = time.monotonic()
                    return counters
        if time.monotonic() >= deadline:
            break
        node.pump(min(POLL_SECONDS, max(deadline - time.monotonic(), 0.01)))
    if not addresses:
        raise SwarmError(
            f"the DHT found no other node within {timeout:g} s and no bootstrap node was given "
            "(pass --bootstrap HOST:PORT or set SWARM_BOOTSTRAP)"
        )
    named = ", ".join(str(address) for address in node.bootstrap)
    raise SwarmError(f"bootstrap node(s) {named} did not answer within {timeout:g} s")


# --- BEP 44 mutable items -------------------------------------------------------------------------------


def put_mutable_items(
    node: TorrentNode, items: Sequence[tuple[KeyPair, bytes, bytes]], timeout: float
) -> dict[Slot, bool]:
    """Put (key pair, salt, value) items, then look each up until the DHT returns the value put; return
    which slots were confirmed by the deadline.

    libtorrent first looks the item up and signs the value with the next sequence number, so a later put
    replaces an earlier one everywhere it lands. Its own "put complete" alert is not waited for: on a small
    swarm a node is often handed its own address, and the put it sends itself goes unanswered until the
    15 s RPC timeout (libtorrent 2.1.1), while the other nodes stored the item within milliseconds.
    """
    for key_pair, salt, value in items:
        start_put(node, key_pair, salt, value)
    return wait_for_values(node, {Slot(key_pair.public, salt): value for key_pair, salt, value in items}, timeout)


def wait_for_values(node: TorrentNode, expected: dict[Slot, bytes], timeout: float) -> dict[Slot, bool]:
    """Look the slots up until each returns its expected value; which did by the deadline."""
    confirmed: set[Slot] = set()
    deadline = time.monotonic() + timeout
    while len(confirmed) < len(expected) and time.monotonic() < deadline:
        pending = [slot for slot in expected if slot not in confirmed]
        # Short rounds: a lookup sent before the puts landed would otherwise hold up the confirmation.
        round_timeout = max(0.1, min(deadline - time.monotonic(), 1.0))
        for slot, item in get_mutable_items(node, pending, round_timeout, settle=0.3).items():
            if item is not None and item.value == expected[slot]:
                confirmed.add(slot)
        if len(confirmed) < len(expected):
            # A lookup can answer "nothing" at once (empty routing table): do not spin.
            time.sleep(min(POLL_SECONDS * 3, max(0.0, deadline - time.monotonic())))
    return {slot: slot in confirmed for slot in expected}


def start_put(node: TorrentNode, key_pair: KeyPair, salt: bytes, value: bytes) -> None:
    """Put without waiting (refreshes from a loop that pumps anyway)."""
    _check_item(salt, value)
    node.session.dht_put_mutable_item(key_pair.secret, key_pair.public, value, salt)


def _check_item(salt: bytes, value: bytes) -> None:
    # The binding stores the value as one bencoded string: "<length>:<bytes>".
    if len(value) + len(str(len(value))) + 1 > MAX_ITEM_BYTES:
        raise SwarmError(f"a DHT item holds at most {MAX_ITEM_BYTES} bytes; this one needs {len(value)}")
    if len(salt) > MAX_SALT_BYTES:
        raise SwarmError(f"a DHT salt holds at most {MAX_SALT_BYTES} bytes; this one has {len(salt)}")


def get_mutable_items(
    node: TorrentNode,
    slots: Iterable[Slot],
    timeout: float,
    settle: float = SETTLE_SECONDS,
    follow: Callable[[Slot, MutableItem], Iterable[Slot]] | None = None,
) -> dict[Slot, MutableItem | None]:
    """One lookup of each slot; the newest item found (highest sequence number), or None.

    A slot is done when libtorrent's lookup finishes (its authoritative answer) or `settle` seconds after
    its first item arrived: a lookup that meets a node that has gone away waits ~15 s for it before it
    finishes, while the item itself usually arrives within milliseconds and newer copies soon after.
    A slot nobody answers for waits for the authoritative answer or the deadline. Values are the raw
    bytes that were put; a value that is not a byte string (someone else's client) comes back bencoded,
    so the caller's decoder rejects it.

    follow: given an item as it arrives, the slots it makes worth asking too; they join this lookup, so their
    settling overlaps the others' instead of taking a round of its own.
    """
    wanted = set(slots)
    found: dict[Slot, MutableItem] = {}
    first_found: dict[Slot, float] = {}
    finished: set[Slot] = set()

    def listen(alert: lt.alert) -> None:
        answer = mutable_item_answer(alert)
        if answer is None or answer[0] not in wanted:
            return
        slot, item, authoritative = answer
        if item is not None and (slot not in found or item.sequence > found[slot].sequence):
            found[slot] = item
            first_found.setdefault(slot, time.monotonic())
            for more in follow(slot, item) if follow is not None else ():
                if more not in wanted:
                    wanted.add(more)
                    start_get(node, more)
        if authoritative:
            finished.add(slot)

    def done() -> bool:
        now = time.monotonic()
        return all(slot in finished or now - first_found.get(slot, now) >= settle for slot in wanted)

    node.add_listener(listen)
    try:
        for slot in wanted:
            node.session.dht_get_mutable_item(slot.public_key, slot.salt)
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            node.pump(POLL_SECONDS)
    finally:
        node.remove_listener(listen)
    return {slot: found.get(slot) for slot in wanted}


def start_get(node: TorrentNode, slot: Slot) -> None:
    """Look a slot up without waiting; the answer comes through the pump (see mutable_item_answer)."""
    node.session.dht_get_mutable_item(slot.public_key, slot.salt)


def mutable_item_answer(alert: object) -> tuple[Slot, MutableItem | None, bool] | None:
    """(slot, item or None, authoritative) when the alert answers a mutable item lookup, else None."""
    if not isinstance(alert, lt.dht_mutable_item_alert):
        return None
    slot = Slot(bytes(alert.key), bytes(alert.salt))
    sequence = int(alert.seq)
    item = alert.item
    # Another client may have put a non-string entry: hand back its bencoding, which no decoder here accepts.
    value = item if isinstance(item, bytes) else bytes(lt.bencode(cast(Any, item)))
    found = MutableItem(slot=slot, value=value, sequence=sequence) if sequence > 0 else None
    return slot, found, bool(alert.authoritative)


# --- BEP 5 announce / get_peers on derived keys --------------------------------------------------------


def derived_key(text: bytes) -> bytes:
    """A 20-byte DHT target for BEP 5: SHA-1 of a swarm-specific string."""
    return hashlib.sha1(text).digest()


def announce(node: TorrentNode, key: bytes, port: int) -> None:
    """Tell the nodes closest to `key` that this machine listens on `port` (expires after ~30 min)."""
    if len(key) != 20:
        raise SwarmError(f"a BEP 5 key has 20 bytes, not {len(key)}")
    if not 0 < port < 65536:
        raise SwarmError(f"cannot announce port {port}")
    node.session.dht_announce(lt.sha1_hash(key), port, 0)


def get_peers(
    node: TorrentNode, keys: bytes | Sequence[bytes], timeout: float, settle: float = 0.3, *, once: bool = False
) -> list[Address]:
    """Addresses announced under `keys` (one 20-byte key or several, looked up at once): asks again every
    2 s until one is found or the deadline passes; with `once`, nothing found when the first lookup has ended
    is the answer (libtorrent's DHT stats show no get_peers lookup running any more).

    Several replies come for one lookup; after the first peer arrives we keep listening `settle` seconds
    to gather the others. An empty list is an answer, not an error.
    """
    found = _gather_peers(node, [keys] if isinstance(keys, bytes) else list(keys), timeout, settle, once, each=False)
    return list(dict.fromkeys(address for addresses in found.values() for address in addresses))


def get_peers_of_each(
    node: TorrentNode, keys: Sequence[bytes], timeout: float, settle: float = 0.3
) -> dict[bytes, list[Address]]:
    """The addresses announced under each of `keys`, looked up at once, until every key has some (then `settle`
    seconds more), the lookups have ended, or `timeout` passes: a key nobody announced maps to []."""
    return _gather_peers(node, list(keys), timeout, settle, once=True, each=True)


def _gather_peers(
    node: TorrentNode, keys: list[bytes], timeout: float, settle: float, once: bool, each: bool
) -> dict[bytes, list[Address]]:
    """Addresses per key; done `settle` seconds after the first address (`each`: after every key has one)."""
    targets = {lt.sha1_hash(key): key for key in keys}
    peers: dict[bytes, dict[Address, None]] = {key: {} for key in keys}
    # With `once`: whether DHT stats were asked for and not answered yet, showed a get_peers lookup running,
    # then showed none. Seeing one run first keeps an answer to an earlier caller's request from ending this one.
    stats_asked = seen_running = lookups_ended = False

    def listen(alert: lt.alert) -> None:
        nonlocal stats_asked, seen_running, lookups_ended
        if isinstance(alert, lt.dht_get_peers_reply_alert) and alert.info_hash in targets:
            for pair in alert.peers():
                peers[targets[alert.info_hash]][Address.of(pair)] = None
        elif isinstance(alert, lt.dht_stats_alert):
            stats_asked = False
            if any(lookup.get("type") == "get_peers" for lookup in alert.active_requests):
                seen_running = True
            elif seen_running:
                lookups_ended = True

    def found() -> bool:
        return all(peers.values()) if each else any(peers.values())

    node.add_listener(listen)
    try:
        deadline = time.monotonic() + timeout
        asked = float("-inf")
        first_peer: float | None = None
        while time.monotonic() < deadline:
            now = time.monotonic()
            if found() and first_peer is None:
                first_peer = now
            if first_peer is not None and now - first_peer >= settle:
                break
            if once and lookups_ended and not found():
                break
            if not found() and now - asked >= 2.0:
                for target in targets:
                    node.session.dht_get_peers(target)
                asked = now
            if once and not stats_asked:
                # Asked after the lookups started: libtorrent's network thread handles both in order.
                node.session.post_dht_stats()
                stats_asked = True
            node.pump(POLL_SECONDS)
    finally:
        node.remove_listener(listen)
    return {key: list(addresses) for key, addresses in peers.items()}


# --- magnets and small torrents fetched by info hash ---------------------------------------------------


@dataclass(frozen=True)
class Magnet:
    info_hashes: tuple[str, ...]  # hex; v2 (64 digits) first when present, then v1 (40 digits)
    name: str | None
    peers: tuple[Address, ...] = field(default=())


def parse_magnet(uri: str) -> Magnet:
    try:
        params = lt.parse_magnet_uri(uri)
    except RuntimeError as error:
        raise SwarmError(f"malformed magnet link {uri[:80]!r}: {error}") from error
    hashes = params.info_hashes
    info_hashes = []
    if hashes.has_v2():
        info_hashes.append(str(hashes.v2))
    if hashes.has_v1():
        info_hashes.append(str(hashes.v1))
    if not info_hashes:
        raise SwarmError(f"the magnet link {uri[:80]!r} names no info hash")
    peers = tuple(Address.of(pair) for pair in params.peers)
    return Magnet(info_hashes=tuple(info_hashes), name=params.name or None, peers=peers)


def torrent_keys(node: TorrentNode) -> list[bytes]:
    """The DHT keys of every torrent in the session (v1 hash, and the truncated v2 hash libtorrent uses)."""
    keys = []
    for handle in node.session.get_torrents():
        hashes = handle.info_hashes()
        if hashes.has_v1():
            keys.append(hashes.v1.to_bytes())
        if hashes.has_v2():
            keys.append(hashes.v2.to_bytes()[:20])
    return keys


def info_hash_key(info_hash: str) -> bytes:
    """The 20-byte DHT key libtorrent announces a torrent under (a v2 hash is truncated)."""
    return bytes.fromhex(info_hash)[:20]


def download_small_torrent(
    node: TorrentNode,
    info_hash: str,
    save_path: Path,
    peers: Sequence[Address],
    timeout: float,
    max_bytes: int,
) -> Path:
    """Fetch a small torrent known only by its info hash (metadata via ut_metadata from DHT peers), keep
    seeding it, and return the folder it was saved to (save_path / torrent name).

    Peers found by the caller are connected directly as well as through the DHT; a torrent bigger than
    max_bytes is dropped as soon as its metadata arrives.
    """
    digest = bytes.fromhex(info_hash)
    params = lt.add_torrent_params()
    params.info_hashes = lt.info_hash_t(lt.sha256_hash(digest) if len(digest) == 32 else lt.sha1_hash(digest))
    params.save_path = str(save_path)
    params.flags &= ~lt.torrent_flags.auto_managed
    params.flags &= ~lt.torrent_flags.paused
    existing = node.session.find_torrent(params.info_hashes.get_best())
    handle = existing if existing.is_valid() else node.session.add_torrent(params)
    node.handles[_handle_key(handle)] = handle
    deadline = time.monotonic() + timeout
    announced = float("-inf")
    size_checked = False
    while True:
        status = handle.status()
        if status.is_seeding:
            break
        now = time.monotonic()
        if now >= deadline:
            what = "its file(s)" if status.has_metadata else "its metadata"
            _drop(node, handle)
            raise SwarmError(
                f"could not download {what} for torrent {info_hash[:16]} within {timeout:g} s "
                f"({len(peers)} known holder(s), {status.num_peers} connected)"
            )
        info = handle.torrent_file() if status.has_metadata else None
        if info is not None and not size_checked:
            total = info.total_size()
            if total > max_bytes:
                _drop(node, handle)
                raise SwarmError(f"torrent {info_hash[:16]} holds {total:,} bytes, more than {max_bytes:,} allowed")
            size_checked = True
        if now - announced >= 3.0:
            # A torrent added before the DHT was ready announces again only after 15 min: ask now.
            handle.force_dht_announce()
            for address in peers:
                handle.connect_peer(address.pair)
            announced = now
        node.pump(POLL_SECONDS)
    node.flush_handle(handle, timeout=max(1.0, min(5.0, deadline - time.monotonic())))
    info = handle.torrent_file()
    if info is None:
        raise SwarmError(f"torrent {info_hash[:16]} finished without metadata")
    return save_path / info.name()


def seed_small_torrent(node: TorrentNode, torrent_data: bytes, save_path: Path) -> str:
    """Seed a torrent whose files are on disk and announce it on the DHT now; return its key."""
    info = lt.torrent_info(torrent_data)
    existing = node.session.find_torrent(info.info_hashes().get_best())
    if existing.is_valid():
        key = _handle_key(existing)
        node.handles[key] = existing
    else:
        key = node.seed(torrent_data, save_path)
    node.handles[key].force_dht_announce()
    return key


def force_announce(node: TorrentNode, key: str) -> None:
    handle = node.handles.get(key)
    if handle is not None and handle.is_valid():
        handle.force_dht_announce()


def _drop(node: TorrentNode, handle: lt.torrent_handle) -> None:
    node.handles.pop(_handle_key(handle), None)
    node.session.remove_torrent(handle)


def _handle_key(handle: lt.torrent_handle) -> str:
    hashes = handle.info_hashes()
    return str(hashes.v2) if hashes.has_v2() else str(hashes.v1)
