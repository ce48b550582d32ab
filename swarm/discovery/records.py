"""Name records (pure): what a publisher signs for one model, its strict bencoding, and the checks a record
from the DHT must pass before anything it names is used."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarm import signing
from swarm.catalog import NAME_PATTERN
from swarm.errors import SwarmError
from swarm.manifest import Manifest
from swarm.torrent.bencode import BencodeError, bdecode, bencode

RECORD_FORMAT = 1
# Signed bytes = this context + the bencoded record without its signature: a record signature can never be
# replayed as a signature over anything else the publisher key signs (manifests are JSON).
SIGNING_CONTEXT = b"swarm/name-record/v1\n"
FINGERPRINT_PATTERN = re.compile(r"^[0-9a-f]{16}$")
MAX_INFO_HASHES = 4


# --- the name record -----------------------------------------------------------------------------------


class RecordRejected(SwarmError):
    """A DHT record that does not decode, verify, or belong where it was found."""


@dataclass(frozen=True)
class NameRecord:
    """What a publisher signs for one model; the same bytes go into every slot.

    On the wire (bencoded dict, hashes and keys as raw bytes): format, name, publisher_key,
    manifest_sha256, bundle_info_hash, model_info_hashes (list), issued (unix seconds), signature.
    Fields this version does not know are kept and stay covered by the signature.
    """

    name: str
    publisher_key: str  # hex, 32 bytes
    manifest_sha256: str  # hex, of NAME.json's bytes
    bundle_info_hash: str  # hex, v2 info hash of the record bundle torrent
    model_info_hashes: tuple[str, ...]  # hex, v2 (64 digits) and/or v1 (40 digits)
    issued: int
    format_version: int = RECORD_FORMAT
    signature: str | None = None
    unknown: dict[bytes, Any] = field(default_factory=dict)

    def unsigned_fields(self) -> dict[bytes, Any]:
        fields = dict(self.unknown)
        fields.update(
            {
                b"format": self.format_version,
                b"name": self.name.encode(),
                b"publisher_key": bytes.fromhex(self.publisher_key),
                b"manifest_sha256": bytes.fromhex(self.manifest_sha256),
                b"bundle_info_hash": bytes.fromhex(self.bundle_info_hash),
                b"model_info_hashes": [bytes.fromhex(item) for item in self.model_info_hashes],
                b"issued": self.issued,
            }
        )
        return fields

    def signed_bytes(self) -> bytes:
        return SIGNING_CONTEXT + bencode(self.unsigned_fields())

    def encode(self) -> bytes:
        if self.signature is None:
            raise SwarmError(f"the name record of {self.name} is not signed")
        fields = self.unsigned_fields()
        fields[b"signature"] = bytes.fromhex(self.signature)
        return bencode(fields)

    def signed(self, key: Ed25519PrivateKey) -> NameRecord:
        unsigned = replace(self, publisher_key=signing.public_key_hex(key), signature=None)
        return replace(unsigned, signature=signing.sign(key, unsigned.signed_bytes()))

    def signature_valid(self) -> bool:
        return self.signature is not None and signing.verify(self.publisher_key, self.signature, self.signed_bytes())

    @property
    def fingerprint(self) -> str:
        return signing.fingerprint(self.publisher_key)


def make_record(manifest: Manifest, manifest_bytes: bytes, bundle_info_hash: str, issued: int) -> NameRecord:
    return NameRecord(
        name=manifest.name,
        publisher_key=manifest.publisher_key,
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        bundle_info_hash=bundle_info_hash,
        model_info_hashes=model_info_hashes(manifest),
        issued=issued,
    )


def model_info_hashes(manifest: Manifest) -> tuple[str, ...]:
    return tuple(item for item in (manifest.torrent.info_hash_v2, manifest.torrent.info_hash_v1) if item)


def primary_info_hash(manifest: Manifest) -> str:
    """The model's id on the DHT: the v2 info hash when the torrent has one, else v1 (as peers report it)."""
    hashes = model_info_hashes(manifest)
    if not hashes:
        raise SwarmError(f"the manifest of {manifest.name} names no torrent info hash")
    return hashes[0]


