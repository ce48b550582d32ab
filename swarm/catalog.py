"""The local catalog: NAME.json (signed manifest), NAME.torrent and NAME.record (the signed name record that
makes the model findable by name on the DHT) side by side in one directory."""

from __future__ import annotations

import re
from pathlib import Path

from swarm.errors import SwarmError
from swarm.manifest import Manifest, load_manifest
from swarm.torrent.create import describe_torrent

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise SwarmError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' (up to 128), starting "
            "with a letter or digit"
        )
    return name


def manifest_path(catalog: Path, name: str) -> Path:
    return catalog / f"{name}.json"


def torrent_path(catalog: Path, name: str) -> Path:
    return catalog / f"{name}.torrent"


def record_path(catalog: Path, name: str) -> Path:
    return catalog / f"{name}.record"


def find_by_info_hash(catalog: Path, info_hashes: set[str]) -> str | None:
    """The name of the catalog entry whose torrent has one of `info_hashes` (hex), or None. Unreadable entries
    are passed over: they are not the one asked for."""
    if not catalog.is_dir():
        return None
    for path in sorted(catalog.glob("*.json")):
        try:
            torrent = load_manifest(path).torrent
        except SwarmError:
            continue
        if {torrent.info_hash_v1, torrent.info_hash_v2} & info_hashes:
            return path.stem
    return None


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a reader sees the old bytes or the new ones, never a part."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    temporary.replace(path)


def resolve(reference: str, catalog: Path) -> tuple[Manifest, Path]:
    """A catalog name, a manifest path or a torrent path (whose manifest sits beside it)."""
    path = Path(reference).expanduser()
    if path.suffix == ".json" and path.is_file():
        return load_manifest(path), path
    if path.suffix == ".torrent" and path.is_file():
        beside = path.with_suffix(".json")
        if not beside.is_file():
            raise SwarmError(f"{path} has no manifest beside it ({beside.name})")
        return load_manifest(beside), beside
    if NAME_PATTERN.match(reference):
        candidate = manifest_path(catalog, reference)
        if candidate.is_file():
            return load_manifest(candidate), candidate
    raise SwarmError(
        f"unknown model {reference!r}: not a manifest or torrent path, and no {reference}.json in {catalog}"
    )


def check_entry(manifest: Manifest, torrent_data: bytes) -> None:
    """A manifest and torrent fit to use together: a valid signature, and the very torrent the manifest names,
    holding every chunk file where the manifest says. SwarmError naming the first problem."""
    if not manifest.signature_valid():
        raise SwarmError(f"the manifest of {manifest.name} has an invalid signature: refusing it")
    try:
        made = describe_torrent(torrent_data)
    except RuntimeError as error:
        raise SwarmError(f"the torrent of {manifest.name} is unreadable: {error}") from error
    expected = manifest.torrent
    if (made.info_hash_v1, made.info_hash_v2) != (expected.info_hash_v1, expected.info_hash_v2):
        raise SwarmError(f"the torrent of {manifest.name} is not the one its signed manifest names (info hash differs)")
    for chunk in manifest.chunks:
        pieces = made.files.get(chunk.file)
        if pieces is None or pieces.size != chunk.size or pieces.first_piece != chunk.first_piece:
            raise SwarmError(f"the torrent of {manifest.name} does not hold chunk {chunk.id} as the manifest says")
