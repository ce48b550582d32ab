"""Record bundles: a tiny v2 torrent holding a model's NAME.json and NAME.torrent byte for byte as in the catalog,
which is how a client that found a name record gets the manifest; and the signed record kept in the catalog."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarm import signing
from swarm.catalog import check_entry, manifest_path, record_path, torrent_path, write_atomically
from swarm.config import Settings
from swarm.discovery.records import NameRecord, RecordRejected, check_record, make_record, model_info_hashes
from swarm.errors import SwarmError
from swarm.manifest import Manifest, manifest_from_dict
from swarm.torrent.create import MIN_PIECE_LENGTH, make_torrent

BUNDLE_FORMAT = "v2"
BUNDLE_PIECE_LENGTH = MIN_PIECE_LENGTH
# A record bundle holds a manifest and a torrent: tens of KiB to a few MiB. Refuse to download more.
MAX_BUNDLE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Bundle:
    name: str
    info_hash: str
    torrent_data: bytes
    save_path: Path  # the bundle's files are save_path/NAME/NAME.json and save_path/NAME/NAME.torrent


def records_dir(settings: Settings) -> Path:
    return settings.data / "records"


def build_bundle(name: str, manifest_bytes: bytes, torrent_bytes: bytes, directory: Path) -> Bundle:
    """Make the record bundle torrent (v2, 32 KiB pieces, folder NAME); the same bytes give the same info
    hash on every machine, so any holder can rebuild and seed it from its catalog."""
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=directory))
    try:
        folder = staging / name
        folder.mkdir()
        (folder / f"{name}.json").write_bytes(manifest_bytes)
        (folder / f"{name}.torrent").write_bytes(torrent_bytes)
        made = make_torrent(folder, BUNDLE_FORMAT, BUNDLE_PIECE_LENGTH)
        info_hash = made.info_hash_v2 or made.info_hash_v1 or ""
        final = directory / info_hash[:16]
        if not (final / name / f"{name}.json").is_file():
            shutil.rmtree(final, ignore_errors=True)
            final.mkdir(parents=True)
            folder.rename(final / name)
    except OSError as error:
        raise SwarmError(f"cannot write the record bundle of {name} under {directory}: {error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Bundle(name=name, info_hash=info_hash, torrent_data=made.data, save_path=final)


def catalog_bundle(manifest: Manifest, settings: Settings) -> Bundle | None:
    """The bundle of a catalog entry, built from the catalog's bytes; None when the catalog lacks them."""
    try:
        manifest_bytes = manifest_path(settings.catalog, manifest.name).read_bytes()
        torrent_bytes = torrent_path(settings.catalog, manifest.name).read_bytes()
    except OSError:
        return None
    return build_bundle(manifest.name, manifest_bytes, torrent_bytes, records_dir(settings))


def check_bundle(record: NameRecord, manifest_bytes: bytes, torrent_bytes: bytes) -> Manifest:
    """The manifest, once the bundle's bytes agree with the record, the manifest's signature and hashes."""
    if hashlib.sha256(manifest_bytes).hexdigest() != record.manifest_sha256:
        raise RecordRejected(f"the manifest of {record.name} does not match its record's SHA-256")
    try:
        manifest = manifest_from_dict(json.loads(manifest_bytes), origin=f"manifest of {record.name}")
    except ValueError as error:
        raise RecordRejected(f"the manifest of {record.name} is not JSON: {error}") from None
    if manifest.name != record.name:
        raise RecordRejected(f"the manifest found for {record.name} is for {manifest.name}")
    if manifest.publisher_key != record.publisher_key:
        raise RecordRejected(f"the manifest of {record.name} names another publisher than its record")
    try:
        check_entry(manifest, torrent_bytes)
    except SwarmError as error:
        raise RecordRejected(str(error)) from None
    if set(record.model_info_hashes) != set(model_info_hashes(manifest)):
        raise RecordRejected(f"the record of {record.name} names other torrent info hashes than its manifest")
    return manifest


def write_name_record(manifest: Manifest, key: Ed25519PrivateKey, settings: Settings) -> tuple[Bundle, NameRecord]:
    """Sign a fresh name record for a catalog entry published with `key` and keep it beside the manifest
    (NAME.record): whoever holds the catalog entry can then keep the name findable. Returns the bundle too."""
    if manifest.publisher_key != signing.public_key_hex(key):
        raise SwarmError(f"{manifest.name} is signed by another key than this publisher's; publish it again")
    bundle = catalog_bundle(manifest, settings)
    if bundle is None:
        raise SwarmError(f"the catalog {settings.catalog} lacks {manifest.name}.json or {manifest.name}.torrent")
    manifest_bytes = manifest_path(settings.catalog, manifest.name).read_bytes()
    record = make_record(manifest, manifest_bytes, bundle.info_hash, int(time.time())).signed(key)
    save_record(settings.catalog, record)
    return bundle, record


def save_record(catalog: Path, record: NameRecord) -> None:
    try:
        write_atomically(record_path(catalog, record.name), record.encode())
    except OSError as error:
        raise SwarmError(f"cannot write the name record of {record.name} into {catalog}: {error.strerror}") from error


def load_record(catalog: Path, bundle: Bundle) -> NameRecord | None:
    """The catalog's record of the bundle's model, when it verifies and names this very bundle."""
    try:
        record = check_record(record_path(catalog, bundle.name).read_bytes(), name=bundle.name)
    except (OSError, RecordRejected):
        return None
    return record if record.bundle_info_hash == bundle.info_hash else None
