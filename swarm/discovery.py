"""Finding models and compute peers on the DHT: name records, their resolution, and compute announcements.

Records. A publisher signs one small *name record* per model (bencoded, <= 1000 bytes) that names the
manifest's SHA-256, the model torrent's info hash(es) and the info hash of the model's *record bundle*: a
tiny v2 torrent holding NAME.json and NAME.torrent byte for byte as in the catalog. The same signed record
is put, as BEP 44 mutable items, in four kinds of slot:

- publisher slot: the publisher's own key, salt "swarm/model/" + hex(sha1(name)). Only the publisher can
  write it, so once a client knows the key this slot carries updates.
- name slot: a key pair anyone can derive from the name (seed sha256("swarm/name/" + name)), empty salt.
  This is how a plain name is found. Anyone can overwrite it, which is why the record inside is signed by
  the publisher and checked, and why the first key seen is pinned (swarm/pins.py).
- fingerprint slot: the same derived key, salt "publisher/" + fingerprint, for `name@fingerprint`.
- model slot: a key pair derived from a model torrent info hash (seed sha256("swarm/manifest-of/" +
  hex)), for magnet links.

Holders of a model seed its record bundle and announce (BEP 5) on sha1("swarm/name/" + name); compute
peers announce their ZeroMQ port on sha1("swarm/compute/" + info hash). libtorrent is used only through
swarm/torrent/dht.py; the record codec, slot derivations and checks here are pure and table-tested.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarm import signing
from swarm.catalog import NAME_PATTERN, check_name, manifest_path, torrent_path
from swarm.catalog import resolve as catalog_resolve
from swarm.config import Settings
from swarm.errors import SwarmError
from swarm.manifest import Manifest, load_manifest, manifest_from_dict
from swarm.pins import NOT_FOUND, PIN, REFUSE, REPIN, PinStore, decide
from swarm.torrent import dht
from swarm.torrent.create import MIN_PIECE_LENGTH, describe_torrent, make_torrent
from swarm.torrent.session import TorrentNode

RECORD_FORMAT = 1
# Signed bytes = this context + the bencoded record without its signature: a record signature can never be
# replayed as a signature over anything else the publisher key signs (manifests are JSON).
SIGNING_CONTEXT = b"swarm/name-record/v1\n"
BUNDLE_FORMAT = "v2"
BUNDLE_PIECE_LENGTH = MIN_PIECE_LENGTH
# A record bundle holds a manifest and a torrent: tens of KiB to a few MiB. Refuse to download more.
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
FINGERPRINT_PATTERN = re.compile(r"^[0-9a-f]{16}$")
# One DHT lookup round; lookups are repeated until found or the overall deadline.
LOOKUP_ROUND_SECONDS = 3.0
RETRY_PAUSE_SECONDS = 0.5
HOLDER_LOOKUP_SECONDS = 3.0
MAX_INFO_HASHES = 4


# --- bencode: strict, so that a decoded record re-encodes to exactly the bytes that were signed ---------


def bencode(value: Any) -> bytes:
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, str):
        return bencode(value.encode())
    if isinstance(value, list | tuple):
        return b"l" + b"".join(bencode(item) for item in value) + b"e"
    if isinstance(value, dict):
        keys = [key.encode() if isinstance(key, str) else key for key in value]
        if len(set(keys)) != len(keys):
            raise TypeError("duplicate dictionary keys")
        items = sorted(zip(keys, value.values(), strict=True))
        return b"d" + b"".join(bencode(key) + bencode(item) for key, item in items) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


class BencodeError(ValueError):
    pass


def bdecode(data: bytes, max_depth: int = 8) -> Any:
    """Decode canonical bencoding only (sorted unique keys, no leading zeros); BencodeError otherwise."""
    value, end = _decode_at(data, 0, max_depth)
    if end != len(data):
        raise BencodeError(f"{len(data) - end} trailing byte(s)")
    return value


def _decode_at(data: bytes, position: int, depth: int) -> tuple[Any, int]:
    if depth < 0:
        raise BencodeError("nested too deeply")
    if position >= len(data):
        raise BencodeError("truncated")
    lead = data[position : position + 1]
    if lead == b"i":
        end = data.find(b"e", position)
        if end < 0:
            raise BencodeError("unterminated integer")
        text = data[position + 1 : end]
        if not re.fullmatch(rb"0|-?[1-9][0-9]*", text):
            raise BencodeError(f"malformed integer {text[:20]!r}")
        return int(text), end + 1
    if lead.isdigit():
        colon = data.find(b":", position)
        if colon < 0:
            raise BencodeError("unterminated string length")
        text = data[position:colon]
        if not re.fullmatch(rb"0|[1-9][0-9]*", text):
            raise BencodeError(f"malformed string length {text[:20]!r}")
        length = int(text)
        end = colon + 1 + length
        if end > len(data):
            raise BencodeError("string runs past the end")
        return data[colon + 1 : end], end
    if lead == b"l":
        items = []
        position += 1
        while data[position : position + 1] != b"e":
            item, position = _decode_at(data, position, depth - 1)
            items.append(item)
        return items, position + 1
    if lead == b"d":
        result: dict[bytes, Any] = {}
        position += 1
        previous: bytes | None = None
        while data[position : position + 1] != b"e":
            key, position = _decode_at(data, position, depth - 1)
            if not isinstance(key, bytes):
                raise BencodeError("dictionary key is not a string")
            if previous is not None and key <= previous:
                raise BencodeError("dictionary keys not sorted or repeated")
            previous = key
            result[key], position = _decode_at(data, position, depth - 1)
        return result, position + 1
    raise BencodeError(f"unexpected byte {lead!r} at {position}")


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


# --- where records and announcements live (slot and key derivations) ----------------------------------


def name_keypair(name: str) -> dht.KeyPair:
    return dht.keypair_from_seed(hashlib.sha256(b"swarm/name/" + name.encode()).digest())


def model_keypair(info_hash: str) -> dht.KeyPair:
    return dht.keypair_from_seed(hashlib.sha256(b"swarm/manifest-of/" + info_hash.lower().encode()).digest())


def publisher_salt(name: str) -> bytes:
    # BEP 44 salts hold at most 64 bytes and names up to 128 characters, hence a digest; in hex, because
    # libtorrent's alert.message() fails on a salt that is not UTF-8.
    return b"swarm/model/" + hashlib.sha1(name.encode()).hexdigest().encode()


def fingerprint_salt(fingerprint: str) -> bytes:
    return b"publisher/" + fingerprint.encode()


def publisher_slot(publisher_key: str, name: str) -> dht.Slot:
    return dht.Slot(bytes.fromhex(publisher_key), publisher_salt(name))


def name_slot(name: str) -> dht.Slot:
    return dht.Slot(name_keypair(name).public, b"")


def fingerprint_slot(name: str, fingerprint: str) -> dht.Slot:
    return dht.Slot(name_keypair(name).public, fingerprint_salt(fingerprint))


def model_slot(info_hash: str) -> dht.Slot:
    return dht.Slot(model_keypair(info_hash).public, b"")


def name_announce_key(name: str) -> bytes:
    return dht.derived_key(b"swarm/name/" + name.encode())


def compute_key(manifest: Manifest) -> bytes:
    return dht.derived_key(b"swarm/compute/" + primary_info_hash(manifest).encode())


def record_placements(record: NameRecord, publisher: dht.KeyPair | None) -> list[tuple[dht.KeyPair, bytes, str]]:
    """(key pair, salt, description) of every slot the record goes to; the publisher slot only with its key."""
    named = name_keypair(record.name)
    placements = [
        (named, b"", "name"),
        (named, fingerprint_salt(record.fingerprint), "fingerprint"),
    ]
    placements += [(model_keypair(item), b"", f"model {item[:16]}") for item in record.model_info_hashes]
    if publisher is not None:
        placements.insert(0, (publisher, publisher_salt(record.name), "publisher"))
    return placements


def _slot_expectations(record: NameRecord, description: str) -> dict[str, Any]:
    """check_record's keyword arguments for a slot, by its description in record_placements."""
    if description == "name":
        return {"name": record.name}
    if description == "fingerprint":
        return {"name": record.name, "fingerprint": record.fingerprint}
    if description.startswith("model"):
        hashes = [item for item in record.model_info_hashes if description.endswith(item[:16])]
        return {"info_hash": hashes[0]} if hashes else {}
    return {"name": record.name, "publisher_key": record.publisher_key}


