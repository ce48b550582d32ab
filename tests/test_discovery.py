"""The pure parts of discovery, as tables: bencoding, name records and their checks, slots, pin decisions,
references, record bundles. No network here (see test_dht.py for real DHT nodes)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarm import signing
from swarm.discovery import slots
from swarm.discovery.bundle import build_bundle, check_bundle
from swarm.discovery.claims import decode_claims, encode_claims, with_claim
from swarm.discovery.records import (
    NameRecord,
    RecordRejected,
    check_record,
    decode_record,
    make_record,
    should_republish,
)
from swarm.discovery.resolve import parse_reference, resolve_model
from swarm.errors import SwarmError
from swarm.manifest import Manifest, TorrentInfo
from swarm.pins import NOT_FOUND, PIN, REFUSE, REPIN, USE, PinStore, decide
from swarm.torrent import dht
from swarm.torrent.bencode import BencodeError, bdecode, bencode
from swarm.torrent.create import make_torrent

KEY_A = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KEY_B = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
PUBLIC_A = signing.public_key_hex(KEY_A)
PUBLIC_B = signing.public_key_hex(KEY_B)
FP_A = signing.fingerprint(PUBLIC_A)
FP_B = signing.fingerprint(PUBLIC_B)
V2_HASH = "ab" * 32
V1_HASH = "cd" * 20


def record(name: str = "mixtral", key: Ed25519PrivateKey = KEY_A, issued: int = 1000, **changes: Any) -> NameRecord:
    unsigned = NameRecord(
        name=name,
        publisher_key="00" * 32,
        manifest_sha256="11" * 32,
        bundle_info_hash="22" * 32,
        model_info_hashes=(V2_HASH, V1_HASH),
        issued=issued,
    )
    return replace(unsigned, **changes).signed(key)


# --- bencode -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, encoded",
    [
        (0, b"i0e"),
        (-7, b"i-7e"),
        (b"", b"0:"),
        (b"spam", b"4:spam"),
        ([1, b"a"], b"li1e1:ae"),
        ({b"b": 1, b"a": [b"x"]}, b"d1:al1:xe1:bi1ee"),
    ],
)
def test_bencode_round_trip(value: Any, encoded: bytes) -> None:
    assert bencode(value) == encoded
    assert bdecode(encoded) == value


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"i01e",  # leading zero
        b"i-0e",
        b"ie",
        b"03:abc",  # leading zero in a length
        b"5:abc",  # runs past the end
        b"d1:bi1e1:ai2ee",  # keys not sorted
        b"d1:ai1e1:ai2ee",  # repeated key
        b"di1ei2ee",  # integer key
        b"i1ei2e",  # trailing bytes
        b"l" * 20 + b"e" * 20,  # nested too deeply
        b"x",
        b"i1exyz",  # trailing garbage (libtorrent stops after the first value)
        b"4:spam\x00",  # one trailing byte
        b"i+1e",
        b"i 1e",
        b"i1.5e",
        b"i9223372036854775808e",  # past 63 bits: libtorrent wraps it to 0
        b"i-9223372036854775808e",  # the lowest 64-bit integer: libtorrent's decoder reads it as 0
        b"i-9223372036854775809e",
        b"i99999999999999999999999e",
        b"-1:a",  # negative length
        b"d1:a",  # dictionary without a value or an end
        b"di1ee",  # dictionary key and value missing
        b"d1:ai1e",  # unterminated dictionary
        b"li1e",  # unterminated list
        b"l" * 9 + b"i1e" + b"e" * 9,  # a value below the eighth level
        b"l" * 120 + b"e" * 120,  # past libtorrent's own depth limit
    ],
)
def test_bdecode_rejects_non_canonical_input(data: bytes) -> None:
    with pytest.raises(BencodeError):
        bdecode(data)


@pytest.mark.parametrize(
    "data, max_depth",
    [
        (b"l" * 8 + b"i1e" + b"e" * 8, 8),  # a value on the eighth level
        (b"l" * 9 + b"e" * 9, 8),  # an empty list there
        (b"i9223372036854775807e", 8),
        (b"i-9223372036854775807e", 8),
        (b"d1:ad1:bi1eee", 2),
    ],
)
def test_bdecode_accepts_canonical_input_up_to_the_depth(data: bytes, max_depth: int) -> None:
    assert bencode(bdecode(data, max_depth=max_depth)) == data


@pytest.mark.parametrize(
    "value, error",
    [
        (True, TypeError),  # libtorrent would write i1e
        (None, TypeError),  # libtorrent would write an empty string
        (1.5, TypeError),
        (bytearray(b"x"), TypeError),
        ({1: b"x"}, TypeError),
        ({b"a": 1, "a": 2}, TypeError),  # the same key twice (libtorrent would drop one)
        ([b"ok", object()], TypeError),
        (2**63, OverflowError),
        (-(2**63) - 1, OverflowError),
    ],
)
def test_bencode_refuses_what_it_cannot_encode_faithfully(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        bencode(value)


def test_bencode_writes_str_as_utf8_and_tuples_as_lists() -> None:
    assert bencode({"é": ("a", 1)}) == b"d2:\xc3\xa9l1:ai1eee"


# --- records -------------------------------------------------------------------------------------------


def test_record_round_trip_and_size() -> None:
    original = record(name="m" * 128)
    encoded = original.encode()
    # BEP 44: the bencoded value (the binding wraps our bytes in one string) must fit in 1000 bytes.
    assert len(encoded) + len(str(len(encoded))) + 1 <= dht.MAX_ITEM_BYTES
    decoded = decode_record(encoded)
    assert decoded == original
    assert decoded.publisher_key == PUBLIC_A
    assert decoded.fingerprint == FP_A


def test_record_keeps_unknown_fields_under_the_signature() -> None:
    newer = record(unknown={b"zzz_future": b"kept"})
    decoded = decode_record(newer.encode())
    assert decoded.unknown == {b"zzz_future": b"kept"}
    fields = bdecode(newer.encode())
    fields[b"zzz_future"] = b"changed"
    with pytest.raises(RecordRejected, match="does not verify"):
        decode_record(bencode(fields))


def _tampered(field: bytes, value: Any) -> bytes:
    fields = bdecode(record().encode())
    if value is None:
        del fields[field]
    else:
        fields[field] = value
    return bencode(fields)


@pytest.mark.parametrize(
    "value, reason",
    [
        (b"not bencoded", "not a bencoded record"),
        (bencode([1, 2]), "expected a dictionary"),
        (_tampered(b"name", b"other"), "does not verify"),
        (_tampered(b"manifest_sha256", b"\x12" * 32), "does not verify"),
        (_tampered(b"bundle_info_hash", b"\x23" * 32), "does not verify"),
        (_tampered(b"issued", 999999), "does not verify"),
        (_tampered(b"publisher_key", bytes.fromhex(PUBLIC_B)), "does not verify"),
        (_tampered(b"signature", b"\x00" * 64), "does not verify"),
        (_tampered(b"signature", None), "no valid signature"),
        (_tampered(b"signature", b"short"), "no valid signature"),
        (_tampered(b"format", 2), "newer than this swarm reads"),
        (_tampered(b"format", b"1"), "no valid format"),
        (_tampered(b"name", b"../etc"), "no valid model name"),
        (_tampered(b"name", b"\xff\xfe"), "no valid model name"),
        (_tampered(b"model_info_hashes", []), "model_info_hashes"),
        (_tampered(b"model_info_hashes", [b"\x00" * 19]), "model_info_hashes"),
        (_tampered(b"publisher_key", b"\x00" * 31), "publisher_key"),
        (_tampered(b"issued", -1), "issue time"),
    ],
)
def test_decode_record_rejects(value: bytes, reason: str) -> None:
    with pytest.raises(RecordRejected, match=reason):
        decode_record(value)


def test_record_signature_is_not_a_manifest_signature() -> None:
    """The signing context keeps a record signature from verifying over the bare bencoding."""
    signed = record()
    assert signed.signature is not None
    assert not signing.verify(PUBLIC_A, signed.signature, bencode(signed.unsigned_fields()))


@pytest.mark.parametrize(
    "expectations, reason",
    [
        ({"name": "mixtral"}, None),
        ({"name": "other"}, "not 'other'"),
        ({"publisher_key": PUBLIC_A}, None),
        ({"publisher_key": PUBLIC_B}, "not the slot's owner"),
        ({"fingerprint": FP_A}, None),
        ({"fingerprint": FP_B}, f"not {FP_B}"),
        ({"info_hash": V1_HASH}, None),
        ({"info_hash": "ef" * 32}, "not for torrent"),
    ],
)
def test_check_record_matches_the_slot(expectations: dict[str, str], reason: str | None) -> None:
    encoded = record().encode()
    if reason is None:
        assert check_record(encoded, **expectations).name == "mixtral"
    else:
        with pytest.raises(RecordRejected, match=reason):
            check_record(encoded, **expectations)


@pytest.mark.parametrize(
    "current, republish",
    [
        (None, True),  # empty slot
        (b"garbage", True),
        (_tampered(b"name", b"other"), True),  # forged: invalid signature
        (record(issued=999).encode(), True),  # older, same publisher
        (record(issued=1000).encode(), False),  # same age
        (record(issued=2000).encode(), False),  # newer
        (record(key=KEY_B, issued=1).encode(), False),  # another publisher: not a holder's fight
        (record(name="other").encode(), True),  # a record for another name does not belong in this slot
    ],
)
def test_should_republish(current: bytes | None, republish: bool) -> None:
    assert should_republish(current, record(), name="mixtral") is republish


# --- slots and keys ------------------------------------------------------------------------------------


def test_keypair_from_seed_matches_the_publisher_key() -> None:
    seed = signing.private_seed(KEY_A)
    pair = dht.keypair_from_seed(seed)
    assert pair.public.hex() == PUBLIC_A
    assert len(pair.secret) == 64
    # The clamped scalar of RFC 8032, then the nonce half of SHA-512(seed).
    digest = hashlib.sha512(seed).digest()
    assert pair.secret[32:] == digest[32:]
    assert pair.secret[0] & 7 == 0 and pair.secret[31] & 0xC0 == 0x40


def test_slots_are_deterministic_distinct_and_fit_bep44() -> None:
    long_name = "n" * 128
    assert slots.name_slot("a") == slots.name_slot("a")
    assert slots.name_slot("a") != slots.name_slot("b")
    assert slots.name_slot("a").public_key != slots.model_slot(V2_HASH).public_key
    assert slots.fingerprint_slot("a", FP_A) != slots.fingerprint_slot("a", FP_B)
    assert len(slots.publisher_salt(long_name)) <= dht.MAX_SALT_BYTES
    assert len(slots.fingerprint_salt(FP_A)) <= dht.MAX_SALT_BYTES
    assert slots.publisher_slot(PUBLIC_A, "a").public_key.hex() == PUBLIC_A
    assert slots.name_announce_key("a") == hashlib.sha1(b"swarm/name/a").digest()
    placements = slots.record_placements(record(), dht.keypair_from_seed(signing.private_seed(KEY_A)))
    assert [description for _, _, description in placements] == [
        "publisher",
        "name",
        "fingerprint",
        f"model {V2_HASH[:16]}",
        f"model {V1_HASH[:16]}",
    ]
    assert len({(pair.public, salt) for pair, salt, _ in placements}) == len(placements)
    # Without the publisher's key pair (a holder), the publisher slot is left out.
    assert "publisher" not in [d for _, _, d in slots.record_placements(record(), None)]


# --- pin decisions -------------------------------------------------------------------------------------

PIN_CASES = [
    # name, requested fp, pinned, announced, other keys, pinned record found, accept → action, key, message part
    ("first use pins", None, None, PUBLIC_A, (), False, False, PIN, PUBLIC_A, "first use"),
    ("nothing found", None, None, None, (), False, False, NOT_FOUND, None, None),
    ("same key", None, PUBLIC_A, PUBLIC_A, (), True, False, USE, PUBLIC_A, None),
    ("pointer gone, pinned record there", None, PUBLIC_A, None, (), True, False, USE, PUBLIC_A, None),
    ("pointer gone, nothing", None, PUBLIC_A, None, (), False, False, NOT_FOUND, None, None),
    ("key changed: refuse", None, PUBLIC_A, PUBLIC_B, (), False, False, REFUSE, None, f"{FP_B}"),
    ("rival in the name slot", None, PUBLIC_A, PUBLIC_B, (), True, False, USE, PUBLIC_A, f"also published by {FP_B}"),
    ("rival in the slot, accepted", None, PUBLIC_A, PUBLIC_B, (), True, True, REPIN, PUBLIC_B, "WARNING"),
    ("key changed, accepted", None, PUBLIC_A, PUBLIC_B, (), False, True, REPIN, PUBLIC_B, "WARNING"),
    ("named key via fp slot", FP_B, None, PUBLIC_A, (PUBLIC_B,), False, False, PIN, PUBLIC_B, None),
    ("named key is the pinned one", FP_A, PUBLIC_A, PUBLIC_B, (), True, False, USE, PUBLIC_A, None),
    ("named key replaces pin", FP_B, PUBLIC_A, PUBLIC_B, (), False, False, REPIN, PUBLIC_B, "replacing"),
    ("wrong fingerprint", "0" * 16, None, PUBLIC_A, (), False, False, REFUSE, None, f"published by {FP_A}"),
    ("named key, nothing yet", FP_A, None, None, (), False, False, NOT_FOUND, None, None),
    ("two claimants, none pinned", None, None, PUBLIC_A, (PUBLIC_B,), False, False, REFUSE, None, f"{FP_A}, {FP_B}"),
    ("two claimants, even accepted", None, None, PUBLIC_B, (PUBLIC_A,), False, True, REFUSE, None, "2 different"),
    ("pointer forged, one claimant", None, None, None, (PUBLIC_B,), False, False, PIN, PUBLIC_B, "first use"),
    ("claimant is the announced one", None, None, PUBLIC_A, (PUBLIC_A,), False, False, PIN, PUBLIC_A, "first use"),
    ("two claimants, one pinned", None, PUBLIC_A, PUBLIC_A, (PUBLIC_B,), True, False, USE, PUBLIC_A, None),
]


@pytest.mark.parametrize(
    "case, requested, pinned, announced, others, pinned_found, accept, action, key, message",
    PIN_CASES,
    ids=[case[0] for case in PIN_CASES],
)
def test_pin_decisions(
    case: str,
    requested: str | None,
    pinned: str | None,
    announced: str | None,
    others: tuple[str, ...],
    pinned_found: bool,
    accept: bool,
    action: str,
    key: str | None,
    message: str | None,
) -> None:
    decision = decide("mixtral", requested, pinned, announced, others, pinned_found, accept)
    assert decision.action == action
    assert decision.publisher_key == key
    if message is None:
        assert action != PIN or decision.message  # a first-use pin always says so
    else:
        assert decision.message is not None and message in decision.message


def test_a_clash_refusal_names_every_key_and_how_to_pick() -> None:
    decision = decide("mixtral", None, None, PUBLIC_B, (PUBLIC_A,))
    assert decision.message is not None and "\n" not in decision.message
    for part in (FP_A, FP_B, "mixtral@", "none is pinned"):
        assert part in decision.message


# --- claims ----------------------------------------------------------------------------------------------

FP_C = "00112233445566ff"


@pytest.mark.parametrize(
    ("held", "fingerprints"),
    [
        (None, ()),
        (b"", ()),
        (b"garbage", ()),
        (bencode({b"a": 1}), ()),  # not a list
        (bencode([bytes.fromhex(FP_A), b"short", 7, bytes.fromhex(FP_A), bytes.fromhex(FP_C)]), (FP_A, FP_C)),
        (bencode([bytes(8) + bytes([index]) for index in range(40)]), ()),  # 9-byte items are not fingerprints
        (bencode([index.to_bytes(8, "big") for index in range(40)]), tuple(f"{i:016x}" for i in range(32))),
    ],
)
def test_claims_decode_what_is_a_fingerprint_and_no_more(held: bytes | None, fingerprints: tuple[str, ...]) -> None:
    assert decode_claims(held) == fingerprints


@pytest.mark.parametrize(
    ("held", "after"),
    [
        (None, (FP_A,)),
        (b"garbage", (FP_A,)),
        (encode_claims((FP_C,)), (FP_A, FP_C)),
        (encode_claims((FP_C, FP_A)), None),  # already there: nothing to put
        (bencode([bytes.fromhex(FP_A), b"junk"]), (FP_A,)),  # there, but the slot holds junk too: cleaned
        (encode_claims(tuple(f"{i:016x}" for i in range(32))), (FP_A, *(f"{i:016x}" for i in range(31)))),
    ],
)
def test_a_claim_is_merged_never_replacing_others(held: bytes | None, after: tuple[str, ...] | None) -> None:
    merged = with_claim(held, FP_A)
    assert (decode_claims(merged) if merged is not None else None) == after
    assert merged is None or len(merged) < 1000  # fits a BEP 44 item


def test_refusal_names_both_keys_and_the_ways_out() -> None:
    decision = decide("mixtral", None, PUBLIC_A, PUBLIC_B)
    assert decision.message is not None
    for part in (FP_A, FP_B, f"mixtral@{FP_B}", "--accept-new-key", "WARNING"):
        assert part in decision.message


def test_pin_store_round_trip_keeps_unknown_fields(tmp_path: Path) -> None:
    (tmp_path / "pins.json").write_text(
        json.dumps({"format_version": 1, "future": 1, "pins": {"x": {"publisher_key": PUBLIC_B, "note": "kept"}}})
    )
    store = PinStore.load(tmp_path)
    assert store.get("x") == PUBLIC_B and store.get("y") is None
    store.set("y", PUBLIC_A)
    store.save()
    again = PinStore.load(tmp_path)
    assert again.get("y") == PUBLIC_A
    assert again.pins["x"]["note"] == "kept" and again.unknown == {"future": 1}
    assert again.pins["y"]["fingerprint"] == FP_A


@pytest.mark.parametrize(
    "text, reason",
    [
        ("not json", "cannot read the key pins"),
        ("[]", "not a pins file"),
        ('{"pins": {"x": {"publisher_key": "zz"}}}', "no valid publisher_key"),
        ('{"format_version": 9, "pins": {}}', "newer than this swarm reads"),
    ],
)
def test_pin_store_rejects_bad_files(tmp_path: Path, text: str, reason: str) -> None:
    (tmp_path / "pins.json").write_text(text)
    with pytest.raises(SwarmError, match=reason):
        PinStore.load(tmp_path)


# --- references and magnets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, kind, name, fingerprint",
    [
        ("mixtral", "name", "mixtral", None),
        ("Mixtral-8x7B.v1", "name", "Mixtral-8x7B.v1", None),
        (f"mixtral@{FP_A.upper()}", "name", "mixtral", FP_A),
        ("magnet:?xt=urn:btih:" + V1_HASH, "magnet", None, None),
        ("missing.json", "name", "missing.json", None),  # not a file: it may be a name
    ],
)
def test_parse_reference(text: str, kind: str, name: str | None, fingerprint: str | None) -> None:
    parsed = parse_reference(text)
    assert (parsed.kind, parsed.name, parsed.fingerprint) == (kind, name, fingerprint)


def test_parse_reference_sees_files(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text("{}")
    assert parse_reference(str(path)).kind == "path"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("mixtral@abc", "16 hex digits"),
        ("mixtral@" + "g" * 16, "16 hex digits"),
        ("../x@" + "0" * 16, "invalid model name"),
        ("a/b", "unknown model"),
        ("", "unknown model"),
    ],
)
def test_parse_reference_rejects(text: str, reason: str) -> None:
    with pytest.raises(SwarmError, match=reason):
        parse_reference(text)


@pytest.mark.parametrize(
    "uri, reason",
    [
        ("magnet:?xt=urn:btih:zzzz", "malformed magnet"),
        ("magnet:?dn=nothing", "malformed magnet"),
        ("http://example.com", "malformed magnet"),
    ],
)
def test_parse_magnet_rejects(uri: str, reason: str) -> None:
    with pytest.raises(SwarmError, match=reason):
        dht.parse_magnet(uri)


def test_parse_magnet_hashes_and_name() -> None:
    magnet = dht.parse_magnet(f"magnet:?xt=urn:btmh:1220{V2_HASH}&xt=urn:btih:{V1_HASH}&dn=tiny")
    assert magnet.info_hashes == (V2_HASH, V1_HASH)
    assert magnet.name == "tiny"


# --- record bundles ------------------------------------------------------------------------------------


@pytest.fixture
def entry(tmp_path: Path) -> tuple[Manifest, bytes, bytes]:
    """A signed manifest and the small torrent it names (a stand-in for a model's chunk files)."""
    content = tmp_path / "content" / "tiny"
    content.mkdir(parents=True)
    (content / "weights.bin").write_bytes(bytes(range(256)) * 200)
    made = make_torrent(content, "v2", 16384)
    manifest = Manifest(
        name="tiny",
        family=None,
        architecture=None,
        config={},
        dtype="float32",
        num_blocks=0,
        torrent=TorrentInfo("v2", made.piece_length, made.magnet, made.info_hash_v1, made.info_hash_v2),
        chunks=(),
        publisher_key="",
        created="2025-01-01T00:00:00+00:00",
    ).signed(KEY_A)
    manifest_bytes = (json.dumps(manifest.to_dict(), indent=1, sort_keys=True) + "\n").encode()
    return manifest, manifest_bytes, made.data


def test_bundle_is_deterministic(tmp_path: Path, entry: tuple[Manifest, bytes, bytes]) -> None:
    _, manifest_bytes, torrent_bytes = entry
    first = build_bundle("tiny", manifest_bytes, torrent_bytes, tmp_path / "one")
    second = build_bundle("tiny", manifest_bytes, torrent_bytes, tmp_path / "two")
    assert first.info_hash == second.info_hash and len(first.info_hash) == 64
    assert (first.save_path / "tiny" / "tiny.json").read_bytes() == manifest_bytes
    other = build_bundle("tiny", manifest_bytes + b" ", torrent_bytes, tmp_path / "three")
    assert other.info_hash != first.info_hash


def test_check_bundle(tmp_path: Path, entry: tuple[Manifest, bytes, bytes]) -> None:
    manifest, manifest_bytes, torrent_bytes = entry
    good = make_record(manifest, manifest_bytes, "22" * 32, 1).signed(KEY_A)
    assert check_bundle(good, manifest_bytes, torrent_bytes) == manifest
    other_torrent = make_torrent(_other_content(tmp_path), "v2", 16384).data
    forged_manifest = replace(manifest, dtype="float16")  # content changed, old signature kept
    forged_bytes = json.dumps(forged_manifest.to_dict()).encode()
    resigned = manifest.signed(KEY_B)
    resigned_bytes = json.dumps(resigned.to_dict()).encode()
    cases = [
        (good, manifest_bytes + b"\n", torrent_bytes, "does not match its record's SHA-256"),
        (good, manifest_bytes, other_torrent, "not the one its signed manifest names"),
        (replace(good, manifest_sha256=hashlib.sha256(forged_bytes).hexdigest()), forged_bytes, torrent_bytes,
         "invalid signature"),
        (replace(good, manifest_sha256=hashlib.sha256(resigned_bytes).hexdigest()), resigned_bytes, torrent_bytes,
         "another publisher"),
        (replace(good, name="other"), manifest_bytes, torrent_bytes, "is for tiny"),
        (replace(good, model_info_hashes=("ef" * 32,)), manifest_bytes, torrent_bytes, "other torrent info hashes"),
        (replace(good, manifest_sha256=hashlib.sha256(b"{").hexdigest()), b"{", torrent_bytes, "not JSON"),
    ]  # fmt: skip
    for candidate, manifest_data, torrent_data, reason in cases:
        with pytest.raises(RecordRejected, match=reason):
            check_bundle(candidate, manifest_data, torrent_data)


def _other_content(tmp_path: Path) -> Path:
    folder = tmp_path / "other" / "tiny"
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"other" * 1000)
    return folder


def test_resolution_without_bootstrap_is_a_clear_error(tmp_path: Path) -> None:
    from swarm.config import Settings

    settings = Settings(home=tmp_path)
    with pytest.raises(SwarmError, match=r"not in the catalog .* give --bootstrap"):
        resolve_model("absent", settings)
