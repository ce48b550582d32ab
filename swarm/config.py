"""The one settings object: every default lives here; environment variables and CLI flags override it."""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarm.address import Address, parse_all
from swarm.errors import SwarmError

TORRENT_FORMATS = ("v2", "hybrid", "v1")
DEFAULT_TORRENT_LISTEN = Address("0.0.0.0", 6881)
DEFAULT_COMPUTE_LISTEN = Address("0.0.0.0", 5555)
DEFAULT_STATUS_LISTEN = Address("0.0.0.0", 8700)
# An API answers on this machine only until the user says otherwise (and, across the network, sets an API key).
DEFAULT_SERVE_LISTEN = Address("127.0.0.1", 8000)


def _parse_bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.replace(";", ",").split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    """Defaults for every command. Paths left as None derive from `home`."""

    home: Path = field(default_factory=lambda: Path("~/.swarm").expanduser())
    catalog_dir: Path | None = None
    data_dir: Path | None = None
    # BitTorrent and DHT listen address; port 0 lets the OS pick one. A taken port is followed by the next ones.
    torrent_listen: Address = DEFAULT_TORRENT_LISTEN
    # ZeroMQ ROUTER address of a compute peer (a taken port is followed by the next ones, like BitTorrent's).
    compute_listen: Address = DEFAULT_COMPUTE_LISTEN
    # HTTP address of a seedbox: /status, /metrics and the BitTorrent tracker's /announce.
    status_listen: Address = DEFAULT_STATUS_LISTEN
    # HTTP address of a compute peer's Prometheus metrics (swarm join); None: not served.
    metrics_listen: Address | None = None
    # Any running swarm node's BitTorrent/DHT address: one is enough to find everything else.
    bootstrap: tuple[Address, ...] = ()
    # Tracker announce URLs added to every torrent this node adds (besides those the torrent names itself).
    trackers: tuple[str, ...] = ()
    # A seedbox answers BitTorrent tracker announces on its status address.
    tracker: bool = True
    # Local service discovery (BEP 14): find peers of the same torrents on the LAN by multicast.
    lsd: bool = True
    # Peer exchange (BEP 11): peers tell each other about the other peers they know.
    pex: bool = True
    torrent_format: str = "v2"
    # Torrents made by `swarm seed` are private (BEP 27): peers find each other only through trackers and peers
    # given to them, never the DHT, PEX or LSD (for a private swarm whose models must not be seen outside it).
    private_torrent: bool = False
    blocks_per_chunk: int = 1
    # 0 picks a piece size from the model size (see torrent.create.choose_piece_length).
    piece_length: int = 0
    # Seconds a command waits on the network before it gives up with a message.
    network_timeout: float = 30.0
    # Seconds between periodic resume-data saves.
    resume_interval: float = 30.0
    # Session-wide BitTorrent rate limits in bytes/s; 0 means unlimited.
    upload_limit: int = 0
    download_limit: int = 0
    # libtorrent exempts loopback/LAN peers from rate limits; True applies the limits to them too (benchmarks).
    limit_local_peers: bool = False
    # BitTorrent over uTP as well as TCP. uTP yields to other traffic on congested home links, but costs much more
    # CPU per byte than TCP; peers of a model swarm on servers and LANs move bytes cheaper over TCP alone.
    utp: bool = False
    # Re-read and SHA-256 every fetched chunk even when libtorrent's v2 merkle checks already proved it.
    full_verify: bool = False
    # Seconds between a seedbox's rescans of the catalog for new entries.
    catalog_rescan_interval: float = 30.0
    # Compute peers (swarm join). Seconds a session may stay idle before its KV cache is freed.
    session_idle_timeout: float = 300.0
    # Sessions one peer keeps open at once; more are refused with "busy".
    max_sessions: int = 16
    # Longest session (prompt + new tokens) one peer accepts.
    max_session_tokens: int = 4096
    # KV-cache tokens all open sessions of one peer may reserve together.
    max_cached_tokens: int = 65536
    # Sequences in one step.
    max_batch: int = 16
    # Bytes of KV cache all of a peer's sessions may reserve together (None: only max_cached_tokens bounds it).
    kv_memory: int | None = None
    # Most decode steps of different sessions a peer runs as one batched forward (1: each step alone).
    max_step_batch: int = 16
    # New sessions one source address may open on a peer per minute, after a burst (rate_limited beyond; 0: off).
    # Generous: every client behind one address, and a peer forwarding its clients' sessions, count as one source.
    sessions_per_minute: float = 600.0
    session_burst: int = 120
    # Seconds a client waits for the reply to a routed compute request.
    request_timeout: float = 30.0
    # Seconds a peer waits to connect to the next hop (or reply_to) before failing the request as unreachable.
    forward_connect_timeout: float = 2.0
    # Seconds without an answered ZeroMQ heartbeat after which a connection to a peer counts as lost (a killed
    # peer's connection resets at once); clients and peers then route around it.
    liveness_timeout: float = 2.0
    # Seconds a client keeps retrying, with growing pauses, while every route needs a peer that is busy.
    busy_retry_seconds: float = 15.0
    # Seconds a peer keeps checking for the next step without sleeping after it handled one (0: always sleep).
    # Waking from sleep costs milliseconds on virtual machines, whose idle CPUs the host parks; checking costs
    # one CPU core for this long after every step (yielded to any other runnable thread).
    busy_poll_seconds: float = 0.0
    # Share of the available RAM a peer budgets for weights when --memory is not given.
    memory_fraction: float = 0.5
    # Seconds between a compute peer's DHT announcements.
    announce_interval: float = 60.0
    # Mean seconds between a peer's looks at the swarm to decide whether to move to other blocks (0: never move;
    # a peer given --blocks never moves).
    rebalance_interval: float = 120.0
    # Compute client (swarm run). Host peers send results to; empty: the address this machine reaches the
    # route's last peer from.
    client_reply_host: str = ""
    # Tokens `swarm run` generates when --max-new-tokens is not given.
    max_new_tokens: int = 64
    # Seconds `swarm run` waits for DHT answers when looking for compute peers.
    discovery_timeout: float = 30.0
    # Seconds between re-puts of a model's DHT name records and holder announcements (both expire otherwise).
    dht_refresh_interval: float = 600.0
    # Accept a model name whose DHT record is signed by another key than the one pinned on first use.
    accept_new_key: bool = False
    # `swarm serve`: its HTTP address (a taken port is an error: applications are pointed at a fixed address).
    serve_listen: Address = DEFAULT_SERVE_LISTEN
    # The key clients must send as "Authorization: Bearer KEY"; empty: no key is asked for.
    api_key: str = ""
    # Generations `swarm serve` runs at once (each its own swarm session); more are refused with 429.
    serve_max_generations: int = 64
    # Seconds between `swarm serve`'s looks in the DHT for a model's compute peers (joined or gone since).
    peer_rediscovery_interval: float = 30.0
    # Share of generation steps a client checks by re-running one hop on other peers serving its blocks (0: none).
    verify_fraction: float = 0.0
    # A small local model (Hugging Face directory) sharing the model's tokenizer that drafts tokens for speculative
    # decoding (swarm.client.speculative); None: plain decoding.
    draft: Path | None = None
    # A file holding a private swarm's secret: only members connect (compute traffic is encrypted either way).
    swarm_secret: Path | None = None
    # CurveZMQ on every compute connection (False only to measure what it costs, or to reach nodes that do not).
    encrypt: bool = True
    # Member keys (one per line) a private swarm's peer admits; None: every member.
    allow_file: Path | None = None

    @property
    def catalog(self) -> Path:
        return self.catalog_dir if self.catalog_dir is not None else self.home / "torrents"

    @property
    def data(self) -> Path:
        return self.data_dir if self.data_dir is not None else self.home / "data"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def resume_dir(self) -> Path:
        """libtorrent resume data, one DATA/resume/<infohash>.resume file per torrent."""
        return self.data / "resume"

    def models_dir(self) -> Path:
        """Parent of every model's chunk directory: chunk files live in models_dir()/NAME/."""
        return self.data / "models"

    def with_overrides(self, **overrides: Any) -> Settings:
        """Apply CLI flags; a value of None means the flag was not given. Addresses are parsed here."""
        given = {key: value for key, value in overrides.items() if value is not None and value != ()}
        for key in ("home", "catalog_dir", "data_dir", "swarm_secret", "allow_file"):
            if key in given:
                given[key] = Path(given[key]).expanduser()
        for key, what in ADDRESS_FIELDS.items():
            if isinstance(given.get(key), str):
                given[key] = Address.parse(given[key], what)
        if "bootstrap" in given:
            given["bootstrap"] = tuple(parse_all(given["bootstrap"], "bootstrap node"))
        if "trackers" in given:
            given["trackers"] = check_trackers(given["trackers"])
        return dataclasses.replace(self, **given)