# --- references ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    kind: str  # name | path | magnet
    text: str
    name: str | None = None
    fingerprint: str | None = None


def parse_reference(text: str, is_file: Callable[[Path], bool] = Path.is_file) -> Reference:
    """A catalog name, name@fingerprint, manifest/torrent path or magnet link; SwarmError otherwise."""
    if text.startswith("magnet:"):
        return Reference("magnet", text)
    path = Path(text).expanduser()
    if path.suffix in (".json", ".torrent") and is_file(path):
        return Reference("path", text)
    if "@" in text:
        name, _, fingerprint = text.rpartition("@")
        fingerprint = fingerprint.lower()
        if not FINGERPRINT_PATTERN.match(fingerprint):
            raise SwarmError(
                f"{text!r}: a publisher fingerprint is 16 hex digits (as `swarm seed` prints), not {fingerprint!r}"
            )
        return Reference("name", text, check_name(name), fingerprint)
    if NAME_PATTERN.match(text):
        return Reference("name", text, text)
    raise SwarmError(f"unknown model {text!r}: not a name, name@fingerprint, manifest or torrent path, or magnet link")


# --- record bundles ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    name: str
    info_hash: str
    torrent_data: bytes
    save_path: Path  # the bundle's files are save_path/NAME/NAME.json and save_path/NAME/NAME.torrent


