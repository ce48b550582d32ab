"""The manifest: the signed contract between publisher, peers and clients (one JSON file per model).

Versioned and tolerant: fields this version does not know are kept, so they stay covered by the
signature and survive a load/save round trip.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarm import signing
from swarm.errors import SwarmError
from swarm.torrent.merkle import file_root

# 2: a chunk's hash is its BitTorrent v2 merkle root (`root`); format 1 had a flat SHA-256 (`sha256`).
MANIFEST_FORMAT = 2
CHUNK_KINDS = ("meta", "embed", "blocks", "head", "full")


@dataclass(frozen=True)
class Chunk:
    id: str
    kind: str
    # Path inside the torrent (the torrent's root folder first), as libtorrent names the file.
    file: str
    size: int
    # The file's merkle root (BEP 52: SHA-256 over 16 KiB blocks), hex: a v2 torrent's "pieces root" of the file.
    root: str
    first_piece: int
    last_piece: int
    # [start, end) for blocks chunks, None otherwise.
    blocks: tuple[int, int] | None = None
    # Chunk ids this one needs at run time (a head tied to the embeddings needs the embed chunk).
    requires: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["blocks"] = list(self.blocks) if self.blocks is not None else None
        record["requires"] = list(self.requires)
        return record


@dataclass(frozen=True)
class TorrentInfo:
    format: str
    piece_length: int
    magnet: str
    info_hash_v1: str | None = None
    info_hash_v2: str | None = None


@dataclass(frozen=True)
class Manifest:
    name: str
    family: str | None
    architecture: str | None
    config: dict[str, Any]
    dtype: str
    num_blocks: int
    torrent: TorrentInfo
    chunks: tuple[Chunk, ...]
    publisher_key: str
    created: str
    format_version: int = MANIFEST_FORMAT
    signature: str | None = None
    # The transformers task a replica runs (swarm.tasks.catalog); None for text generation and encoder spans.
    task: str | None = None
    # Fields written by a newer swarm: kept verbatim so the signature still covers them.
    unknown: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, with_signature: bool = True) -> dict[str, Any]:
        record: dict[str, Any] = dict(self.unknown)
        record.update(
            format_version=self.format_version,
            name=self.name,
            family=self.family,
            architecture=self.architecture,
            config=self.config,
            dtype=self.dtype,
            num_blocks=self.num_blocks,
            torrent=asdict(self.torrent),
            chunks=[chunk.to_dict() for chunk in self.chunks],
            publisher_key=self.publisher_key,
            created=self.created,
        )
        if self.task is not None:
            # Only when set: manifests without a task keep the bytes (and signatures) they always had.
            record["task"] = self.task
        if with_signature and self.signature is not None:
            record["signature"] = self.signature
        return record

    def signed(self, key: Ed25519PrivateKey) -> Manifest:

        unsigned = replace(self, publisher_key=signing.public_key_hex(key), signature=None)
        return replace(unsigned, signature=signing.sign(key, canonical_bytes(unsigned.to_dict())))

    def signature_valid(self) -> bool:
        if not self.signature:
            return False
        return signing.verify(self.publisher_key, self.signature, canonical_bytes(self.to_dict(with_signature=False)))

    def chunk(self, chunk_id: str) -> Chunk:
        for chunk in self.chunks:
            if chunk.id == chunk_id:
                return chunk
        raise SwarmError(f"manifest {self.name} has no chunk {chunk_id!r}")

    @property
    def fingerprint(self) -> str:
        return signing.fingerprint(self.publisher_key)

    def save(self, path: Path) -> None:
        text = json.dumps(self.to_dict(), indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(text)
        temporary.replace(path)


def canonical_bytes(record: dict[str, Any]) -> bytes:
    """The bytes that are signed: sorted keys, no whitespace, UTF-8, signature field left out."""
    unsigned = {key: value for key, value in record.items() if key != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_manifest(path: Path) -> Manifest:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SwarmError(f"cannot read manifest {path}: {error}") from error
    return manifest_from_dict(record, origin=str(path))


def manifest_from_dict(record: Any, origin: str = "manifest") -> Manifest:
    """Build a manifest from untrusted JSON: every field type-checked, unknown fields kept."""
    check = _Checker(origin)
    record = check.mapping(record, "manifest")
    version = check.integer(record, "format_version")
    if version > MANIFEST_FORMAT:
        # A newer manifest format may change meaning, not only add fields: refuse rather than guess.
        raise SwarmError(f"{origin}: manifest format {version} is newer than this swarm reads ({MANIFEST_FORMAT})")
    if version < MANIFEST_FORMAT:
        raise SwarmError(
            f"{origin}: manifest format {version} comes from an older swarm (chunks hashed otherwise); publish the "
            "model again"
        )
    torrent = check.mapping(record.get("torrent"), "torrent")
    chunks = []
    for position, raw_chunk in enumerate(check.sequence(record, "chunks")):
        chunk = check.mapping(raw_chunk, f"chunks[{position}]")
        kind = check.text(chunk, "kind")
        if kind not in CHUNK_KINDS:
            raise SwarmError(f"{origin}: chunk {position} has unknown kind {kind!r}")
        blocks = chunk.get("blocks")
        block_range = None
        if blocks is not None:
            if not (isinstance(blocks, list) and len(blocks) == 2 and all(type(b) is int for b in blocks)):
                raise SwarmError(f"{origin}: chunk {position} has malformed blocks {blocks!r}")
            if not 0 <= blocks[0] < blocks[1]:
                raise SwarmError(f"{origin}: chunk {position} has an empty block range {blocks!r}")
            block_range = (blocks[0], blocks[1])
        requires = chunk.get("requires", [])
        if not (isinstance(requires, list) and all(isinstance(item, str) for item in requires)):
            raise SwarmError(f"{origin}: chunk {position} has malformed requires")
        chunks.append(
            Chunk(
                id=check.text(chunk, "id"),
                kind=kind,
                file=check.text(chunk, "file"),
                size=check.integer(chunk, "size"),
                root=check.text(chunk, "root"),
                first_piece=check.integer(chunk, "first_piece"),
                last_piece=check.integer(chunk, "last_piece"),
                blocks=block_range,
                requires=tuple(requires),
            )
        )
    known = {
        "format_version", "name", "family", "architecture", "config", "dtype", "num_blocks",
        "torrent", "chunks", "publisher_key", "created", "signature", "task",
    }  # fmt: skip
    return Manifest(
        format_version=version,
        name=check.text(record, "name"),
        family=check.optional_text(record, "family"),
        architecture=check.optional_text(record, "architecture"),
        config=check.mapping(record.get("config"), "config"),
        dtype=check.text(record, "dtype"),
        num_blocks=check.integer(record, "num_blocks"),
        torrent=TorrentInfo(
            format=check.text(torrent, "format"),
            piece_length=check.integer(torrent, "piece_length"),
            magnet=check.text(torrent, "magnet"),
            info_hash_v1=check.optional_text(torrent, "info_hash_v1"),
            info_hash_v2=check.optional_text(torrent, "info_hash_v2"),
        ),
        chunks=tuple(chunks),
        publisher_key=check.text(record, "publisher_key"),
        created=check.text(record, "created"),
        signature=check.optional_text(record, "signature"),
        task=check.optional_text(record, "task"),
        unknown={key: value for key, value in record.items() if key not in known},
    )


class _Checker:
    def __init__(self, origin: str) -> None:
        self.origin = origin

    def fail(self, message: str) -> SwarmError:
        return SwarmError(f"{self.origin}: {message}")

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(f"{where} must be an object")
        return value

    def sequence(self, record: dict[str, Any], key: str) -> list[Any]:
        value = record.get(key)
        if not isinstance(value, list):
            raise self.fail(f"{key} must be a list")
        return value

    def text(self, record: dict[str, Any], key: str) -> str:
        value = record.get(key)
        if not isinstance(value, str) or not value:
            raise self.fail(f"{key} must be a non-empty string")
        return value

    def optional_text(self, record: dict[str, Any], key: str) -> str | None:
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            raise self.fail(f"{key} must be a string or null")
        return value

    def integer(self, record: dict[str, Any], key: str) -> int:
        value = record.get(key)
        if type(value) is not int or value < 0:
            raise self.fail(f"{key} must be a non-negative integer")
        return value


def chunk_problem(manifest: Manifest, chunk: Chunk, models_dir: Path, *, check_hash: bool = True) -> str | None:
    """Why a chunk on disk is not usable ('missing', 'wrong size', 'corrupt'), or None when it verifies.

    `check_hash=False` for a file whose content was already proven another way (see ChunkFetch.verify)."""
    path = models_dir / chunk.file
    if not path.is_file():
        return "missing"
    if path.stat().st_size != chunk.size:
        return "wrong size"
    if check_hash and file_root(path) != chunk.root:
        return "corrupt"
    return None
