"""Making a torrent over a model's chunk files, and the piece map that says which pieces hold which file."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libtorrent as lt

from swarm.errors import SwarmError
from swarm.torrent.merkle import BLOCK_LENGTH, FileHashes, file_hashes

# Not one block for v2: when a v2 piece is a single 16 KiB block, libtorrent 2.1.1 rejects every peer's answer
# to the block-hash request it sends after a piece fails its hash, and drops that peer ("invalid hashes"): one
# corrupt seeder got the honest seeders disconnected and the fetch stalled (seen in tests/test_fetch.py).
MIN_PIECE_LENGTH = 2 * BLOCK_LENGTH
MAX_PIECE_LENGTH = 16 * 1024 * 1024
TARGET_PIECES = 4096
CREATOR = "swarm"


def choose_piece_length(total_bytes: int) -> int:
    """The smallest power of two (32 KiB..16 MiB) that keeps the torrent near TARGET_PIECES pieces.

    Small pieces keep the padding after each chunk file small and let a peer fetch one chunk
    without neighbours' bytes; the cap keeps the piece list of a large model bounded.
    """
    length = MIN_PIECE_LENGTH
    while length < MAX_PIECE_LENGTH and total_bytes > length * TARGET_PIECES:
        length *= 2
    return length


@dataclass(frozen=True)
class FilePieces:
    path: str  # inside the torrent, root folder first
    size: int
    first_piece: int
    last_piece: int


@dataclass(frozen=True)
class MadeTorrent:
    data: bytes
    info_hash_v1: str | None
    info_hash_v2: str | None
    magnet: str
    piece_length: int
    files: dict[str, FilePieces]
    # BEP 27: peers of the torrent come only from trackers and given addresses.
    private: bool = False


def _format_flags(torrent_format: str) -> int:
    if torrent_format == "v2":
        return int(lt.create_torrent.v2_only)
    if torrent_format == "hybrid":
        return 0
    if torrent_format == "v1":
        # BEP 47 pad files keep every chunk file piece-aligned in v1 torrents too.
        return int(lt.create_torrent.v1_only | lt.create_torrent.canonical_files)
    raise SwarmError(f"unknown torrent format {torrent_format!r}; use v2, hybrid or v1")


def check_piece_length(piece_length: int, torrent_format: str) -> None:
    """Refuse a piece length BitTorrent cannot use, or one too small for v2 (see MIN_PIECE_LENGTH)."""
    smallest = BLOCK_LENGTH if torrent_format == "v1" else MIN_PIECE_LENGTH
    if piece_length < smallest or piece_length & (piece_length - 1):
        raise SwarmError(
            f"piece length {piece_length} must be a power of two of at least {smallest} bytes for {torrent_format}"
        )


def make_torrent(
    content_dir: Path,
    torrent_format: str,
    piece_length: int,
    on_piece: Callable[[int], None] | None = None,
    trackers: Sequence[str] = (),
    private: bool = False,
    hashes: Mapping[str, FileHashes] | None = None,
) -> MadeTorrent:
    """Hash every file under content_dir (the torrent's root folder) into a torrent that names `trackers` (their
    announce URLs sit outside the info dictionary: they do not change the info hash); `private` sets BEP 27's flag
    (inside it: a private torrent is another torrent than the public one of the same files). A v2 torrent takes the
    `hashes` of files already hashed for this piece length (by file name) and hashes only the others."""
    if torrent_format == "v2":
        return describe_torrent(_v2_torrent(content_dir, piece_length, hashes or {}, trackers, private, on_piece))
    files = lt.list_files(str(content_dir), flags=0)
    if not files:
        raise SwarmError(f"{content_dir} holds no files to put in a torrent")
    creator = lt.create_torrent(files, piece_length, _format_flags(torrent_format))
    creator.set_creator(CREATOR)
    creator.set_priv(private)
    for tier, url in enumerate(trackers):
        creator.add_tracker(url, tier)
    lt.set_piece_hashes(creator, str(content_dir.parent), on_piece or (lambda _piece: None))
    data = lt.bencode(creator.generate())
    return describe_torrent(data)


def _v2_torrent(
    content_dir: Path, piece_length: int, hashes: Mapping[str, FileHashes], trackers: Sequence[str], private: bool,
    on_piece: Callable[[int], None] | None,
) -> bytes:  # fmt: skip
    """The torrent libtorrent makes with v2_only, from hashlib's hashes (merkle.py): the same info dictionary, hence
    the same info hash (tests/test_publish.py compares them). Chunk folders are flat: files only."""
    paths = sorted(path for path in content_dir.iterdir() if path.is_file())
    if not paths:
        raise SwarmError(f"{content_dir} holds no files to put in a torrent")
    files: dict[bytes, Any] = {}
    layers: dict[bytes, bytes] = {}
    pieces = 0
    for path in paths:
        found = hashes.get(path.name)
        made = found if found is not None and found.size == path.stat().st_size else file_hashes(path, piece_length)
        leaf: dict[bytes, Any] = {b"length": made.size}
        if made.size:
            leaf[b"pieces root"] = made.root
        if made.piece_layer:
            layers[made.root] = made.piece_layer
        files[path.name.encode()] = {b"": leaf}
        file_pieces = -(-made.size // piece_length)
        for piece in range(pieces, pieces + file_pieces):
            if on_piece is not None:
                on_piece(piece)
        pieces += file_pieces
    info: dict[bytes, Any] = {b"file tree": files, b"meta version": 2, b"name": content_dir.name.encode(),
                              b"piece length": piece_length}  # fmt: skip
    if private:
        info[b"private"] = 1
    torrent: dict[bytes, Any] = {b"info": info, b"created by": CREATOR.encode(), b"creation date": int(time.time())}
    if layers:
        torrent[b"piece layers"] = layers
    if trackers:
        torrent[b"announce"] = trackers[0].encode()
        torrent[b"announce-list"] = [[url.encode()] for url in trackers]
    return bytes(lt.bencode(torrent))


def describe_torrent(data: bytes) -> MadeTorrent:
    info = lt.torrent_info(data)
    hashes = info.info_hashes()
    return MadeTorrent(
        data=data,
        info_hash_v1=str(hashes.v1) if hashes.has_v1() else None,
        info_hash_v2=str(hashes.v2) if hashes.has_v2() else None,
        magnet=lt.make_magnet_uri(info),
        piece_length=info.piece_length(),
        files=piece_map(info),
        private=info.priv(),
    )


def piece_map(info: lt.torrent_info) -> dict[str, FilePieces]:
    """Each real file (pad files left out) with the first and last piece that hold its bytes."""
    layout = info.layout()
    length = layout.piece_length()
    mapped = {}
    for index in range(layout.num_files()):
        if layout.file_flags(index) & lt.file_storage.flag_pad_file:
            continue
        path = layout.file_path(index)
        offset = layout.file_offset(index)
        size = layout.file_size(index)
        mapped[path] = FilePieces(
            path=path,
            size=size,
            first_piece=offset // length,
            last_piece=(offset + max(size, 1) - 1) // length,
        )
    return mapped


def read_torrent(path: Path) -> MadeTorrent:
    try:
        return describe_torrent(path.read_bytes())
    except (OSError, RuntimeError) as error:
        raise SwarmError(f"cannot read torrent {path}: {error}") from error
