"""Model resolution, the one way: a catalog name, name@fingerprint, manifest or torrent path, or magnet link
becomes a verified (manifest, torrent): the local catalog first, then the DHT.

On the DHT: the name's records are looked up in their slots (swarm.discovery.slots), checked against the pin
policy (swarm.pins), the record bundle is downloaded from a holder over BitTorrent and verified against the
record, and the entry (manifest, torrent, record) is kept in the catalog, so this node can hold the name too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm import signing
from swarm.address import Address
from swarm.catalog import (
    NAME_PATTERN,
    check_entry,
    check_name,
    find_by_info_hash,
    manifest_path,
    torrent_path,
    write_atomically,
)
from swarm.catalog import resolve as catalog_resolve
from swarm.config import Settings
from swarm.discovery.bundle import MAX_BUNDLE_BYTES, check_bundle, records_dir, save_record
from swarm.discovery.claims import decode_claims
from swarm.discovery.records import FINGERPRINT_PATTERN, NameRecord, RecordRejected, check_record
from swarm.discovery.slots import (
    claims_slot,
    fingerprint_slot,
    model_slot,
    name_announce_key,
    name_slot,
    publisher_slot,
)
from swarm.errors import SwarmError
from swarm.manifest import Manifest, load_manifest
from swarm.pins import NOT_FOUND, PIN, REFUSE, REPIN, PinStore, decide
from swarm.torrent import dht
from swarm.torrent.session import TorrentNode

# One DHT lookup round; lookups are repeated until found or the overall deadline.
LOOKUP_ROUND_SECONDS = 3.0
RETRY_PAUSE_SECONDS = 0.5
HOLDER_LOOKUP_SECONDS = 3.0


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


@dataclass(frozen=True)
class Resolution:
    manifest: Manifest
    torrent_data: bytes
    source: str  # catalog | file | dht
    manifest_file: Path | None = None
    record: NameRecord | None = None
    holders: tuple[Address, ...] = ()


def _print_warning(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_model(
    reference: str,
    settings: Settings,
    node: TorrentNode | None = None,
    *,
    accept_new_key: bool | None = None,
    warn: Callable[[str], None] | None = None,
    transfer_node: TorrentNode | None = None,
) -> Resolution:
    """The verified manifest and torrent of `reference`, with where they came from (and the record and
    holders when from the DHT). The DHT is asked only when the catalog cannot answer; it needs `node`.

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
    if node is None or not node.bootstrap:
        raise SwarmError(
            f"{wanted} is not in the catalog {settings.catalog}; give --bootstrap HOST:PORT (or set "
            "SWARM_BOOTSTRAP) to look it up on the DHT"
        )
    deadline = time.monotonic() + settings.network_timeout
    dht.wait_for_dht(node, settings.network_timeout)
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
        name = find_by_info_hash(catalog, set(dht.parse_magnet(reference.text).info_hashes))
    else:
        name = reference.name if reference.name and manifest_path(catalog, reference.name).is_file() else None
    if name is None:
        return None
    manifest = load_manifest(manifest_path(catalog, name))
    if reference.fingerprint and manifest.fingerprint != reference.fingerprint:
        return None  # the catalog holds another publisher's model of that name: ask the DHT
    try:
        torrent_data = torrent_path(catalog, name).read_bytes()
    except OSError as error:
        raise SwarmError(f"the catalog has {name}.json but cannot read {name}.torrent: {error.strerror}") from error
    check_entry(manifest, torrent_data)
    return Resolution(manifest, torrent_data, "catalog", manifest_path(catalog, name))


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
    # With nothing pinned or named, every claimant of the name is looked at: several keys are refused.
    claims_of = name if pinned is None and requested is None else None
    rejected: list[str] = []
    follow = _publisher_slot_follower(name, slots)
    rounds, refusal = 0, None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        rounds += 1
        found = _get_records(node, slots, min(remaining, LOOKUP_ROUND_SECONDS), rejected, claims_of, follow)
        announced = found.get(name_slot(name))
        others = [record.publisher_key for slot, record in found.items() if slot.salt.startswith(b"publisher/")]
        pinned_found = pinned is not None and publisher_slot(pinned, name) in found
        decision = decide(
            name, requested, pinned, announced.publisher_key if announced else None, others, pinned_found, accept
        )
        # A changed key is refused only after the pinned publisher's own slot missed two rounds: one round can
        # miss a record that is there, and while it is found the pin wins.
        refusal = (decision.message or "refused") if decision.action == REFUSE else None
        if refusal and (pinned_found or requested or pinned is None or rounds >= 2):
            break
        if decision.action not in (NOT_FOUND, REFUSE) and decision.publisher_key is not None:
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
    if refusal:
        warn(refusal)
        raise SwarmError(refusal.removeprefix("WARNING: "))
    detail = f"; ignored {len(rejected)} invalid record(s): {rejected[-1]}" if rejected else ""
    raise SwarmError(f"no record for {name} was found on the DHT within {settings.network_timeout:g} s{detail}")


