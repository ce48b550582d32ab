"""Where records and announcements live on the DHT (pure derivations): BEP 44 slots and BEP 5 keys.

- publisher slot: the publisher's own key, salt "swarm/model/" + hex(sha1(name)). Only the publisher can write
  it, so once a client knows the key this slot carries updates.
- name slot: a key pair anyone can derive from the name (seed sha256("swarm/name/" + name)), empty salt. This is
  how a plain name is found. Anyone can overwrite it, which is why the record inside is signed by the publisher
  and checked, and why the first key seen is pinned (swarm/pins.py).
- fingerprint slot: the same derived key, salt "publisher/" + fingerprint, for `name@fingerprint`.
- claims slot: the same derived key, salt "claims": the fingerprints of every publisher whose record holds the name
  (swarm.discovery.claims), so that a name with two publishers is seen to have two.
- model slot: a key pair derived from a model torrent info hash (seed sha256("swarm/manifest-of/" + hex)), for
  magnet links.

Holders of a model seed its record bundle and announce (BEP 5) on sha1("swarm/name/" + name); compute peers
announce their ZeroMQ port on sha1("swarm/compute/" + info hash), and the port their own key answers at on
sha1("swarm/peer-key/" + key).
"""

from __future__ import annotations

import hashlib
from typing import Any

from swarm.discovery.records import NameRecord, primary_info_hash
from swarm.manifest import Manifest
from swarm.torrent import dht


def name_keypair(name: str) -> dht.KeyPair:
    return dht.keypair_from_seed(hashlib.sha256(b"swarm/name/" + name.encode()).digest())


def model_keypair(info_hash: str) -> dht.KeyPair:
    return dht.keypair_from_seed(hashlib.sha256(b"swarm/manifest-of/" + info_hash.lower().encode()).digest())


def publisher_salt(name: str) -> bytes:
    # BEP 44 salts hold at most 64 bytes and names up to 128 characters, hence a digest; in hex, because
    # libtorrent's alert.message() fails on a salt that is not UTF-8.
    return b"swarm/model/" + hashlib.sha1(name.encode()).hexdigest().encode()


CLAIMS_SALT = b"claims"


def fingerprint_salt(fingerprint: str) -> bytes:
    return b"publisher/" + fingerprint.encode()


def publisher_slot(publisher_key: str, name: str) -> dht.Slot:
    return dht.Slot(bytes.fromhex(publisher_key), publisher_salt(name))


def name_slot(name: str) -> dht.Slot:
    return dht.Slot(name_keypair(name).public, b"")


def fingerprint_slot(name: str, fingerprint: str) -> dht.Slot:
    return dht.Slot(name_keypair(name).public, fingerprint_salt(fingerprint))


def claims_slot(name: str) -> dht.Slot:
    return dht.Slot(name_keypair(name).public, CLAIMS_SALT)


def model_slot(info_hash: str) -> dht.Slot:
    return dht.Slot(model_keypair(info_hash).public, b"")


def name_announce_key(name: str) -> bytes:
    return dht.derived_key(b"swarm/name/" + name.encode())


def compute_key(manifest: Manifest) -> bytes:
    return dht.derived_key(b"swarm/compute/" + primary_info_hash(manifest).encode())


def peer_key_target(key: str) -> bytes:
    """Where a peer announces the port its own CURVE key (Z85) answers at: DHT nodes list the announcer's source IP
    there, so only the machine at that IP can appear under the key (see swarm.discovery.compute)."""
    return dht.derived_key(b"swarm/peer-key/" + key.encode("ascii"))


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


def slot_expectations(record: NameRecord, description: str) -> dict[str, Any]:
    """check_record's keyword arguments for a slot, by its description in record_placements."""
    if description == "name":
        return {"name": record.name}
    if description == "fingerprint":
        return {"name": record.name, "fingerprint": record.fingerprint}
    if description.startswith("model"):
        hashes = [item for item in record.model_info_hashes if description.endswith(item[:16])]
        return {"info_hash": hashes[0]} if hashes else {}
    return {"name": record.name, "publisher_key": record.publisher_key}
