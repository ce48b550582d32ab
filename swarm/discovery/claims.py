"""Who claims a name (pure): the fingerprints of every publisher whose record holds a name, kept in one shared
DHT slot beside the name's record slot.

The name slot holds one record at a time, so two publishers of one name would each see only whichever put last,
and a squatter who puts after the real publisher would be pinned by everyone resolving the name for the first
time. Every holder therefore also adds its publisher's fingerprint to the name's claims (merging, never
replacing), and a resolver that has nothing pinned refuses a name with records from more than one key, listing
their fingerprints (swarm.pins). A claim is only a pointer: it counts when the fingerprint slot it names holds a
record signed by that key. Anyone can write the slot, so its bytes are hostile: decoding ignores what is not a
fingerprint, and its size is bounded.
"""

from __future__ import annotations

from swarm.torrent.bencode import BencodeError, bdecode, bencode

# Fingerprints kept in the slot (8 bytes each, bencoded about 10): well inside BEP 44's 1000 bytes.
MAX_CLAIMS = 32
FINGERPRINT_BYTES = 8


def decode_claims(value: bytes | None) -> tuple[str, ...]:
    """The fingerprints (hex) a claims slot holds, in its order; () for nothing, garbage or a wrong shape."""
    if value is None:
        return ()
    try:
        items = bdecode(value)
    except BencodeError:
        return ()
    if not isinstance(items, list):
        return ()
    found = [item.hex() for item in items if isinstance(item, bytes) and len(item) == FINGERPRINT_BYTES]
    return tuple(dict.fromkeys(found))[:MAX_CLAIMS]


def encode_claims(fingerprints: tuple[str, ...]) -> bytes:
    return bencode([bytes.fromhex(item) for item in fingerprints[:MAX_CLAIMS]])


def with_claim(current: bytes | None, fingerprint: str) -> bytes | None:
    """The claims to put over `current` so that they hold `fingerprint`; None when they already do.

    Ours goes first and the oldest others drop off when the slot is full: a flood of invented fingerprints then
    pushes out no real claimant for longer than the claimant's next refresh."""
    held = decode_claims(current)
    if fingerprint in held and current == encode_claims(held):
        return None
    others = tuple(item for item in held if item != fingerprint)
    return encode_claims((fingerprint, *others))