def _publisher_slot_follower(
    name: str, slots: dict[dht.Slot, dict[str, Any]]
) -> Callable[[dht.Slot, dht.MutableItem], list[dht.Slot]]:
    """For get_mutable_items: when the name slot's record arrives, ask its publisher's own slot in the same
    lookup (added to `slots`, so it is checked as a record of that publisher). That slot wins a tie, so it is
    asked anyway once a key is chosen; asked here, its wait overlaps the name's (1 s of a join's start)."""
    announced = name_slot(name)

    def follow(slot: dht.Slot, item: dht.MutableItem) -> list[dht.Slot]:
        if slot != announced:
            return []
        try:
            key = check_record(item.value, **slots[slot]).publisher_key
        except RecordRejected:
            return []
        own = publisher_slot(key, name)
        slots.setdefault(own, {"name": name, "publisher_key": key})
        return [own]

    return follow


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
    node: TorrentNode,
    slots: dict[dht.Slot, dict[str, Any]],
    timeout: float,
    rejected: list[str],
    claims_of: str | None = None,
    follow: Callable[[dht.Slot, dht.MutableItem], list[dht.Slot]] | None = None,
) -> dict[dht.Slot, NameRecord]:
    """One lookup of every slot; the records that verify and belong there (rejections noted, not raised).

    With `claims_of` (a name), the name's claims are read too, and the fingerprint slots of claimants not found
    yet are looked up (and added to `slots`, so later rounds ask them at once). `follow` adds slots to the
    lookup as items arrive (it must add them to `slots` too)."""
    claims = [claims_slot(claims_of)] if claims_of else []
    items = dht.get_mutable_items(node, [*slots, *claims], timeout, follow=follow)
    claimed = decode_claims(item.value if claims and (item := items.pop(claims[0], None)) else None)
    found = _checked(items, slots, rejected)
    if claims_of:
        known = {record.fingerprint for record in found.values()}
        added = {
            fingerprint_slot(claims_of, item): {"name": claims_of, "fingerprint": item}
            for item in claimed
            if item not in known and fingerprint_slot(claims_of, item) not in slots
        }
        if added:
            slots.update(added)
            found.update(_checked(dht.get_mutable_items(node, added, timeout), slots, rejected))
    return found


def _checked(
    items: dict[dht.Slot, dht.MutableItem | None], slots: dict[dht.Slot, dict[str, Any]], rejected: list[str]
) -> dict[dht.Slot, NameRecord]:
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
        stored = _catalog_entry(settings, manifest, manifest_bytes, torrent_bytes, warn)
        if stored is not None:
            save_record(settings.catalog, record)
        if pin_action in (PIN, REPIN):
            pins = PinStore.load(settings.home)
            pins.set(record.name, record.publisher_key)
            pins.save()
        return Resolution(manifest, torrent_bytes, "dht", stored, record, tuple(holders))
    raise SwarmError(f"found a record for {candidates[0].name} but not a usable manifest: {'; '.join(problems)}")


def _bundle_holders(node: TorrentNode, record: NameRecord, deadline: float, required: bool) -> list[Address]:
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
        write_atomically(torrent_path(catalog, manifest.name), torrent_bytes)
        write_atomically(target, manifest_bytes)
    except OSError as error:
        raise SwarmError(f"cannot write {manifest.name} into the catalog {catalog}: {error.strerror}") from error
    return target