def records_dir(settings: Settings) -> Path:
    return settings.data / "records"


def build_bundle(name: str, manifest_bytes: bytes, torrent_bytes: bytes, directory: Path) -> Bundle:
    """Make the record bundle torrent (v2, 16 KiB pieces, folder NAME); the same bytes give the same info
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
    check_entry(manifest, torrent_bytes)
    if set(record.model_info_hashes) != set(model_info_hashes(manifest)):
        raise RecordRejected(f"the record of {record.name} names other torrent info hashes than its manifest")
    return manifest


def check_entry(manifest: Manifest, torrent_bytes: bytes) -> None:
    """A manifest and torrent fit to use together: valid signature, the torrent the manifest names."""
    if not manifest.signature_valid():
        raise RecordRejected(f"the manifest of {manifest.name} has an invalid signature")
    try:
        made = describe_torrent(torrent_bytes)
    except RuntimeError as error:
        raise RecordRejected(f"the torrent of {manifest.name} does not parse: {error}") from None
    if (made.info_hash_v1, made.info_hash_v2) != (manifest.torrent.info_hash_v1, manifest.torrent.info_hash_v2):
        raise RecordRejected(f"the torrent of {manifest.name} is not the one its manifest names")


# --- publishing and holding ----------------------------------------------------------------------------


class NameRecordKeeper:
    """Keeps one model findable from this node: seeds its record bundle, announces the node as a holder
    (BEP 5 on the name key) and puts the record into its DHT slots again every refresh interval.

    The publisher (with its key pair) re-puts every slot each time. A holder re-puts the shared slots only
    where they are empty, forged or older (see should_republish); it cannot write the publisher slot.
    Call refresh_if_due() from the loop that pumps the node (it never blocks), close() when done.
    """

    def __init__(
        self,
        node: TorrentNode,
        name: str,
        bundle: Bundle | None,
        record: NameRecord | None,
        publisher: dht.KeyPair | None,
        refresh_interval: float,
    ) -> None:
        self.node = node
        self.name = name
        self.bundle = bundle
        self.record = record
        self.publisher = publisher
        self.refresh_interval = refresh_interval
        self.next_refresh = time.monotonic() + refresh_interval
        self.bundle_key = dht.seed_small_torrent(node, bundle.torrent_data, bundle.save_path) if bundle else None
        # Per slot description: whether a lookup returned the record after publish().
        self.confirmed: dict[str, bool] = {}
        self._pending: dict[dht.Slot, tuple[dht.KeyPair, bytes, str]] = {}
        node.add_listener(self._on_alert)

    def publish(self, timeout: float) -> dict[str, bool]:
        """Announce and put every slot now; returns, per slot, whether a lookup found the record there by
        the deadline (publisher), or {} (holders check the slots in the background)."""
        self._announce()
        if self.record is None:
            return {}
        placements = record_placements(self.record, self.publisher)
        if self.publisher is None:
            self._start_holder_checks(placements)
            return {}
        value = self.record.encode()
        results = dht.put_mutable_items(self.node, [(pair, salt, value) for pair, salt, _ in placements], timeout)
        self.confirmed = {
            description: results.get(dht.Slot(pair.public, salt), False) for pair, salt, description in placements
        }
        return self.confirmed

    def refresh_if_due(self) -> bool:
        if time.monotonic() < self.next_refresh:
            return False
        self.refresh()
        return True

    def refresh(self) -> None:
        self.next_refresh = time.monotonic() + self.refresh_interval
        dht.nudge_bootstrap(self.node)
        self._announce()
        if self.record is None:
            return
        placements = record_placements(self.record, self.publisher)
        if self.publisher is None:
            self._start_holder_checks(placements)
            return
        value = self.record.encode()
        for pair, salt, _ in placements:
            dht.start_put(self.node, pair, salt, value)

    def close(self) -> None:
        if self._on_alert in self.node.listeners:
            self.node.remove_listener(self._on_alert)

    def _announce(self) -> None:
        dht.announce(self.node, name_announce_key(self.name), self.node.listen_port)
        if self.bundle_key is not None:
            dht.force_announce(self.node, self.bundle_key)

    def _start_holder_checks(self, placements: list[tuple[dht.KeyPair, bytes, str]]) -> None:
        for pair, salt, description in placements:
            slot = dht.Slot(pair.public, salt)
            self._pending[slot] = (pair, salt, description)
            dht.start_get(self.node, slot)

    def _on_alert(self, alert: Any) -> None:
        answer = dht.mutable_item_answer(alert)
        if answer is None or self.record is None:
            return
        slot, item, authoritative = answer
        if slot not in self._pending or (item is None and not authoritative):
            return
        # Decide on the first copy found (a lookup that meets a departed node completes only ~15 s later),
        # or on the lookup's end when it found nothing.
        pair, salt, description = self._pending.pop(slot)
        current = item.value if item is not None else None
        if should_republish(current, self.record, **_slot_expectations(self.record, description)):
            dht.start_put(self.node, pair, salt, self.record.encode())


def publish_name_record(
    node: TorrentNode,
    manifest: Manifest,
    manifest_file: Path,
    torrent_data: bytes,
    key: Ed25519PrivateKey,
    settings: Settings,
) -> NameRecordKeeper:
    """Make the model findable by name: wait for the DHT, build and seed the record bundle, sign the record,
    announce, and put the record into every slot, waiting (up to settings.network_timeout) until a lookup
    returns it from each (keeper.confirmed). The caller keeps the returned keeper and calls its
    refresh_if_due() from its pump loop: every settings.dht_refresh_interval seconds it puts and announces
    again. SwarmError when no bootstrap node answers."""
    dht.wait_for_dht(node, settings.bootstrap, settings.network_timeout)
    try:
        manifest_bytes = manifest_file.read_bytes()
    except OSError as error:
        raise SwarmError(f"cannot read {manifest_file}: {error.strerror}") from error
    if manifest.publisher_key != signing.public_key_hex(key):
        raise SwarmError(f"{manifest_file} is signed by another key than this publisher's; publish it again")
    bundle = build_bundle(manifest.name, manifest_bytes, torrent_data, records_dir(settings))
    record = make_record(manifest, manifest_bytes, bundle.info_hash, int(time.time())).signed(key)
    _save_record(bundle, record)
    keeper = NameRecordKeeper(
        node, manifest.name, bundle, record, dht.keypair_from_seed(signing.private_seed(key)),
        settings.dht_refresh_interval,
    )  # fmt: skip
    keeper.publish(settings.network_timeout)
    return keeper


def keep_name_records(node: TorrentNode, manifest: Manifest, settings: Settings) -> NameRecordKeeper | None:
    """For nodes that hold a model (fetch, seedbox, join): seed its record bundle from the catalog, announce
    as a holder, and keep its shared DHT slots filled. None when the catalog lacks the manifest or torrent.
    The caller calls refresh_if_due() from its pump loop and close() at the end."""
    try:
        manifest_bytes = manifest_path(settings.catalog, manifest.name).read_bytes()
        torrent_bytes = torrent_path(settings.catalog, manifest.name).read_bytes()
    except OSError:
        return None
    bundle = build_bundle(manifest.name, manifest_bytes, torrent_bytes, records_dir(settings))
    record = _load_record(bundle)
    keeper = NameRecordKeeper(node, manifest.name, bundle, record, None, settings.dht_refresh_interval)
    if settings.bootstrap:
        keeper.refresh()
    return keeper


def _save_record(bundle: Bundle, record: NameRecord) -> None:
    try:
        (bundle.save_path / f"{bundle.name}.record").write_bytes(record.encode())
    except OSError as error:
        raise SwarmError(f"cannot write the name record under {bundle.save_path}: {error.strerror}") from error


def _load_record(bundle: Bundle) -> NameRecord | None:
    try:
        record = check_record((bundle.save_path / f"{bundle.name}.record").read_bytes(), name=bundle.name)
    except (OSError, RecordRejected):
        return None
    return record if record.bundle_info_hash == bundle.info_hash else None


# --- resolution ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolution:
    manifest: Manifest
    torrent_data: bytes
    source: str  # catalog | file | dht
    manifest_file: Path | None = None
    record: NameRecord | None = None
    holders: tuple[tuple[str, int], ...] = ()


def _print_warning(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_model(
    reference: str,
    node: TorrentNode | None,
    settings: Settings,
    accept_new_key: bool | None = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[Manifest, bytes]:
    """(manifest, model torrent bytes) for a catalog name, name@fingerprint, manifest or torrent path or
    magnet link: the local catalog first, then the DHT (needs `node` and bootstrap nodes in settings)."""
    resolution = resolve_reference(reference, node, settings, accept_new_key, warn)
    return resolution.manifest, resolution.torrent_data


def resolve_reference(
    reference: str,
    node: TorrentNode | None,
    settings: Settings,
    accept_new_key: bool | None = None,
    warn: Callable[[str], None] | None = None,
    transfer_node: TorrentNode | None = None,
) -> Resolution:
    """resolve_model with the details (where the answer came from, the record, the holders).

    transfer_node: a session without DHT for the record bundle's BitTorrent transfer, for short-lived
    read-only clients: a DHT node that transfers over BitTorrent tells its peers its DHT port (BEP 5 PORT
    message) and so enters their routing tables, where it lingers as a dead node once the client exits.
    """
    warn = warn or _print_warning
    accept = settings.accept_new_key if accept_new_key is None else accept_new_key
    parsed = parse_reference(reference)
    if parsed.kind == "path":
        return _from_path(reference, settings)
    local = _from_catalog(parsed, settings)
    if local is not None:
        return local
    wanted = parsed.name or "the magnet link"
    if node is None or not settings.bootstrap:
        raise SwarmError(
            f"{wanted} is not in the catalog {settings.catalog}; give --bootstrap HOST:PORT (or set "
            "SWARM_BOOTSTRAP) to look it up on the DHT"
        )
    deadline = time.monotonic() + settings.network_timeout
    dht.wait_for_dht(node, settings.bootstrap, settings.network_timeout)
    if parsed.kind == "magnet":
        candidates, pin_action = _lookup_magnet(node, parsed.text, settings, accept, warn, deadline)
    else:
        name = parsed.name or check_name(reference)
        candidates, pin_action = _lookup_name(node, name, parsed.fingerprint, settings, accept, warn, deadline)
    return _fetch_verified(node, transfer_node or node, candidates, pin_action, settings, warn, deadline)


def _from_path(reference: str, settings: Settings) -> Resolution:
    manifest, manifest_file = catalog_resolve(reference, settings.catalog)
    torrent_file = manifest_file.with_suffix(".torrent")
    try:
        torrent_data = torrent_file.read_bytes()
    except OSError as error:
        raise SwarmError(f"cannot read the torrent of {manifest.name} ({torrent_file}): {error.strerror}") from error
    check_entry(manifest, torrent_data)
    return Resolution(manifest, torrent_data, "file", manifest_file)


def _from_catalog(reference: Reference, settings: Settings) -> Resolution | None:
    catalog = settings.catalog
    if reference.kind == "magnet":
        hashes = set(dht.parse_magnet(reference.text).info_hashes)
        names = [path.stem for path in sorted(catalog.glob("*.json"))] if catalog.is_dir() else []
    else:
        hashes = set()
        names = [reference.name] if reference.name and manifest_path(catalog, reference.name).is_file() else []
    for name in names:
        try:
            manifest = load_manifest(manifest_path(catalog, name))
        except SwarmError:
            if reference.kind == "magnet":
                continue
            raise
        if hashes and not hashes & set(model_info_hashes(manifest)):
            continue
        if reference.fingerprint and manifest.fingerprint != reference.fingerprint:
            return None  # the catalog holds another publisher's model of that name: ask the DHT
        try:
            torrent_data = torrent_path(catalog, name).read_bytes()
        except OSError as error:
            raise SwarmError(f"the catalog has {name}.json but cannot read {name}.torrent: {error.strerror}") from error
        check_entry(manifest, torrent_data)
        return Resolution(manifest, torrent_data, "catalog", manifest_path(catalog, name))
    return None


def _lookup_name(
    node: TorrentNode,
    name: str,
    requested: str | None,
    settings: Settings,
    accept: bool,
    warn: Callable[[str], None],
    deadline: float,
) -> tuple[list[NameRecord], str]:
    """Records signed by the publisher key the pin policy trusts for `name`, newest first, and the pin action."""
    pins = PinStore.load(settings.home)
    pinned = pins.get(name)
    slots: dict[dht.Slot, dict[str, Any]] = {name_slot(name): {"name": name}}
    if requested:
        slots[fingerprint_slot(name, requested)] = {"name": name, "fingerprint": requested}
    if pinned and (requested is None or signing.fingerprint(pinned) == requested):
        slots[publisher_slot(pinned, name)] = {"name": name, "publisher_key": pinned}
    rejected: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        found = _get_records(node, slots, min(remaining, LOOKUP_ROUND_SECONDS), rejected)
        announced = found.get(name_slot(name))
        others = [record.publisher_key for slot, record in found.items() if slot.salt.startswith(b"publisher/")]
        pinned_found = pinned is not None and publisher_slot(pinned, name) in found
        decision = decide(
            name, requested, pinned, announced.publisher_key if announced else None, others, pinned_found, accept
        )
        if decision.action == REFUSE:
            warn(decision.message or "")
            raise SwarmError((decision.message or "refused").removeprefix("WARNING: "))
        if decision.action != NOT_FOUND and decision.publisher_key is not None:
            if decision.message:
                warn(decision.message)
            key = decision.publisher_key
            own = publisher_slot(key, name)
            if own not in found:
                found.update(
                    _get_records(node, {own: {"name": name, "publisher_key": key}}, _round(deadline), rejected)
                )
            # The publisher slot wins a tie: only the publisher can write it.
            records = sorted(
                (record for slot, record in found.items() if record.publisher_key == key),
                key=lambda record: (record.issued, found.get(own) is record),
                reverse=True,
            )
            return records, decision.action
        time.sleep(RETRY_PAUSE_SECONDS)
    detail = f"; ignored {len(rejected)} invalid record(s): {rejected[-1]}" if rejected else ""
    raise SwarmError(f"no record for {name} was found on the DHT within {settings.network_timeout:g} s{detail}")


def _lookup_magnet(
    node: TorrentNode,
    uri: str,
    settings: Settings,
    accept: bool,
    warn: Callable[[str], None],
    deadline: float,
) -> tuple[list[NameRecord], str]:
    """The record for a magnet's info hash (model slot); failing that, its dn= name's record if that names
    the same torrent. The publisher key goes through the same pin policy as a name."""
    magnet = dht.parse_magnet(uri)
    slots = {model_slot(item): {"info_hash": item} for item in magnet.info_hashes}
    rejected: list[str] = []
    while time.monotonic() < deadline:
        found = _get_records(node, slots, _round(deadline), rejected)
        if found:
            record = max(found.values(), key=lambda item: item.issued)
            pins = PinStore.load(settings.home)
            decision = decide(record.name, None, pins.get(record.name), record.publisher_key, (), False, accept)
            if decision.action == REFUSE:
                warn(decision.message or "")
                raise SwarmError((decision.message or "refused").removeprefix("WARNING: "))
            if decision.message:
                warn(decision.message)
            return [record], decision.action
        if magnet.name and NAME_PATTERN.match(magnet.name):
            records, action = _lookup_name(node, magnet.name, None, settings, accept, warn, deadline)
            matching = [record for record in records if set(magnet.info_hashes) & set(record.model_info_hashes)]
            if matching:
                return matching, action
            raise SwarmError(f"the DHT record of {magnet.name} names another torrent than the magnet link")
        time.sleep(RETRY_PAUSE_SECONDS)
    detail = f"; ignored {len(rejected)} invalid record(s): {rejected[-1]}" if rejected else ""
    raise SwarmError(
        f"no swarm record for the magnet's torrent {magnet.info_hashes[0][:16]} was found on the DHT "
        f"within {settings.network_timeout:g} s{detail}"
    )


def _round(deadline: float) -> float:
    return max(0.1, min(deadline - time.monotonic(), LOOKUP_ROUND_SECONDS))


def _get_records(
    node: TorrentNode, slots: dict[dht.Slot, dict[str, Any]], timeout: float, rejected: list[str]
) -> dict[dht.Slot, NameRecord]:
    """One lookup of every slot; the records that verify and belong there (rejections noted, not raised)."""
    items = dht.get_mutable_items(node, slots, timeout)
    found = {}
    for slot, item in items.items():
        if item is None:
            continue
        try:
            found[slot] = check_record(item.value, **slots[slot])
        except RecordRejected as error:
            rejected.append(str(error))
    return found


def _fetch_verified(
    node: TorrentNode,
    transfer_node: TorrentNode,
    candidates: list[NameRecord],
    pin_action: str,
    settings: Settings,
    warn: Callable[[str], None],
    deadline: float,
) -> Resolution:
    """Download the bundle of the newest candidate record that verifies; catalog it, pin its publisher."""
    problems = []
    for record in candidates:
        holders = _bundle_holders(node, record, deadline, required=transfer_node is not node)
        save_path = records_dir(settings) / record.bundle_info_hash[:16]
        try:
            folder = dht.download_small_torrent(
                transfer_node, record.bundle_info_hash, save_path, holders, _round(deadline), MAX_BUNDLE_BYTES
            )
            manifest_bytes = (folder / f"{record.name}.json").read_bytes()
            torrent_bytes = (folder / f"{record.name}.torrent").read_bytes()
            manifest = check_bundle(record, manifest_bytes, torrent_bytes)
        except (SwarmError, OSError) as error:
            problems.append(str(error) if isinstance(error, SwarmError) else f"bundle incomplete: {error}")
            continue
        bundle = Bundle(record.name, record.bundle_info_hash, b"", save_path)
        _save_record(bundle, record)
        stored = _catalog_entry(settings, manifest, manifest_bytes, torrent_bytes, warn)
        if pin_action in (PIN, REPIN):
            pins = PinStore.load(settings.home)
            pins.set(record.name, record.publisher_key)
            pins.save()
        return Resolution(manifest, torrent_bytes, "dht", stored, record, tuple(holders))
    raise SwarmError(f"found a record for {candidates[0].name} but not a usable manifest: {'; '.join(problems)}")


def _bundle_holders(node: TorrentNode, record: NameRecord, deadline: float, required: bool) -> list[tuple[str, int]]:
    """BitTorrent addresses of the bundle's seeders: nodes announced on the name key, and on the bundle's
    own info hash (libtorrent announces every torrent it seeds). Looked for until one is found when the
    transfer session has no DHT of its own (required), else briefly."""
    keys = [name_announce_key(record.name), dht.info_hash_key(record.bundle_info_hash)]
    while True:
        holders = dht.get_peers(node, keys, min(HOLDER_LOOKUP_SECONDS, _round(deadline)))
        if holders or not required or time.monotonic() >= deadline:
            return holders


def _catalog_entry(
    settings: Settings, manifest: Manifest, manifest_bytes: bytes, torrent_bytes: bytes, warn: Callable[[str], None]
) -> Path | None:
    """Keep what the DHT gave in the catalog (byte for byte, so the bundle can be rebuilt from it), unless the
    catalog already holds another publisher's model under that name."""
    catalog = settings.catalog
    target = manifest_path(catalog, manifest.name)
    if target.is_file():
        try:
            existing = load_manifest(target)
        except SwarmError:
            existing = None
        if existing is not None and existing.publisher_key != manifest.publisher_key:
            warn(
                f"note: the catalog's {manifest.name} is from publisher {existing.fingerprint}; the DHT's "
                f"(from {manifest.fingerprint}) was not saved over it"
            )
            return None
    try:
        catalog.mkdir(parents=True, exist_ok=True)
        for path, data in ((torrent_path(catalog, manifest.name), torrent_bytes), (target, manifest_bytes)):
            temporary = path.with_name(path.name + ".tmp")
            temporary.write_bytes(data)
            temporary.replace(path)
    except OSError as error:
        raise SwarmError(f"cannot write {manifest.name} into the catalog {catalog}: {error.strerror}") from error
    return target