def decode_record(value: bytes) -> NameRecord:
    """Decode and verify a record from the DHT (untrusted bytes); RecordRejected says what is wrong."""
    try:
        fields = bdecode(value)
    except BencodeError as error:
        raise RecordRejected(f"not a bencoded record ({error})") from None
    if not isinstance(fields, dict):
        raise RecordRejected("not a record (expected a dictionary)")
    version = fields.get(b"format")
    if type(version) is not int or version < 1:
        raise RecordRejected("record has no valid format number")
    if version > RECORD_FORMAT:
        raise RecordRejected(f"record format {version} is newer than this swarm reads ({RECORD_FORMAT})")
    raw_name = fields.get(b"name")
    try:
        name = raw_name.decode() if isinstance(raw_name, bytes) else ""
    except UnicodeDecodeError:
        name = ""
    if not NAME_PATTERN.match(name):
        raise RecordRejected("record has no valid model name")
    hashes = fields.get(b"model_info_hashes")
    if not (
        isinstance(hashes, list)
        and 0 < len(hashes) <= MAX_INFO_HASHES
        and all(isinstance(item, bytes) and len(item) in (20, 32) for item in hashes)
    ):
        raise RecordRejected("record has no valid model_info_hashes")
    issued = fields.get(b"issued")
    if type(issued) is not int or issued < 0:
        raise RecordRejected("record has no valid issue time")
    record = NameRecord(
        name=name,
        publisher_key=_raw_field(fields, b"publisher_key", (32,)).hex(),
        manifest_sha256=_raw_field(fields, b"manifest_sha256", (32,)).hex(),
        bundle_info_hash=_raw_field(fields, b"bundle_info_hash", (32,)).hex(),
        model_info_hashes=tuple(item.hex() for item in hashes),
        issued=issued,
        format_version=version,
        signature=_raw_field(fields, b"signature", (64,)).hex(),
        unknown={key: item for key, item in fields.items() if key not in _RECORD_FIELDS},
    )
    if not record.signature_valid():
        raise RecordRejected(f"the signature of the record for {name} does not verify (forged or tampered)")
    return record


_RECORD_FIELDS = {
    b"format", b"name", b"publisher_key", b"manifest_sha256", b"bundle_info_hash", b"model_info_hashes",
    b"issued", b"signature",
}  # fmt: skip


def _raw_field(fields: dict[bytes, Any], key: bytes, lengths: tuple[int, ...]) -> bytes:
    value = fields.get(key)
    if not isinstance(value, bytes) or len(value) not in lengths:
        raise RecordRejected(f"record has no valid {key.decode()}")
    return value


def check_record(
    value: bytes,
    name: str | None = None,
    publisher_key: str | None = None,
    fingerprint: str | None = None,
    info_hash: str | None = None,
) -> NameRecord:
    """decode_record, then check that the record belongs in the slot it came from."""
    record = decode_record(value)
    if name is not None and record.name != name:
        raise RecordRejected(f"record is for {record.name!r}, not {name!r}")
    if publisher_key is not None and record.publisher_key != publisher_key:
        raise RecordRejected(f"record of {record.name} is signed by {record.fingerprint}, not the slot's owner")
    if fingerprint is not None and record.fingerprint != fingerprint:
        raise RecordRejected(f"record of {record.name} is signed by {record.fingerprint}, not {fingerprint}")
    if info_hash is not None and info_hash not in record.model_info_hashes:
        raise RecordRejected(f"record of {record.name} is not for torrent {info_hash[:16]}")
    return record


def should_republish(current: bytes | None, ours: NameRecord, **slot: Any) -> bool:
    """Whether a holder (not the publisher) should put `ours` into a pointer slot holding `current`.

    Yes when the slot is empty, holds garbage or a forgery, or an older record of the same publisher; no
    when it holds a valid record of the same age or newer, or one of another publisher (holders do not
    take sides in a name dispute: pins and name@fingerprint settle those).
    """
    if current is None:
        return True
    try:
        found = check_record(current, **slot)
    except RecordRejected:
        return True
    return found.publisher_key == ours.publisher_key and found.issued < ours.issued