def check_trackers(urls: Iterable[str]) -> tuple[str, ...]:
    """Tracker announce URLs, each http(s):// or udp:// with a host; SwarmError naming the first that is not."""
    checked = []
    for url in urls:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https", "udp") or not parsed.hostname:
            raise SwarmError(f"bad tracker URL {url[:80]!r}: use http://HOST:PORT/announce or udp://HOST:PORT")
        checked.append(url)
    return tuple(checked)


# Address fields and how errors name them.
ADDRESS_FIELDS = {
    "torrent_listen": "BitTorrent listen address",
    "compute_listen": "compute listen address",
    "status_listen": "status address",
    "metrics_listen": "metrics address",
    "serve_listen": "serve listen address",
}


# Environment variable → settings field, with the parser for its text.
ENVIRONMENT: dict[str, tuple[str, Any]] = {
    "SWARM_HOME": ("home", lambda text: Path(text).expanduser()),
    "SWARM_CATALOG": ("catalog_dir", lambda text: Path(text).expanduser()),
    "SWARM_DATA": ("data_dir", lambda text: Path(text).expanduser()),
    "SWARM_TORRENT_LISTEN": ("torrent_listen", lambda text: Address.parse(text, "SWARM_TORRENT_LISTEN")),
    "SWARM_LISTEN": ("compute_listen", lambda text: Address.parse(text, "SWARM_LISTEN")),
    "SWARM_STATUS_LISTEN": ("status_listen", lambda text: Address.parse(text, "SWARM_STATUS_LISTEN")),
    "SWARM_METRICS_LISTEN": ("metrics_listen", lambda text: Address.parse(text, "SWARM_METRICS_LISTEN")),
    "SWARM_BOOTSTRAP": ("bootstrap", lambda text: tuple(parse_all(_split_list(text), "SWARM_BOOTSTRAP"))),
    "SWARM_TRACKERS": ("trackers", lambda text: check_trackers(_split_list(text))),
    "SWARM_TRACKER": ("tracker", _parse_bool),
    "SWARM_LSD": ("lsd", _parse_bool),
    "SWARM_PEX": ("pex", _parse_bool),
    "SWARM_TORRENT_FORMAT": ("torrent_format", str),
    "SWARM_NETWORK_TIMEOUT": ("network_timeout", float),
    "SWARM_RESUME_INTERVAL": ("resume_interval", float),
    "SWARM_UPLOAD_LIMIT": ("upload_limit", int),
    "SWARM_DOWNLOAD_LIMIT": ("download_limit", int),
    "SWARM_LIMIT_LOCAL_PEERS": ("limit_local_peers", _parse_bool),
    "SWARM_UTP": ("utp", _parse_bool),
    "SWARM_FULL_VERIFY": ("full_verify", _parse_bool),
    "SWARM_CATALOG_RESCAN": ("catalog_rescan_interval", float),
    "SWARM_SESSION_IDLE_TIMEOUT": ("session_idle_timeout", float),
    "SWARM_MAX_SESSIONS": ("max_sessions", int),
    "SWARM_MAX_SESSION_TOKENS": ("max_session_tokens", int),
    "SWARM_MAX_CACHED_TOKENS": ("max_cached_tokens", int),
    "SWARM_MAX_BATCH": ("max_batch", int),
    "SWARM_MAX_STEP_BATCH": ("max_step_batch", int),
    "SWARM_KV_MEMORY": ("kv_memory", lambda text: _byte_size(text)),
    "SWARM_SESSIONS_PER_MINUTE": ("sessions_per_minute", float),
    "SWARM_SESSION_BURST": ("session_burst", int),
    "SWARM_REQUEST_TIMEOUT": ("request_timeout", float),
    "SWARM_LIVENESS_TIMEOUT": ("liveness_timeout", float),
    "SWARM_BUSY_RETRY": ("busy_retry_seconds", float),
    "SWARM_BUSY_POLL": ("busy_poll_seconds", float),
    "SWARM_REBALANCE_INTERVAL": ("rebalance_interval", float),
    "SWARM_MEMORY_FRACTION": ("memory_fraction", float),
    "SWARM_CLIENT_REPLY_HOST": ("client_reply_host", str),
    "SWARM_DHT_REFRESH": ("dht_refresh_interval", float),
    "SWARM_ACCEPT_NEW_KEY": ("accept_new_key", _parse_bool),
    "SWARM_SERVE_LISTEN": ("serve_listen", lambda text: Address.parse(text, "SWARM_SERVE_LISTEN")),
    "SWARM_API_KEY": ("api_key", str),
    "SWARM_SERVE_MAX_GENERATIONS": ("serve_max_generations", int),
    "SWARM_PEER_REDISCOVERY": ("peer_rediscovery_interval", float),
    "SWARM_VERIFY": ("verify_fraction", float),
    "SWARM_DRAFT": ("draft", lambda text: Path(text).expanduser()),
    "SWARM_SECRET_FILE": ("swarm_secret", lambda text: Path(text).expanduser()),
    "SWARM_ENCRYPT": ("encrypt", _parse_bool),
    "SWARM_PRIVATE_TORRENT": ("private_torrent", _parse_bool),
    "SWARM_ALLOW_FILE": ("allow_file", lambda text: Path(text).expanduser()),
}


def _byte_size(text: str) -> int:
    from swarm.peer.selection import parse_byte_size

    return parse_byte_size(text)


def load_settings(environment: Mapping[str, str] | None = None) -> Settings:
    """Defaults, overridden by SWARM_* environment variables."""
    environment = os.environ if environment is None else environment
    values: dict[str, Any] = {}
    for variable, (field_name, parse) in ENVIRONMENT.items():
        text = environment.get(variable)
        if text:
            values[field_name] = parse(text)
    return Settings(**values)