# --- compute peers -------------------------------------------------------------------------------------


def announce_compute_peer(node: TorrentNode, manifest: Manifest, port: int) -> None:
    """Announce this machine's compute (ZeroMQ) port for the model, BEP 5 with an explicit port.

    Announcements expire after about 30 minutes on the DHT: call this again every few minutes
    (settings.announce_interval). It does not block; when the routing table is still empty the
    bootstrap nodes are added again and the next call reaches the DHT.
    """
    dht.nudge_bootstrap(node)
    dht.announce(node, compute_key(manifest), port)


def find_compute_peers(node: TorrentNode, manifest: Manifest, timeout: float) -> list[tuple[str, int]]:
    """(host, port) of compute peers announced for the model; [] when none answered within timeout.

    SwarmError only when the DHT cannot be reached at all (no bootstrap node answers)."""
    deadline = time.monotonic() + timeout
    dht.wait_for_dht(node, dht.bootstrap_of(node), timeout)
    return dht.get_peers(node, compute_key(manifest), max(0.1, deadline - time.monotonic()))


def holders_of(node: TorrentNode, name: str, timeout: float) -> list[tuple[str, int]]:
    """BitTorrent addresses of nodes that announced they hold `name`'s record bundle."""
    return dht.get_peers(node, name_announce_key(name), timeout)


def as_addresses(peers: Iterable[tuple[str, int]]) -> list[str]:
    return [f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in peers]
