"""One libtorrent session per process: its settings, the torrents it seeds or fetches, its alerts.

libtorrent's alert queue has one reader: `TorrentNode.pump`, which hands every alert to the node's own
bookkeeping (resume data, events) and then to the listeners registered with `add_listener`.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import libtorrent as lt

from swarm.address import Address
from swarm.errors import SwarmError
from swarm.torrent.fetch import WANTED, fetch_params, file_priorities, seed_params, torrent_files
from swarm.torrent.request_queue import MIN_ACCEPTED_REQUESTS, accepted_requests_per_peer
from swarm.torrent.resume import resume_path, torrent_key, write_resume

log = logging.getLogger(__name__)

USER_AGENT = "swarm/0.1"
# v2 torrents: resume data saved right at the finish may miss pieces (pread backend), so save again later.
RESAVE_AFTER_FINISH_SECONDS = 3.0
# How often peers given explicitly (--peer) are dialled again while not connected.
REDIAL_SECONDS = 5.0
# How often the per-peer request queue a node accepts is resized to its upload rate.
REQUEST_QUEUE_REVIEW_SECONDS = 1.0
# How long close() waits for the resume data of every torrent.
CLOSE_TIMEOUT_SECONDS = 10.0
# Seconds before libtorrent dials a peer again after a connection to it ended (see session_settings).
RECONNECT_SECONDS = 2
# Peers whose last connection error a torrent remembers.
MAX_PEER_ERRORS = 16
# How often the DHT's routing table size is read (for re-announcing when it grows).
DHT_STATS_SECONDS = 1.0


# DHT settings every swarm node needs:
# - libtorrent blocks for dht_block_timeout (300 s) any address that sends it more than dht_block_ratelimit
#   (default 5) DHT packets a second. All nodes of a loopback or NAT'ed LAN swarm share one address, so one
#   busy lookup gets the whole swarm blocked (seen on 127.0.0.1: puts stored on 0 nodes, lookups stalled).
# - dht_upload_rate_limit (default 8000 bytes/s) holds back the puts of a publisher: name records of ~500
#   bytes to several slots and nodes exceed it, and the puts beyond it landed only ~15 s later.
SWARM_DHT_SETTINGS: dict[str, Any] = {"dht_block_ratelimit": 10_000, "dht_upload_rate_limit": 1_000_000}


def listen_interfaces(listen: Address) -> str:
    """libtorrent's listen_interfaces for a listen address.

    A wildcard is expanded by libtorrent into one socket per interface, and it runs no DHT on the loopback one
    (a "local network" socket): such a node never hears a DHT node on 127.0.0.1, so a swarm on one machine
    would not assemble. Loopback is therefore named explicitly beside the wildcard, on the same port (chosen
    here when 0, so both sockets share it).
    """
    if not listen.is_wildcard:
        return str(listen)
    port = listen.port or free_port(listen.host)
    loopback = "[::1]" if ":" in listen.host else "127.0.0.1"
    wildcard = "[::]" if ":" in listen.host else "0.0.0.0"
    return f"{wildcard}:{port},{loopback}:{port}"


def free_port(host: str) -> int:
    """A port free for both TCP and UDP on `host` right now (libtorrent tries the next ones if it is taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    bind_host = "::" if family == socket.AF_INET6 else "0.0.0.0"
    for _ in range(20):
        with socket.socket(family, socket.SOCK_STREAM) as tcp, socket.socket(family, socket.SOCK_DGRAM) as udp:
            tcp.bind((bind_host, 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind((bind_host, port))
            except OSError:
                continue
            return port
    raise SwarmError("found no free port for BitTorrent")


def anti_sybil(listen: Address, bootstrap: Sequence[Address]) -> bool:
    """Whether libtorrent's DHT defences against Sybil nodes (one routing-table entry per IP prefix, node ids that
    match their IPs) stay on (pure). They would keep a swarm on one machine or one LAN from assembling (every node
    shares a prefix), so they are off for a node whose bootstrap nodes are all loopback or private addresses, or
    that has none and listens on loopback or a private address; on as soon as a public address or a host name is
    among the bootstrap nodes."""
    if bootstrap:
        return any(_public(node.host) for node in bootstrap)
    return not listen.is_wildcard and _public(listen.host)


def _public(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_global
    except ValueError:
        return True  # a host name: anywhere


def encryption_settings(forced: bool) -> dict[str, int]:
    """libtorrent's protocol encryption (MSE/PE): forced and of the whole stream for a private swarm's members (no
    plaintext BitTorrent in or out), else its default (offered, plaintext accepted)."""
    if not forced:
        return {}
    return {
        "out_enc_policy": int(lt.enc_policy.forced),
        "in_enc_policy": int(lt.enc_policy.forced),
        "allowed_enc_level": int(lt.enc_level.rc4),
    }


def dht_sybil_settings(on: bool) -> dict[str, bool]:
    return {"dht_restrict_routing_ips": on, "dht_restrict_search_ips": on, "dht_prefer_verified_node_ids": on}


def session_settings(
    listen: Address,
    bootstrap: Sequence[Address],
    dht: bool = True,
    upload_limit: int = 0,
    download_limit: int = 0,
    utp: bool = False,
    *,
    read_only_dht: bool = False,
    lsd: bool = False,
    encrypted: bool = False,
) -> dict[str, Any]:
    """Settings for a swarm node: DHT on (read-only for short-lived clients, BEP 43), many peers per IP (several
    nodes share one address on one machine or behind one NAT), no UPnP/NAT-PMP, LSD when asked, TCP only unless
    `utp` (uTP's per-packet work in user space cost ~30% more CPU per fetch than TCP, measured here)."""
    return {
        "listen_interfaces": listen_interfaces(listen),
        "user_agent": USER_AGENT,
        "enable_dht": dht,
        "dht_read_only": read_only_dht,
        "dht_bootstrap_nodes": ",".join(str(node) for node in bootstrap),
        **SWARM_DHT_SETTINGS,
        # LSD is for LANs: a node bound to loopback has none (and would meet the other loopback nodes twice).
        "enable_lsd": lsd and not listen.is_loopback,
        "enable_upnp": False,
        "enable_natpmp": False,
        # Several nodes on one machine (tests, the demo) share an address: let them all connect.
        "allow_multiple_connections_per_ip": True,
        "enable_outgoing_utp": utp,
        "enable_incoming_utp": utp,
        # Seconds of requests kept queued at each peer (default 3). Requests queued at a seed go stale as the
        # other fetchers receive those pieces, so a long queue makes the seed upload pieces twice: 1 s took
        # the seed's upload in tools/bench_distribution.py from ~1.5 to ~1.25 copies of the model.
        "request_queue_time": 1,
        # What this node accepts queued from each peer; raised with its upload rate (see request_queue.py).
        "max_allowed_in_request_queue": MIN_ACCEPTED_REQUESTS,
        # Pick blocks as they are needed, not runs of whole pieces. By default (20) a peer that could fetch a
        # piece in under 20 s gets up to 8 MiB of adjacent pieces picked at once: seconds of requests queued
        # at the seed, while other fetchers pick the same rare pieces. Off, the seed's upload in
        # tools/bench_distribution.py (N=8) fell from 1.20 to 1.06 copies and the slowest fetch from 27.5 to 24.7 s.
        "whole_pieces_threshold": 0,
        # Seconds before a peer whose connection ended is dialled again (times its failures + 1; default 60). Two
        # nodes that dial each other at once both drop one connection, and when both listen on the same port (every
        # node defaults to 6881) each picks which at random (libtorrent's peer_list): half the time both go, and a
        # fetcher waited a minute for the only seeder it knew (seen in the network lab: a seedbox dialling the
        # fetcher its LSD announce told it of, as the fetcher dialled it).
        "min_reconnect_time": RECONNECT_SECONDS,
        # One disk thread that also hashes (defaults: 10 disk threads and a hashing thread). Every block read or
        # written is handed between the network thread and these by futex wakeups; with fewer threads there are
        # fewer, and a 2-core machine is not crowded. In tools/bench_cpu.py at 100 Mbit/s the seed's CPU per GB
        # fell from 3.1 to 2.0 s and the fetch's from 7.1 to 5.9 s; unshaped, the transfer stayed above 250 MB/s.
        "aio_threads": 1,
        "hashing_threads": 0,
        # Keep connections between peers that both have everything they want: libtorrent drops them otherwise,
        # and with them the per-peer byte counters a finished fetch reports as its sources.
        "close_redundant_connections": False,
        # As a seed, unchoke the peers that take data fastest (default: in turn). On mixed links a seed that serves
        # slow peers in turn spends its upload on bytes a fast peer would have passed on: in
        # tools/bench_distribution.py (--rates 10mbit,100mbit) the seed's upload fell from 1.9 to 1.35-1.56 copies
        # and the slowest host from 1.17-1.18 to 1.14 x its own S/B; equal links (N=8, N=16) were unchanged.
        "seed_choking_algorithm": int(lt.seed_choking_algorithm_t.fastest_upload),
        **dht_sybil_settings(anti_sybil(listen, bootstrap)),
        **encryption_settings(encrypted),
        # Bytes per second; 0 means unlimited.
        "upload_rate_limit": max(0, upload_limit),
        "download_rate_limit": max(0, download_limit),
        "alert_mask": int(
            lt.alert_category.error
            | lt.alert_category.status
            | lt.alert_category.storage
            | lt.alert_category.dht
            | lt.alert_category.dht_operation
            | lt.alert_category.peer
            # Connection attempts that fail or end (peer_disconnected_alert): a stalled fetch names the last.
            | lt.alert_category.connect
            | lt.alert_category.tracker
        ),
    }


@dataclass(frozen=True)
class TorrentStatus:
    name: str
    info_hash: str
    state: str
    progress: float
    peers: int
    seeds: int
    upload_rate: int
    download_rate: int
    total_upload: int
    total_download: int
    is_seeding: bool
    # Payload bytes moved by this process (total_upload/total_download include earlier runs via resume data).
    session_upload: int = 0
    session_download: int = 0
    wanted_bytes: int = 0
    wanted_done: int = 0
    # Peers libtorrent knows of for the torrent (from the DHT, trackers, LSD, PEX, given ones), connected or not.
    known_peers: int = 0
    error: str | None = None


@dataclass(frozen=True)
class TorrentEvent:
    """Something that happened to a torrent, rendered from a libtorrent alert."""

    # checked | finished | file_completed | hash_failed | peer_banned | error | resume_saved
    kind: str
    key: str
    name: str
    message: str
    piece: int | None = None
    file: str | None = None
    peer: str | None = None
    disk_full: bool = False


@dataclass(frozen=True)
class PeerTransfer:
    address: str
    client: str
    downloaded: int
    uploaded: int


@dataclass
class _Tracked:
    handle: lt.torrent_handle
    resume_file: Path | None
    direct_peers: set[tuple[str, int]]
    # Whether the torrent's pieces came from resume data (trusted, not hash-checked by this session).
    restored: bool = False
    last_dial: float = 0.0
    resave_at: float | None = None
    hash_failures: int = 0
    # Endpoint → bytes on its open connection at the last look, and bytes of its closed connections
    # (peer_info forgets a peer when it disconnects).
    open_totals: dict[str, PeerTransfer] = field(default_factory=dict)
    closed_totals: dict[str, PeerTransfer] = field(default_factory=dict)
    # Tracker URL → why its last announce failed (dropped once it answers).
    tracker_errors: dict[str, str] = field(default_factory=dict)
    # Endpoint → why the last connection to it failed or ended, latest last (bounded), for a fetch that gets nowhere.
    peer_errors: dict[str, str] = field(default_factory=dict)


def _with_banked(transfer: PeerTransfer, banked: PeerTransfer | None) -> PeerTransfer:
    """A connection's counters plus what earlier connections to the same endpoint moved."""
    if banked is None:
        return transfer
    return PeerTransfer(
        transfer.address,
        transfer.client,
        transfer.downloaded + banked.downloaded,
        transfer.uploaded + banked.uploaded,
    )


class TorrentNode:
    """A libtorrent session with the swarm's settings: seeds, fetches subsets, saves resume data."""

    def __init__(
        self,
        listen: Address,
        bootstrap: Sequence[Address] = (),
        dht: bool = True,
        *,
        read_only_dht: bool = False,
        resume_dir: Path | None = None,
        resume_interval: float = 30.0,
        upload_limit: int = 0,
        download_limit: int = 0,
        limit_local_peers: bool = False,
        utp: bool = False,
        lsd: bool = False,
        pex: bool = True,
        trackers: Sequence[str] = (),
        encrypted: bool = False,
    ) -> None:
        self.bootstrap = tuple(bootstrap)
        try:
            settings = session_settings(
                listen, self.bootstrap, dht, upload_limit, download_limit, utp, read_only_dht=read_only_dht, lsd=lsd,
                encrypted=encrypted,
            )  # fmt: skip
            # The binding takes a plain dict where its stubs say settings_pack.
            self.session = lt.session(cast("lt.settings_pack", settings))
        except (RuntimeError, ValueError) as error:
            raise SwarmError(f"cannot start a BitTorrent session on {listen}: {error}") from error
        for address in self.bootstrap:
            # Nodes named only in dht_bootstrap_nodes never enter the routing table on loopback.
            self.session.add_dht_node(address.pair)
        self.handles: dict[str, lt.torrent_handle] = {}
        self.listeners: list[Callable[[lt.alert], None]] = []
        self.event_listeners: list[Callable[[TorrentEvent], None]] = []
        self.resume_dir = resume_dir
        self.resume_interval = resume_interval
        self.pex = pex
        self.trackers = tuple(trackers)
        # The UDP sockets libtorrent listens on (its DHT nodes), as it reports them.
        self.udp_endpoints: list[Address] = []
        # Nodes in the DHT routing tables, read every DHT_STATS_SECONDS while the DHT runs.
        self.dht_nodes = 0
        # When swarm.torrent.dht.wait_for_dht last found the DHT usable (monotonic seconds), so that the lookups
        # that follow one another at a peer's start do not each wait out its grace again.
        self.dht_usable_at: float | None = None
        self._next_dht_stats = 0.0
        self._tracked: dict[str, _Tracked] = {}
        self._pending_saves: set[str] = set()
        self._next_periodic_save = time.monotonic() + resume_interval
        self._next_queue_review = 0.0
        self._accepted_requests = MIN_ACCEPTED_REQUESTS
        if limit_local_peers:
            self.set_rate_limits(upload_limit, download_limit, limit_local_peers=True)
        # The listen sockets are opened asynchronously: wait for them, so listen_port and udp_endpoints are known
        # (a wildcard opens one per interface: their reports come together, shortly after the first).
        deadline = time.monotonic() + 5.0
        while not self.udp_endpoints and time.monotonic() < deadline:
            self.pump(0.05)
        self.pump(0.05)

    @property
    def listen_port(self) -> int:
        return int(self.session.listen_port())

    # --- rate limits -------------------------------------------------------------------------------------

    def set_rate_limits(self, upload: int, download: int, limit_local_peers: bool = False) -> None:
        """Session-wide limits in bytes/s (0 = unlimited).

        libtorrent puts loopback and LAN peers in its 'local' class, which no limit applies to; with
        limit_local_peers every address is put in the global class instead (benchmarks on 127.0.0.1).
        """
        self.session.apply_settings(
            cast("lt.settings_pack", {"upload_rate_limit": max(0, upload), "download_rate_limit": max(0, download)})
        )
        classes = lt.ip_filter()
        if limit_local_peers:
            everyone = 1 << int(lt.session.global_peer_class_id)
            classes.add_rule("0.0.0.0", "255.255.255.255", everyone)
            classes.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", everyone)
        else:
            # libtorrent's default: local ranges in the local class, the rest global.
            everyone = 1 << int(lt.session.global_peer_class_id)
            local = 1 << int(lt.session.local_peer_class_id)
            classes.add_rule("0.0.0.0", "255.255.255.255", everyone)
            for first, last in (
                ("10.0.0.0", "10.255.255.255"),
                ("172.16.0.0", "172.31.255.255"),
                ("192.168.0.0", "192.168.255.255"),
                ("169.254.0.0", "169.254.255.255"),
                ("127.0.0.0", "127.255.255.255"),
            ):
                classes.add_rule(first, last, local)
            classes.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", everyone)
            classes.add_rule("fe80::", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", local)
            classes.add_rule("::1", "::1", local)
        self.session.set_peer_class_filter(classes)

    # --- adding torrents -----------------------------------------------------------------------------------

    def seed(self, torrent_data: bytes, save_path: Path, resume_dir: Path | None = None) -> str:
        """Seed a complete set of files already on disk: resume data when it agrees with the disk, otherwise
        seed mode (each piece is hash-checked the first time a peer asks for it, none up front)."""
        info = _torrent_info(torrent_data)
        key = torrent_key(info)
        if key in self._tracked:
            return key
        resume_file = self._resume_file(key, resume_dir)
        params, restored = seed_params(info, save_path, resume_file)
        return self._add(key, params, resume_file, (), restored)

    def fetch(
        self,
        torrent_data: bytes,
        save_path: Path,
        wanted_file_paths: Collection[str],
        peers: Iterable[str] = (),
        resume_dir: Path | None = None,
    ) -> str:
        """Fetch only `wanted_file_paths` (paths inside the torrent) into save_path; returns the torrent key.

        Resume data is restored when it agrees with the disk; otherwise libtorrent checks the files present,
        so pieces already on disk are not downloaded again. Adding a torrent the node already has widens its
        wanted files to the union.
        """
        info = _torrent_info(torrent_data)
        key = torrent_key(info)
        addresses = [Address.parse(peer, "peer").pair for peer in peers]
        tracked = self._tracked.get(key)
        if tracked is not None:
            handle = tracked.handle
            files = torrent_files(info)
            current = handle.get_file_priorities()
            already = {file.path for file, priority in zip(files, current, strict=False) if priority > 0}
            handle.prioritize_files(file_priorities(files, already | set(wanted_file_paths)))
            tracked.direct_peers.update(addresses)
            self._dial(tracked, force=True)
            return key
        resume_file = self._resume_file(key, resume_dir)
        params, restored = fetch_params(info, save_path, wanted_file_paths, resume_file)
        log.info("fetching %s (%s)", info.name(), "resumed" if restored else "files checked")
        return self._add(key, params, resume_file, addresses, restored)

    def _add(
        self,
        key: str,
        params: lt.add_torrent_params,
        resume_file: Path | None,
        peers: Iterable[tuple[str, int]],
        restored: bool,
    ) -> str:
        self.apply_node_options(params)
        try:
            handle = self.session.add_torrent(params)
        except RuntimeError as error:
            raise SwarmError(f"cannot add torrent {key[:12]}: {error}") from error
        self.handles[key] = handle
        tracked = _Tracked(handle=handle, resume_file=resume_file, direct_peers=set(peers), restored=restored)
        self._tracked[key] = tracked
        self._dial(tracked, force=True)
        return key

    def apply_node_options(self, params: lt.add_torrent_params) -> None:
        """What this node adds to every torrent: its extra tracker URLs, and peer exchange off when asked."""
        known = set(params.trackers)
        params.trackers = list(params.trackers) + [url for url in self.trackers if url not in known]
        if not self.pex:
            params.flags |= lt.torrent_flags.disable_pex

    def _resume_file(self, key: str, resume_dir: Path | None) -> Path | None:
        directory = resume_dir if resume_dir is not None else self.resume_dir
        return resume_path(directory, key) if directory is not None else None

    def reannounce(self, key: str) -> None:
        """Ask the DHT and the trackers for this torrent's peers now (LSD announces on its own timer)."""
        handle = self._tracked_or_error(key).handle
        handle.force_dht_announce()
        handle.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)

    def remove(self, key: str) -> None:
        """Stop seeding/fetching a torrent; its files stay on disk."""
        tracked = self._tracked.pop(key, None)
        self.handles.pop(key, None)
        if tracked is not None:
            self.session.remove_torrent(tracked.handle)

    # --- peers ---------------------------------------------------------------------------------------------

    def connect_peer(self, key: str, address: str) -> None:
        """Dial a peer now and again every few seconds while it is not connected."""
        tracked = self._tracked_or_error(key)
        tracked.direct_peers.add(Address.parse(address, "peer").pair)
        self._dial(tracked, force=True)

    add_peer = connect_peer

    def _dial(self, tracked: _Tracked, force: bool = False) -> None:
        now = time.monotonic()
        if not tracked.direct_peers or (not force and now - tracked.last_dial < REDIAL_SECONDS):
            return
        tracked.last_dial = now
        connected = {_endpoint_text(peer.ip) for peer in tracked.handle.get_peer_info()}
        for address in tracked.direct_peers:
            if f"{address[0]}:{address[1]}" not in connected:
                tracked.handle.connect_peer(address)

    def peer_transfers(self, key: str) -> list[PeerTransfer]:
        """Bytes exchanged with every peer seen so far, summed over reconnections (sampled: bytes moved on a
        connection after the last call and before it closed are not counted)."""
        tracked = self._tracked_or_error(key)
        closed = tracked.closed_totals
        current: dict[str, PeerTransfer] = {}
        for peer in tracked.handle.get_peer_info():
            if peer.flags & (lt.peer_info.connecting | lt.peer_info.handshake):
                continue
            address = _endpoint_text(peer.ip)
            current[address] = PeerTransfer(address, _text(peer.client), int(peer.total_download),
                                            int(peer.total_upload))  # fmt: skip
        for address, before in tracked.open_totals.items():
            now = current.get(address)
            if now is None or now.downloaded < before.downloaded or now.uploaded < before.uploaded:
                # That connection closed (a new one restarts its counters from zero): bank what it moved.
                closed[address] = _with_banked(before, closed.get(address))
        tracked.open_totals = current
        result = dict(closed)
        for address, now in current.items():
            result[address] = _with_banked(now, closed.get(address))
        return list(result.values())

    # --- state ---------------------------------------------------------------------------------------------

    def status_of(self, key: str) -> TorrentStatus:
        return _status(self._tracked_or_error(key).handle.status(_STATUS_FLAGS))

    progress_of = status_of

    def statuses(self) -> list[TorrentStatus]:
        return [_status(tracked.handle.status(_STATUS_FLAGS)) for tracked in self._tracked.values()]

    def keys(self) -> list[str]:
        return list(self._tracked)

    def tracker_errors(self, key: str) -> dict[str, str]:
        """Trackers of the torrent whose last announce failed, with the reason."""
        return dict(self._tracked_or_error(key).tracker_errors)

    def peer_errors(self, key: str) -> dict[str, str]:
        """Endpoint → how the last connection to it failed or ended, for the peers whose connections did (the
        most recent last)."""
        return dict(self._tracked_or_error(key).peer_errors)

    def hash_failures(self, key: str) -> int:
        return self._tracked_or_error(key).hash_failures

    def sha256_checked(self, key: str) -> bool:
        """Whether a finished file of this torrent is proven by libtorrent's own checks: a v2 torrent (SHA-256
        merkle trees under the info hash) whose pieces this session hash-checked, none taken from resume data."""
        tracked = self._tracked_or_error(key)
        return not tracked.restored and tracked.handle.info_hashes().has_v2()

    def finished_files(self, key: str) -> set[str]:
        """Paths (inside the torrent) of files whose every piece is downloaded and passed its hash check."""
        handle = self._tracked_or_error(key).handle
        info = handle.torrent_file()
        if info is None:
            return set()
        layout = info.layout()
        # Piece granularity counts only whole pieces we have, i.e. pieces that passed the hash check.
        progress = handle.file_progress(flags=lt.torrent_handle.piece_granularity)
        finished = set()
        for index in range(layout.num_files()):
            if layout.file_flags(index) & lt.file_storage.flag_pad_file:
                continue
            if progress[index] >= layout.file_size(index):
                finished.add(layout.file_path(index))
        return finished

    def flush(self, key: str, timeout: float = 10.0) -> None:
        """Wait until libtorrent has written every finished piece to its file."""
        self.flush_handle(self._tracked_or_error(key).handle, timeout)

    def flush_handle(self, handle: lt.torrent_handle, timeout: float = 10.0) -> None:
        """flush() for any torrent in this session, tracked or not."""
        done: list[bool] = []

        def on_alert(alert: lt.alert) -> None:
            if isinstance(alert, lt.cache_flushed_alert) and alert.handle == handle:
                done.append(True)

        self.add_listener(on_alert)
        try:
            handle.flush_cache()
            deadline = time.monotonic() + timeout
            while not done and time.monotonic() < deadline:
                self.pump(0.1)
        finally:
            self.remove_listener(on_alert)

    # --- alerts --------------------------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[lt.alert], None]) -> None:
        """Every alert popped by pump() goes to every listener: one queue per session, many readers."""
        self.listeners.append(listener)

    def remove_listener(self, listener: Callable[[lt.alert], None]) -> None:
        self.listeners.remove(listener)

    def add_event_listener(self, listener: Callable[[TorrentEvent], None]) -> None:
        """Torrent events (finished, hash failed, disk error, ...) without libtorrent types."""
        self.event_listeners.append(listener)

    def remove_event_listener(self, listener: Callable[[TorrentEvent], None]) -> None:
        self.event_listeners.remove(listener)

    def pump(self, wait_seconds: float = 0.0, min_wait_seconds: float = 0.0) -> list[lt.alert]:
        """Wait up to wait_seconds for alerts, hand them to the listeners, do periodic upkeep; return them.

        `min_wait_seconds` batches: alerts that arrive sooner are collected until then, so a caller that does
        work after every pump does it at most that often, however busy the transfer (on a busy swarm every
        wakeup takes CPU the peers need for moving bytes)."""
        started = time.monotonic()
        if wait_seconds > 0:
            self.session.wait_for_alert(int(wait_seconds * 1000))
        early = min(min_wait_seconds, wait_seconds) - (time.monotonic() - started)
        if early > 0:
            time.sleep(early)
        alerts = list(self.session.pop_alerts())
        for alert in alerts:
            self._on_alert(alert)
            for listener in list(self.listeners):
                listener(alert)
        self._upkeep()
        return alerts

    def _on_alert(self, alert: lt.alert) -> None:
        if isinstance(alert, lt.listen_succeeded_alert):
            if alert.socket_type == lt.socket_type_t.udp:
                self.udp_endpoints.append(Address(str(alert.address), int(alert.port)))
            return
        if isinstance(alert, lt.session_stats_alert):
            self.dht_nodes = int(alert.values.get("dht.dht_nodes", 0))
            return
        if isinstance(alert, lt.save_resume_data_alert):
            self._write_resume(alert)
            return
        if isinstance(alert, lt.save_resume_data_failed_alert):
            self._pending_saves.discard(_alert_key(alert) or "")
            return
        if not isinstance(alert, lt.torrent_alert):
            return
        key = _alert_key(alert)
        tracked = self._tracked.get(key or "")
        if key is None or tracked is None:
            return
        if isinstance(alert, lt.tracker_error_alert):
            reason = _text(alert.failure_reason()) or alert.error.message()
            tracked.tracker_errors[_text(alert.tracker_url())] = reason
            return
        if isinstance(alert, lt.tracker_reply_alert):
            tracked.tracker_errors.pop(_text(alert.tracker_url()), None)
            return
        if isinstance(alert, (lt.peer_error_alert, lt.peer_disconnected_alert)):
            endpoint = _endpoint_text(alert.endpoint)
            tracked.peer_errors.pop(endpoint, None)
            tracked.peer_errors[endpoint] = alert.error.message()
            while len(tracked.peer_errors) > MAX_PEER_ERRORS:
                tracked.peer_errors.pop(next(iter(tracked.peer_errors)))
            log.debug("%s: connection to %s ended: %s", _text(alert.torrent_name), endpoint, alert.error.message())
            return
        if isinstance(alert, lt.peer_connect_alert):
            log.debug("%s: connecting to %s", _text(alert.torrent_name), _endpoint_text(alert.endpoint))
            return
        name = _text(alert.torrent_name)
        event: TorrentEvent | None = None
        if isinstance(alert, lt.torrent_finished_alert):
            event = TorrentEvent("finished", key, name, "finished")
            self._request_save(key)
            tracked.resave_at = time.monotonic() + RESAVE_AFTER_FINISH_SECONDS
        elif isinstance(alert, lt.torrent_checked_alert):
            event = TorrentEvent("checked", key, name, "checked")
        elif isinstance(alert, lt.file_completed_alert):
            info = tracked.handle.torrent_file()
            path = info.layout().file_path(alert.index) if info is not None else str(alert.index)
            event = TorrentEvent("file_completed", key, name, f"{path} complete", file=path)
        elif isinstance(alert, lt.hash_failed_alert):
            tracked.hash_failures += 1
            event = TorrentEvent("hash_failed", key, name, f"piece {alert.piece_index} failed its hash check",
                                 piece=int(alert.piece_index))  # fmt: skip
        elif isinstance(alert, lt.peer_ban_alert):
            peer = _endpoint_text(alert.endpoint)
            event = TorrentEvent("peer_banned", key, name, f"banned {peer} (sent data that failed hash checks)",
                                 peer=peer)  # fmt: skip
        elif isinstance(alert, (lt.file_error_alert, lt.torrent_error_alert)):
            error = alert.error
            disk_full = error.value() in (errno.ENOSPC, errno.EDQUOT)
            file = _text(alert.filename()) if hasattr(alert, "filename") else None
            reason = "no space left on device" if disk_full else error.message()
            event = TorrentEvent("error", key, name, f"{reason}" + (f" ({file})" if file else ""), file=file,
                                 disk_full=disk_full)  # fmt: skip
        if event is not None:
            for listener in list(self.event_listeners):
                listener(event)

    def _upkeep(self) -> None:
        now = time.monotonic()
        if now >= self._next_dht_stats and self.session.is_dht_running():
            self._next_dht_stats = now + DHT_STATS_SECONDS
            self.session.post_session_stats()
        for key, tracked in list(self._tracked.items()):
            if tracked.resave_at is not None and now >= tracked.resave_at:
                tracked.resave_at = None
                self._request_save(key)
            self._dial(tracked)
        if now >= self._next_queue_review:
            self._next_queue_review = now + REQUEST_QUEUE_REVIEW_SECONDS
            self._review_request_queue()
        if now >= self._next_periodic_save:
            self._next_periodic_save = now + self.resume_interval
            for key, tracked in self._tracked.items():
                if tracked.handle.need_save_resume_data():
                    self._request_save(key)

    def _review_request_queue(self) -> None:
        upload_rate = downloading_peers = 0
        for tracked in self._tracked.values():
            status = tracked.handle.status(_STATUS_FLAGS)
            upload_rate += int(status.upload_payload_rate)
            # The peers it unchokes, not every one that lacks pieces: a seed serving one of ten over a long path
            # would otherwise grant that one a tenth of its rate's worth of requests.
            downloading_peers += max(0, int(status.num_uploads))
        accepted = accepted_requests_per_peer(upload_rate, downloading_peers)
        if accepted != self._accepted_requests:
            self.session.apply_settings({"max_allowed_in_request_queue": accepted})
            self._accepted_requests = accepted

    # --- resume data ---------------------------------------------------------------------------------------

    def _request_save(self, key: str) -> None:
        tracked = self._tracked.get(key)
        if tracked is None or tracked.resume_file is None or not tracked.handle.is_valid():
            return
        # Flushing first makes the pieces the resume data lists actually be on disk if the process dies next.
        tracked.handle.save_resume_data(lt.torrent_handle.save_info_dict | lt.torrent_handle.flush_disk_cache)
        self._pending_saves.add(key)

    def _write_resume(self, alert: lt.save_resume_data_alert) -> None:
        key = _alert_key(alert)
        if key is None:
            return
        self._pending_saves.discard(key)
        tracked = self._tracked.get(key)
        if tracked is None or tracked.resume_file is None:
            return
        try:
            write_resume(tracked.resume_file, alert.params)
        except OSError as error:
            log.warning("cannot write resume data %s: %s", tracked.resume_file, error)
            return
        for listener in list(self.event_listeners):
            listener(TorrentEvent("resume_saved", key, _text(alert.torrent_name), str(tracked.resume_file)))

    def save_resume_data(self, wait_seconds: float = 0.0) -> bool:
        """Ask for the resume data of every torrent; with wait_seconds, pump until all are written.

        Returns whether every requested save was written in time."""
        for key in self._tracked:
            self._request_save(key)
        deadline = time.monotonic() + wait_seconds
        while self._pending_saves and time.monotonic() < deadline:
            self.pump(0.1)
        return not self._pending_saves

    def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Save every torrent's resume data (waiting up to timeout), then stop the session."""
        if not self.save_resume_data(wait_seconds=timeout):
            log.warning("resume data of %d torrents was not saved in %.0f s", len(self._pending_saves), timeout)
        self.session.pause()

    def _tracked_or_error(self, key: str) -> _Tracked:
        tracked = self._tracked.get(key)
        if tracked is None:
            raise SwarmError(f"no torrent {key[:12]} in this session")
        return tracked


def _torrent_info(torrent_data: bytes) -> lt.torrent_info:
    try:
        return lt.torrent_info(torrent_data)
    except RuntimeError as error:
        raise SwarmError(f"cannot read the torrent: {error}") from error


def _key(handle: lt.torrent_handle) -> str:
    hashes = handle.info_hashes()
    return str(hashes.v2) if hashes.has_v2() else str(hashes.v1)


def _alert_key(alert: Any) -> str | None:
    handle = getattr(alert, "handle", None)
    if handle is None or not handle.is_valid():
        return None
    return _key(handle)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _endpoint_text(endpoint: Any) -> str:
    host, port = endpoint[0], endpoint[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


# What TorrentStatus reads beyond the counters libtorrent always fills: torrent_handle::query_name, which is
# 1 << 6 in libtorrent 2.x (the binding exports the other query flags, not this one). The default, every flag,
# also builds the piece bitfield and distributed copies: work a busy fetch loop paid on every call.
_STATUS_FLAGS = 1 << 6


def _status(status: lt.torrent_status) -> TorrentStatus:
    error = status.errc.message() if status.errc.value() else None
    if error and status.errc.value() in (errno.ENOSPC, errno.EDQUOT):
        error = "no space left on device"
    return TorrentStatus(
        name=status.name,
        info_hash=str(status.info_hashes.v2) if status.info_hashes.has_v2() else str(status.info_hashes.v1),
        state=str(status.state).rsplit(".", 1)[-1],
        progress=float(status.progress),
        peers=int(status.num_peers),
        seeds=int(status.num_seeds),
        upload_rate=int(status.upload_rate),
        download_rate=int(status.download_rate),
        total_upload=int(status.all_time_upload),
        total_download=int(status.all_time_download),
        is_seeding=bool(status.is_seeding),
        session_upload=int(status.total_payload_upload),
        session_download=int(status.total_payload_download),
        wanted_bytes=int(status.total_wanted),
        wanted_done=int(status.total_wanted_done),
        known_peers=int(status.list_peers),
        error=error,
    )


__all__ = ["WANTED", "PeerTransfer", "TorrentEvent", "TorrentNode", "TorrentStatus", "session_settings"]
