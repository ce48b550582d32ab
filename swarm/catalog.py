"""The local catalog: NAME.json (signed manifest) and NAME.torrent side by side in one directory."""

from __future__ import annotations

import re
from pathlib import Path

from swarm.errors import SwarmError
from swarm.manifest import Manifest, load_manifest

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
