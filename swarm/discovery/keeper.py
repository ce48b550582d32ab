"""Keeping a model findable by name from every node that holds it.

A node holding a catalog entry seeds the entry's record bundle, announces itself as a holder (BEP 5 on the name
key) and keeps the signed record (NAME.record, written by `swarm seed`) in the DHT slots, through its Presence,
which publishes again every refresh and whenever the routing table grows. The publisher (its key is in this
node's home) puts every slot, its own included; any other holder puts the shared slots only where they are
empty, forged or hold an older record of the same publisher (should_republish), and cannot write the
publisher's slot. So a name stays resolvable as long as anyone holds the model. Every holder also adds the
record's publisher to the name's claims (swarm.discovery.claims), so a second publisher of the name is seen.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarm import signing
from swarm.config import Settings
from swarm.discovery.bundle import Bundle, catalog_bundle, load_record, write_name_record
from swarm.discovery.claims import encode_claims, with_claim
from swarm.discovery.records import NameRecord, should_republish
from swarm.discovery.slots import CLAIMS_SALT, name_announce_key, name_keypair, record_placements, slot_expectations
from swarm.manifest import Manifest
from swarm.torrent import dht
from swarm.torrent.presence import Item, Presence
from swarm.torrent.session import TorrentNode


@dataclass(frozen=True)
class HeldName:
    bundle: Bundle
    record: NameRecord | None
    # The publisher's key pair when this node is the publisher (it may write the publisher slot).
    publisher: dht.KeyPair | None

    def slots(self) -> dict[dht.Slot, str]:
        """Every slot this node puts the record into, with its description (name, fingerprint, ...)."""
        if self.record is None:
            return {}
        placements = record_placements(self.record, self.publisher)
        return {dht.Slot(pair.public, salt): description for pair, salt, description in placements}


def hold_name(
    node: TorrentNode,
    presence: Presence,
    manifest: Manifest,
    settings: Settings,
    key: Ed25519PrivateKey | None = None,
) -> HeldName | None:
    """Make this node keep `manifest`'s name findable; None when the catalog lacks the entry's files.

    With the publisher's `key`, a missing or stale record is signed anew and every slot is put."""
    bundle = catalog_bundle(manifest, settings)
    if bundle is None:
        return None
    record = load_record(settings.catalog, bundle)
    publisher = None
    if key is not None and signing.public_key_hex(key) == manifest.publisher_key:
        if record is None:
            bundle, record = write_name_record(manifest, key, settings)
        publisher = dht.keypair_from_seed(signing.private_seed(key))
    dht.seed_small_torrent(node, bundle.torrent_data, bundle.save_path)
    presence.announce(name_announce_key(manifest.name))
    if record is not None:
        value = record.encode()
        for pair, salt, description in record_placements(record, publisher):
            expected = slot_expectations(record, description)

            def update(current: bytes | None, expected: dict = expected) -> bytes | None:
                return value if should_republish(current, record, **expected) else None

            presence.put(Item(pair, salt, value, None if publisher is not None else update))
        fingerprint = record.fingerprint
        claim = encode_claims((fingerprint,))
        presence.put(Item(name_keypair(record.name), CLAIMS_SALT, claim, lambda held: with_claim(held, fingerprint)))
    return HeldName(bundle, record, publisher)


def confirm_records(node: TorrentNode, held: HeldName, timeout: float) -> dict[str, bool]:
    """Per slot description, whether a lookup returns our record from it by the deadline."""
    if held.record is None:
        return {}
    slots = held.slots()
    value = held.record.encode()
    confirmed = dht.wait_for_values(node, dict.fromkeys(slots, value), timeout)
    return {description: confirmed[slot] for slot, description in slots.items()}
