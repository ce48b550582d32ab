"""`swarm seedbox`: a long-running node that seeds every catalog entry it holds and answers /status, /metrics
(swarm/seedbox_http.py, served from a thread of its own beside the libtorrent loop).

Startup does not re-hash what is known good: an entry whose resume data agrees with the files on disk is
restored from it (libtorrent wrote it after checking every piece); otherwise libtorrent checks the files
present (one hash pass; file sizes alone prove nothing, a killed fetch leaves sparse full-size files) and
serves only the pieces that pass. Chunks fetched while running (--mirror) are also checked against the
manifest's SHA-256 before they are reported as fetched. Resume data is saved periodically, when a torrent
finishes and on SIGTERM; after a SIGKILL the partial files are re-checked at the next start, so nothing that
was written and verified is downloaded again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from swarm import signing
from swarm.address import Address
from swarm.catalog import check_entry, manifest_path, torrent_path
from swarm.config import Settings
from swarm.discovery.keeper import hold_name
from swarm.distribute import open_node
from swarm.errors import SwarmError
from swarm.http_thread import ServerThread
from swarm.manifest import Manifest, chunk_problem, load_manifest
from swarm.seedbox_http import SeedboxView, Tracker, seedbox_app
from swarm.seedbox_metrics import seedbox_registry
from swarm.survey import Surveyor
from swarm.torrent.dht import info_hash_key
from swarm.torrent.presence import Presence
from swarm.torrent.session import TorrentEvent, TorrentStatus

Emit = Callable[[dict[str, Any]], None]
# Seconds between refreshes of the status snapshot the HTTP thread serves.
SNAPSHOT_SECONDS = 1.0
# Seconds the loop gathers alerts before it handles them: a seedbox reacts to nothing faster, and each turn
# costs the same CPU whatever the traffic, which a seed moving 12 MB/s pays per GB (0.1 s before).
LOOP_SECONDS = 0.25


@dataclass
class SeededEntry:
    """One catalog entry this seedbox holds (or mirrors)."""

    name: str
    manifest: Manifest
    torrent_data: bytes
    key: str
    mirror: bool
    # Chunk ids whose files are complete (every piece hash-checked) — and SHA-256-checked when fetched here.
    held: set[str] = field(default_factory=set)
    # Chunk ids fetched by this process that failed the manifest's SHA-256.
    corrupt: set[str] = field(default_factory=set)
    announced_seeding: bool = False
    reported_fetched: bool = False
    # Files complete once the startup check (or resume data) settled: trusted, not hashed again.
    startup_checked: bool = False


class Seedbox:
    def __init__(
        self,
        settings: Settings,
        *,
        mirror: bool = False,
        peers: tuple[str, ...] = (),
        emit: Emit | None = None,
    ) -> None:
        self.settings = settings
        self.mirror = mirror
        # Peers dialled for every entry (no DHT needed: LANs, tests).
        self.peers = peers
        self.emit: Emit = emit or (lambda event: None)
        self.models_dir = settings.models_dir()
        self.entries: dict[str, SeededEntry] = {}
        # Entries refused (bad signature, torrent mismatch) with the manifest mtime they were refused at.
        self.refused: dict[str, float] = {}
        self.node = open_node(settings)
        self.node.add_event_listener(self._on_event)
        # Keeps the seeded entries' names, and this box's torrents, findable on the DHT.
        self.presence = Presence(self.node, settings.announce_interval)
        # The publisher key of this home, if any: the entries it published get their every DHT slot put.
        self.key = signing.load_key(settings.keys_dir)
        self.tracker = Tracker() if settings.tracker else None
        self._snapshot_lock = threading.Lock()
        self._snapshot: list[dict[str, Any]] = []
        # Read at each scrape of /metrics; a registry per seedbox, not the process-wide default.
        self.metrics_registry = seedbox_registry(self.torrent_records)

    # --- catalog ---------------------------------------------------------------------------------------------

    def scan(self) -> None:
        """Add catalog entries not seeded yet (and, without --mirror, ones whose chunks have appeared)."""
        catalog = self.settings.catalog
        if not catalog.is_dir():
            return
        for manifest_file in sorted(catalog.glob("*.json")):
            name = manifest_file.stem
            if name in self.entries:
                continue
            try:
                modified = manifest_file.stat().st_mtime
            except OSError:
                continue
            if self.refused.get(name) == modified:
                continue
            try:
                self._add_entry(name)
            except SwarmError as error:
                self.refused[name] = modified
                self.emit({"event": "refused", "name": name, "reason": str(error), "text": f"refused {name}: {error}"})

    def _add_entry(self, name: str) -> None:
        catalog = self.settings.catalog
        manifest = load_manifest(manifest_path(catalog, name))
        try:
            torrent_data = torrent_path(catalog, name).read_bytes()
        except OSError as error:
            raise SwarmError(f"no torrent beside the manifest: {error.strerror}") from error
        check_entry(manifest, torrent_data)
        files_present = [chunk for chunk in manifest.chunks if (self.models_dir / chunk.file).is_file()]
        # Files of full size may still be sparse (a fetch killed midway), so size says nothing about
        # completeness: resume data that agrees with the disk does, and otherwise libtorrent checks the files.
        if self.mirror:
            key = self.node.fetch(torrent_data, self.models_dir, [chunk.file for chunk in manifest.chunks])
            if len(files_present) < len(manifest.chunks):
                self.emit({"event": "fetching", "name": name, "text": f"fetching {name} (mirror)"})
        elif files_present:
            key = self.node.fetch(torrent_data, self.models_dir, [chunk.file for chunk in files_present])
        else:
            return
        for peer in self.peers:
            self.node.connect_peer(key, peer)
        self.entries[name] = SeededEntry(name, manifest, torrent_data, key, mirror=self.mirror)
        if self.tracker is not None:
            self.tracker.track(tracker_keys(manifest.torrent.info_hash_v1, manifest.torrent.info_hash_v2))

    # --- events ----------------------------------------------------------------------------------------------

    def _on_event(self, event: TorrentEvent) -> None:
        if event.kind in ("error", "hash_failed", "peer_banned"):
            self.emit({"event": event.kind, "name": event.name, "message": event.message,
                       "text": f"{event.name}: {event.message}"})  # fmt: skip

    def _update_entry(self, entry: SeededEntry) -> None:
        status = self.node.status_of(entry.key)
        if status.state in ("checking_files", "checking_resume_data"):
            return
        finished = self.node.finished_files(entry.key)
        # What libtorrent found complete at startup (piece-checked, or resume data it wrote after checking) is
        # trusted; a chunk that completes later was downloaded here and is checked against the manifest.
        trusted = not entry.startup_checked and status.session_download == 0
        entry.startup_checked = True
        for chunk in entry.manifest.chunks:
            if chunk.file not in finished or chunk.id in entry.held:
                continue
            if not trusted:
                # Downloaded by this process: check it against the signed manifest before counting it.
                self.node.flush(entry.key)
                problem = chunk_problem(entry.manifest, chunk, self.models_dir)
                if problem is not None:
                    entry.corrupt.add(chunk.id)
                    self.emit({"event": "error", "name": entry.name, "chunk": chunk.id, "message": problem,
                               "text": f"{entry.name}: chunk {chunk.id} is {problem} after download"})  # fmt: skip
                    continue
            entry.held.add(chunk.id)
        total = len(entry.manifest.chunks)
        if entry.mirror and len(entry.held) == total and not entry.reported_fetched:
            entry.reported_fetched = True
            self.emit(
                {
                    "event": "fetched",
                    "name": entry.name,
                    "chunks": total,
                    "downloaded_bytes": status.session_download,
                    "text": f"fetched {entry.name}: {total} chunks verified, {status.session_download:,} bytes",
                }
            )
        if entry.held and not entry.announced_seeding and (not entry.mirror or entry.reported_fetched):
            entry.announced_seeding = True
            self.emit(
                {
                    "event": "seeding",
                    "name": entry.name,
                    "info_hash": status.info_hash,
                    "chunks": len(entry.held),
                    "chunks_total": total,
                    "text": f"seeding {entry.name} ({len(entry.held)}/{total} chunks)",
                }
            )
            self._hold_name(entry)

    def _hold_name(self, entry: SeededEntry) -> None:
        """Keep the entry findable by name (its record from the catalog), or say why it is not."""
        try:
            held = hold_name(self.node, self.presence, entry.manifest, self.settings, self.key)
            if held is not None and self.tracker is not None:
                self.tracker.track(tracker_keys(None, held.bundle.info_hash))
        except SwarmError as error:
            held = None
            reason = str(error)
        else:
            reason = "the catalog has no name record for it (NAME.record, written by swarm seed)"
        if held is None or held.record is None:
            self.emit({"event": "warning", "name": entry.name, "message": f"not findable by name: {reason}",
                       "text": f"{entry.name}: not findable by name: {reason}"})  # fmt: skip

    # --- status ----------------------------------------------------------------------------------------------

    def _refresh_snapshot(self) -> None:
        records = []
        for entry in self.entries.values():
            records.append(torrent_record(entry, self.node.status_of(entry.key)))
        with self._snapshot_lock:
            self._snapshot = records

    def torrent_records(self) -> list[dict[str, Any]]:
        """The latest snapshot of GET /status's torrents (called from the HTTP thread)."""
        with self._snapshot_lock:
            return list(self._snapshot)

    def status_document(self) -> dict[str, Any]:
        torrents = self.torrent_records()
        return {"version": 1, "listen_port": self.node.listen_port, "mirror": self.mirror, "torrents": torrents}

    # --- main loop -------------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self.surveyor = Surveyor(self.settings, [self._own_dht_address(), *self.settings.bootstrap], self._manifests)
        server = self._start_http()
        self.surveyor.start()
        try:
            self.emit(
                {
                    "event": "listening",
                    "torrent_port": self.node.listen_port,
                    "dht_port": self.node.listen_port,
                    "status_port": server.address.port,
                    "text": f"seedbox: BitTorrent and DHT on port {self.node.listen_port}, "
                    f"status on http://{server.address}/status",
                }
            )
            next_scan = 0.0
            next_snapshot = 0.0
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_scan:
                    self.scan()
                    next_scan = now + self.settings.catalog_rescan_interval
                self.node.pump(LOOP_SECONDS, min_wait_seconds=LOOP_SECONDS)
                for entry in list(self.entries.values()):
                    self._update_entry(entry)
                self.presence.tick()
                if time.monotonic() >= next_snapshot:
                    self._refresh_snapshot()
                    next_snapshot = time.monotonic() + SNAPSHOT_SECONDS
        finally:
            server.stop()
            self.surveyor.stop()
            self.presence.close()
            self.node.close()
            self.emit({"event": "stopped", "text": "seedbox stopped; resume data saved"})

    def _own_dht_address(self) -> Address:
        """Where this box's own DHT answers, for its survey node: loopback when it listens there."""
        endpoints = self.node.udp_endpoints
        return next((endpoint for endpoint in endpoints if endpoint.is_loopback), endpoints[0])

    def _manifests(self) -> list[Manifest]:
        """The models the page shows (called from the survey thread)."""
        return [entry.manifest for entry in list(self.entries.values())]

    def _start_http(self) -> ServerThread:
        view = SeedboxView(
            swarm_document=lambda: self.surveyor.document,
            status_document=self.status_document,
            registry=self.metrics_registry,
            tracker=self.tracker,
            torrent_port=self.node.listen_port,
        )
        try:
            server = ServerThread(seedbox_app(view), self.settings.status_listen, "status")
            server.start()
        except SwarmError:
            self.node.close()
            raise
        return server


def tracker_keys(info_hash_v1: str | None, info_hash_v2: str | None) -> list[bytes]:
    """What clients announce a torrent under: its v1 hash, and its v2 hash truncated to 20 bytes."""
    return [info_hash_key(item) for item in (info_hash_v1, info_hash_v2) if item]


def torrent_record(entry: SeededEntry, status: TorrentStatus) -> dict[str, Any]:
    """One torrent in GET /status."""
    return {
        "name": entry.name,
        "info_hash": status.info_hash,
        "state": status.state,
        "progress": round(status.progress, 6),
        "peers": status.peers,
        "seeds": status.seeds,
        "upload_rate": status.upload_rate,
        "download_rate": status.download_rate,
        "bytes_uploaded": status.total_upload,
        "bytes_downloaded": status.total_download,
        "session_bytes_uploaded": status.session_upload,
        "session_bytes_downloaded": status.session_download,
        "chunks_held": sorted(entry.held),
        "chunks_total": len(entry.manifest.chunks),
        "mirror": entry.mirror,
        "error": status.error,
    }


__all__ = ["Seedbox", "SeededEntry", "torrent_record"]
