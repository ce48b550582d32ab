"""One libtorrent session per process: its settings, the torrents it seeds or fetches, its alerts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import libtorrent as lt

from swarm.config import parse_host_port
from swarm.errors import SwarmError

USER_AGENT = "swarm/0.1"


def session_settings(listen: str, bootstrap: tuple[str, ...], dht: bool = True) -> dict[str, Any]:
    """Settings for a swarm node: DHT on, no LAN/NAT discovery, many peers per IP (loopback swarms)."""
    host, port = parse_host_port(listen)
    interface = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return {
        "listen_interfaces": interface,
        "user_agent": USER_AGENT,
        "enable_dht": dht,
        "dht_bootstrap_nodes": ",".join(bootstrap),
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        # Several nodes on one machine (tests, the demo) share an address: let them all connect.
        "allow_multiple_connections_per_ip": True,
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_prefer_verified_node_ids": False,
        "alert_mask": int(
            lt.alert_category.error
            | lt.alert_category.status
            | lt.alert_category.storage
            | lt.alert_category.dht
            | lt.alert_category.dht_operation
            | lt.alert_category.piece_progress
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


class TorrentNode:
    """A libtorrent session with the swarm's settings."""

    def __init__(self, listen: str, bootstrap: tuple[str, ...] = (), dht: bool = True) -> None:
        try:
            # The binding takes a plain dict where its stubs say settings_pack.
            self.session = lt.session(cast("lt.settings_pack", session_settings(listen, bootstrap, dht)))
        except (RuntimeError, ValueError) as error:
            raise SwarmError(f"cannot start a BitTorrent session on {listen}: {error}") from error
        for node in bootstrap:
            # Nodes named only in dht_bootstrap_nodes never enter the routing table on loopback.
            self.session.add_dht_node(parse_host_port(node))
        self.handles: dict[str, lt.torrent_handle] = {}
        self.listeners: list[Callable[[lt.alert], None]] = []

    @property
    def listen_port(self) -> int:
        return int(self.session.listen_port())

    def seed(self, torrent_data: bytes, save_path: Path) -> str:
        """Seed files already on disk and trusted (just written and hashed): no recheck up front."""
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(torrent_data)
        params.save_path = str(save_path)
        params.flags |= lt.torrent_flags.seed_mode
        params.flags &= ~lt.torrent_flags.auto_managed
        params.flags &= ~lt.torrent_flags.paused
        handle = self.session.add_torrent(params)
        key = _key(handle)
        self.handles[key] = handle
        return key

    def add_peer(self, key: str, address: str) -> None:
        self.handles[key].connect_peer(parse_host_port(address))

    def statuses(self) -> list[TorrentStatus]:
        return [_status(handle.status()) for handle in self.handles.values()]

    def add_listener(self, listener: Callable[[lt.alert], None]) -> None:
        """Every alert popped by pump() goes to every listener: one queue per session, many readers."""
        self.listeners.append(listener)

    def remove_listener(self, listener: Callable[[lt.alert], None]) -> None:
        self.listeners.remove(listener)

    def pump(self, wait_seconds: float = 0.0) -> list[lt.alert]:
        """Wait up to wait_seconds for alerts, hand them to the listeners, and return them."""
        if wait_seconds > 0:
            self.session.wait_for_alert(int(wait_seconds * 1000))
        alerts = list(self.session.pop_alerts())
        for alert in alerts:
            for listener in list(self.listeners):
                listener(alert)
        return alerts

    def close(self) -> None:
        self.session.pause()


def _key(handle: lt.torrent_handle) -> str:
    hashes = handle.info_hashes()
    return str(hashes.v2) if hashes.has_v2() else str(hashes.v1)


def _status(status: lt.torrent_status) -> TorrentStatus:
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
    )
