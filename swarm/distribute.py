"""Distribution: which chunks a node needs (pure selection), and fetching them verified over BitTorrent.

Selection functions take a manifest and return chunks in manifest order, meta first; `fetch_chunks` brings
exactly those chunk files onto disk through a TorrentNode, checks each against the manifest's SHA-256, and
leaves the torrent in the node so it goes on seeding them.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from swarm.address import parse_all
from swarm.catalog import check_entry
from swarm.config import Settings
from swarm.discovery.resolve import resolve_model
from swarm.errors import SwarmError
from swarm.manifest import Chunk, Manifest, chunk_problem
from swarm.torrent.session import TorrentEvent, TorrentNode, TorrentStatus

# How often a fetch reports progress lines (--json) at most.
REPORT_SECONDS = 1.0
# Shortest time between two turns of a fetch loop (status, progress), however many alerts arrive.
LOOP_SECONDS = 0.1
# How often a fetch with no peer at all asks the DHT, trackers and LAN again.
REANNOUNCE_SECONDS = 3.0
# libtorrent states in which no bytes arrive but work is being done (hashing files already on disk).
BUSY_STATES = ("checking_files", "checking_resume_data", "allocating")
# Peers a stalled fetch's message names (of those it got bytes from, and of those whose connections ended).
MAX_NAMED_PEERS = 4


# --- selection (pure) ---------------------------------------------------------------------------------------


def _in_manifest_order(manifest: Manifest, ids: Iterable[str]) -> list[Chunk]:
    wanted = set(ids)
    return [chunk for chunk in manifest.chunks if chunk.id in wanted]


def _with_requirements(manifest: Manifest, ids: Iterable[str]) -> set[str]:
    """The ids plus everything they require, transitively; a requirement missing from the manifest is an error."""
    known = {chunk.id: chunk for chunk in manifest.chunks}
    result: set[str] = set()
    pending = list(ids)
    while pending:
        chunk_id = pending.pop()
        if chunk_id in result:
            continue
        if chunk_id not in known:
            raise SwarmError(f"manifest {manifest.name} has no chunk {chunk_id!r}")
        result.add(chunk_id)
        pending.extend(known[chunk_id].requires)
    return result


def _meta_ids(manifest: Manifest) -> set[str]:
    return {chunk.id for chunk in manifest.chunks if chunk.kind == "meta"}


def chunks_for_blocks(manifest: Manifest, start: int, end: int) -> list[Chunk]:
    """Meta plus every blocks chunk overlapping [start, end); a model kept whole gives meta plus its full chunk."""
    full = [chunk.id for chunk in manifest.chunks if chunk.kind == "full"]
    if start < 0 or end <= start or (manifest.num_blocks and end > manifest.num_blocks):
        raise SwarmError(f"block range {start}:{end} is not inside {manifest.name}'s blocks 0:{manifest.num_blocks}")
    if full:
        return _in_manifest_order(manifest, _with_requirements(manifest, [*_meta_ids(manifest), *full]))
    if not manifest.num_blocks:
        raise SwarmError(f"{manifest.name} has no blocks")
    overlapping = [
        chunk.id
        for chunk in manifest.chunks
        if chunk.kind == "blocks" and chunk.blocks is not None and chunk.blocks[0] < end and start < chunk.blocks[1]
    ]
    covered = {
        index for chunk in _in_manifest_order(manifest, overlapping) if chunk.blocks for index in range(*chunk.blocks)
    }
    missing = [index for index in range(start, end) if index not in covered]
    if missing:
        raise SwarmError(f"manifest {manifest.name} has no chunk for blocks {missing[0]}..{missing[-1]}")
    return _in_manifest_order(manifest, _with_requirements(manifest, [*_meta_ids(manifest), *overlapping]))


def chunks_for_client(manifest: Manifest) -> list[Chunk]:
    """What a client runs locally: meta, embeddings and head (and what they require); whole models: full."""
    ids = [chunk.id for chunk in manifest.chunks if chunk.kind in ("meta", "embed", "head")]
    if not any(chunk.kind in ("embed", "head") for chunk in manifest.chunks):
        ids += [chunk.id for chunk in manifest.chunks if chunk.kind == "full"]
    return _in_manifest_order(manifest, _with_requirements(manifest, ids))


def chunks_by_ids(manifest: Manifest, ids: Iterable[str]) -> list[Chunk]:
    """The named chunks, their requirements and meta; an unknown id is an error."""
    return _in_manifest_order(manifest, _with_requirements(manifest, [*_meta_ids(manifest), *ids]))


def all_chunks(manifest: Manifest) -> list[Chunk]:
    return list(manifest.chunks)


def parse_block_range(text: str) -> tuple[int, int]:
    """'A:B' → (A, B) with 0 <= A < B, for --blocks of `swarm fetch` and `swarm join`."""
    start_text, separator, end_text = text.partition(":")
    if not separator or not start_text.strip().isdigit() or not end_text.strip().isdigit():
        raise SwarmError(f"--blocks takes START:END (e.g. 0:4), got {text!r}")
    start, end = int(start_text), int(end_text)
    if end <= start:
        raise SwarmError(f"--blocks {text}: END must be greater than START")
    return start, end


def parse_chunk_ids(text: str) -> list[str]:
    ids = [item.strip() for item in text.split(",") if item.strip()]
    if not ids:
        raise SwarmError("--chunks takes a comma-separated list of chunk ids")
    return ids


def select_chunks(manifest: Manifest, blocks: str | None, chunk_ids: str | None) -> list[Chunk]:
    """What `swarm fetch` fetches: --blocks, --chunks (both: the union), or the whole model."""
    if blocks is None and chunk_ids is None:
        return all_chunks(manifest)
    ids: set[str] = set()
    if blocks is not None:
        ids.update(chunk.id for chunk in chunks_for_blocks(manifest, *parse_block_range(blocks)))
    if chunk_ids is not None:
        ids.update(chunk.id for chunk in chunks_by_ids(manifest, parse_chunk_ids(chunk_ids)))
    return _in_manifest_order(manifest, ids)


def disk_space_problem(needed_bytes: int, free: int | None) -> str | None:
    """Why `needed_bytes` will not fit in `free` bytes (None: unknown, let the writes tell), or None."""
    if free is None or needed_bytes <= free:
        return None
    return f"no space left on device: the chunks need {needed_bytes:,} bytes and {free:,} are free"


def free_bytes(directory: Path) -> int | None:
    """Free bytes on the file system that holds (or will hold) directory."""
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


# --- progress -------------------------------------------------------------------------------------------------


class TransferReporter(Protocol):
    def started(self, name: str, chunks: Sequence[Chunk], already: Sequence[str]) -> None: ...
    def update(self, status: TorrentStatus, peers: int) -> None: ...
    def event(self, event: TorrentEvent) -> None: ...
    def finished(self, summary: dict[str, Any]) -> None: ...


class SilentTransfer:
    def started(self, name: str, chunks: Sequence[Chunk], already: Sequence[str]) -> None:
        pass

    def update(self, status: TorrentStatus, peers: int) -> None:
        pass

    def event(self, event: TorrentEvent) -> None:
        pass

    def finished(self, summary: dict[str, Any]) -> None:
        pass


def _print_line(line: str) -> None:
    print(line, flush=True)


class JsonTransfer:
    """One JSON object per line on stdout: started, progress (at most once a second), events, done."""

    def __init__(self, emit: Callable[[str], None] | None = None) -> None:
        self.emit = emit or _print_line
        self.last_report = 0.0

    def _write(self, record: dict[str, Any]) -> None:
        self.emit(json.dumps(record))

    def started(self, name: str, chunks: Sequence[Chunk], already: Sequence[str]) -> None:
        self._write(
            {
                "event": "fetching",
                "name": name,
                "chunks": [chunk.id for chunk in chunks],
                "bytes": sum(chunk.size for chunk in chunks),
                "already_verified": list(already),
            }
        )

    def update(self, status: TorrentStatus, peers: int) -> None:
        now = time.monotonic()
        if now - self.last_report < REPORT_SECONDS:
            return
        self.last_report = now
        self._write(
            {
                "event": "progress",
                "state": status.state,
                "bytes_done": status.wanted_done,
                "bytes_wanted": status.wanted_bytes,
                "download_rate": status.download_rate,
                "upload_rate": status.upload_rate,
                "peers": peers,
            }
        )

    def event(self, event: TorrentEvent) -> None:
        if event.kind in ("hash_failed", "peer_banned", "error", "file_completed"):
            record: dict[str, Any] = {"event": event.kind, "message": event.message}
            for field_name in ("piece", "file", "peer"):
                value = getattr(event, field_name)
                if value is not None:
                    record[field_name] = value
            self._write(record)

    def finished(self, summary: dict[str, Any]) -> None:
        # The caller reports the verified result; nothing more to say here.
        pass


# --- fetching -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchResult:
    key: str
    chunks: tuple[str, ...]
    already_verified: tuple[str, ...]
    seconds: float
    downloaded_bytes: int
    hash_failures: int
    # Peer address → payload bytes received from it.
    sources: dict[str, int]

    def summary(self) -> dict[str, Any]:
        return {
            "chunks": list(self.chunks),
            "already_verified": list(self.already_verified),
            "seconds": round(self.seconds, 3),
            "downloaded_bytes": self.downloaded_bytes,
            "hash_failures": self.hash_failures,
            "sources": self.sources,
        }


class ChunkFetch:
    """A fetch in progress, driven by whoever pumps the node (fetch_chunks below, or the seedbox loop)."""

    def __init__(
        self,
        node: TorrentNode,
        manifest: Manifest,
        torrent_data: bytes,
        chunks: Sequence[Chunk],
        models_dir: Path,
        *,
        peers: Iterable[str] = (),
        resume_dir: Path | None = None,
        full_verify: bool = False,
    ) -> None:
        check_entry(manifest, torrent_data)
        self.node = node
        self.manifest = manifest
        self.chunks = list(chunks)
        self.models_dir = models_dir
        self.full_verify = full_verify
        self.started_at = time.monotonic()
        self.errors: list[TorrentEvent] = []
        # Verified chunks already on disk are not fetched again: libtorrent finds their pieces when it checks
        # the files (or from resume data), and they need no second SHA-256 pass at the end.
        self.already = [chunk.id for chunk in self.chunks if chunk_problem(manifest, chunk, models_dir) is None]
        needed = sum(chunk.size for chunk in self.chunks if chunk.id not in self.already)
        problem = disk_space_problem(needed, free_bytes(models_dir))
        if problem:
            raise SwarmError(f"cannot fetch {manifest.name} into {models_dir}: {problem}")
        self.key = node.fetch(
            torrent_data,
            models_dir,
            [chunk.file for chunk in self.chunks],
            # The bootstrap nodes are BitTorrent peers too (their DHT port is their BitTorrent port): in a small swarm
            # the node a user named is often the one that holds the chunks, found this way before any DHT lookup.
            peers=[*peers, *(str(address) for address in node.bootstrap)],
            resume_dir=resume_dir if resume_dir is not None else models_dir.parent / "resume",
        )
        self.verified: dict[str, str | None] = {chunk_id: None for chunk_id in self.already}
        # Alerts are only dispatched by pump(), so no event of this torrent can have been missed.
        node.add_event_listener(self._on_event)

    def _on_event(self, event: TorrentEvent) -> None:
        if event.key == self.key and event.kind == "error":
            self.errors.append(event)

    def close(self) -> None:
        if self._on_event in self.node.event_listeners:
            self.node.remove_event_listener(self._on_event)

    def pending(self) -> list[Chunk]:
        """Chunks not yet downloaded and hash-checked by libtorrent."""
        finished = self.node.finished_files(self.key)
        return [chunk for chunk in self.chunks if chunk.id not in self.verified and chunk.file not in finished]

    def failure(self, status: TorrentStatus | None = None) -> str | None:
        """A reason the fetch cannot go on (disk full, write error), or None; `status`: one just read."""
        status = status or self.node.status_of(self.key)
        if self.errors:
            event = self.errors[-1]
            return f"cannot write {self.manifest.name}'s chunks in {self.models_dir}: {event.message}"
        if status.error:
            return f"cannot fetch {self.manifest.name}: {status.error}"
        return None

    def verify(self) -> dict[str, str]:
        """Verify every chunk not verified yet; returns {chunk id: problem} for those that fail.

        A v2 torrent's pieces are checked by libtorrent against SHA-256 merkle trees whose roots are in the
        info dict, and the signed manifest names that info hash: a file whose every piece passed those checks
        in this session is proven, and reading it all again for the manifest's flat SHA-256 would double the
        hashing of every fetch. v1 torrents (SHA-1 pieces), pieces taken from resume data, and `full_verify`
        get the full SHA-256 pass against the manifest."""
        self.node.flush(self.key)
        checked_by_libtorrent = not self.full_verify and self.node.sha256_checked(self.key)
        finished = self.node.finished_files(self.key) if checked_by_libtorrent else set()
        problems = {}
        for chunk in self.chunks:
            if chunk.id in self.verified:
                continue
            problem = chunk_problem(self.manifest, chunk, self.models_dir, check_hash=chunk.file not in finished)
            if problem is None:
                self.verified[chunk.id] = None
            else:
                problems[chunk.id] = problem
        return problems

    def result(self) -> FetchResult:
        status = self.node.status_of(self.key)
        return FetchResult(
            key=self.key,
            chunks=tuple(chunk.id for chunk in self.chunks),
            already_verified=tuple(self.already),
            seconds=time.monotonic() - self.started_at,
            downloaded_bytes=status.session_download,
            hash_failures=self.node.hash_failures(self.key),
            sources={peer.address: peer.downloaded for peer in self.node.peer_transfers(self.key) if peer.downloaded},
        )


def stall_message(node: TorrentNode, fetch: ChunkFetch, status: TorrentStatus, timeout: float) -> str:
    """Why a fetch that made no progress for `timeout` seconds gave up: what is missing, the peers it got bytes
    from, those it knows of, how the last connections ended, the DHT and trackers."""
    seen = node.peer_transfers(fetch.key)
    missing = ", ".join(chunk.id for chunk in fetch.pending())
    sources = ", ".join(f"{peer.address} ({peer.downloaded:,} bytes)" for peer in seen[:MAX_NAMED_PEERS])
    text = f"fetching {fetch.manifest.name} made no progress for {timeout:g} s: chunks {missing} not fetched; "
    text += f"{len(seen)} peer{'s' if len(seen) != 1 else ''} seen" + (f": {sources}" if sources else "")
    if status.known_peers:
        text += f" ({status.known_peers} known)"
    errors = list(node.peer_errors(fetch.key).items())[-MAX_NAMED_PEERS:]
    if errors:
        text += "; last connection errors: " + ", ".join(f"{endpoint}: {why}" for endpoint, why in errors)
    if node.session.is_dht_running():
        text += f"; {node.dht_nodes} DHT node(s) known"
    return text + "".join(f"; tracker {url}: {why}" for url, why in node.tracker_errors(fetch.key).items())


def fetch_chunks(
    node: TorrentNode,
    manifest: Manifest,
    torrent_data: bytes,
    chunk_ids: Iterable[str],
    models_dir: Path,
    *,
    peers: Iterable[str] = (),
    timeout: float,
    progress: TransferReporter | None = None,
    resume_dir: Path | None = None,
    stop: threading.Event | None = None,
    full_verify: bool = False,
) -> FetchResult:
    """Fetch exactly the chunks `chunk_ids` (plus meta) into models_dir and verify each against the manifest.

    `timeout` is how long the fetch may go without any progress (no byte arriving, no file being checked)
    before it gives up with an error naming the chunks still missing and how many peers were seen. The
    torrent stays in the node afterwards, seeding what was fetched.
    """
    reporter = progress or SilentTransfer()
    chunks = chunks_by_ids(manifest, chunk_ids)
    fetch = ChunkFetch(
        node, manifest, torrent_data, chunks, models_dir, peers=peers, resume_dir=resume_dir, full_verify=full_verify
    )
    node.add_event_listener(reporter.event)
    try:
        reporter.started(manifest.name, chunks, fetch.already)
        last_progress = time.monotonic()
        last_done = -1
        last_announce = time.monotonic()
        while True:
            node.pump(0.2, min_wait_seconds=LOOP_SECONDS)
            if stop is not None and stop.is_set():
                raise SwarmError(f"fetching {manifest.name} was interrupted")
            status = node.status_of(fetch.key)
            if status.peers == 0 and time.monotonic() - last_announce >= REANNOUNCE_SECONDS:
                # An announce made before the DHT knew anyone found nobody, and libtorrent's next is 15 min away.
                node.reannounce(fetch.key)
                last_announce = time.monotonic()
            reporter.update(status, status.peers)
            # peer_info forgets a peer when it disconnects: sample every turn to count what each one sent.
            node.peer_transfers(fetch.key)
            failure = fetch.failure(status)
            if failure:
                raise SwarmError(failure)
            if not fetch.pending():
                break
            now = time.monotonic()
            if status.wanted_done != last_done or status.state in BUSY_STATES:
                last_done = status.wanted_done
                last_progress = now
            elif now - last_progress > timeout:
                raise SwarmError(stall_message(node, fetch, status, timeout))
        problems = fetch.verify()
        # A write error (disk full) can surface only now, after libtorrent hash-checked the bytes in memory.
        failure = fetch.failure()
        if failure:
            raise SwarmError(failure)
        if problems:
            listing = ", ".join(f"{chunk_id} ({problem})" for chunk_id, problem in problems.items())
            raise SwarmError(f"chunks of {manifest.name} failed verification after download: {listing}")
        result = fetch.result()
        reporter.finished(result.summary())
        return result
    finally:
        node.remove_event_listener(reporter.event)
        fetch.close()


# --- the fetch command --------------------------------------------------------------------------------------


def open_node(settings: Settings, short_lived: bool = False) -> TorrentNode:
    """A TorrentNode with the settings' listen address, bootstrap nodes, rate limits, discovery options and
    resume directory. A short-lived node (a client that leaves when done) takes any free port and joins the DHT
    read-only (BEP 43): others do not put it in their routing tables, where it would linger once gone."""
    listen = settings.torrent_listen.with_port(0) if short_lived else settings.torrent_listen
    return TorrentNode(
        listen,
        settings.bootstrap,
        read_only_dht=short_lived,
        resume_dir=settings.resume_dir,
        resume_interval=settings.resume_interval,
        upload_limit=settings.upload_limit,
        download_limit=settings.download_limit,
        limit_local_peers=settings.limit_local_peers,
        utp=settings.utp,
        lsd=settings.lsd,
        pex=settings.pex,
        trackers=settings.trackers,
        # A private swarm's members speak only encrypted BitTorrent, as its compute traffic is encrypted.
        encrypted=settings.swarm_secret is not None,
    )


def run_fetch(
    reference: str,
    settings: Settings,
    *,
    blocks: str | None,
    chunk_ids: str | None,
    peers: Sequence[str],
    keep_seeding: bool,
    stop: threading.Event,
    reporter: TransferReporter,
    emit: Callable[[dict[str, Any]], None],
) -> FetchResult:
    """`swarm fetch`: resolve the model, fetch and verify the selected chunks, optionally seed until stopped."""
    parse_all(peers, "--peer")
    node = open_node(settings, short_lived=not keep_seeding)
    try:
        resolution = resolve_model(reference, settings, node)
        manifest, torrent_data = resolution.manifest, resolution.torrent_data
        selected = select_chunks(manifest, blocks, chunk_ids)
        result = fetch_chunks(
            node,
            manifest,
            torrent_data,
            [chunk.id for chunk in selected],
            settings.models_dir(),
            peers=peers,
            timeout=settings.network_timeout,
            progress=reporter,
            resume_dir=settings.resume_dir,
            stop=stop,
            full_verify=settings.full_verify,
        )
        emit({"event": "verified", "name": manifest.name, **result.summary()})
        if keep_seeding:
            emit({"event": "seeding", "name": manifest.name, "port": node.listen_port})
            while not stop.is_set():
                node.pump(0.5, min_wait_seconds=0.5)
        return result
    finally:
        node.close()
