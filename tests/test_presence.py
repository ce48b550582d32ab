"""What a node keeps findable on the DHT (swarm/torrent/presence.py, swarm/torrent/krpc.py): the policies as
tables, and two real libtorrent sessions on 127.0.0.1, a bootstrap node and one other node: the smallest swarm,
where only the bootstrap node's direct stores make what it announces findable."""

from __future__ import annotations

import hashlib
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarm.address import Address
from swarm.torrent import dht, krpc
from swarm.torrent.presence import GROWTH_GAP_SECONDS, Item, Presence, own_store_endpoints, republish_due
from swarm.torrent.session import TorrentNode, anti_sybil, listen_interfaces

LOOPBACK = Address("127.0.0.1", 0)


@pytest.mark.parametrize(
    ("now", "last", "nodes", "nodes_then", "due"),
    [
        (0.0, None, 0, 0, True),  # never published
        (100.0, 30.0, 0, 0, True),  # the interval (60 s) has passed
        (40.0, 30.0, 0, 0, False),
        (40.0, 30.0, 1, 0, True),  # the first node arrived
        (31.0, 30.0, 1, 0, False),  # ... but not within the growth gap
        (40.0, 30.0, 9, 8, False),  # one more of eight: under a quarter
        (40.0, 30.0, 10, 8, True),
        (40.0, 30.0, 3, 8, False),  # shrinking is no reason
    ],
)
def test_republish_due(now: float, last: float | None, nodes: int, nodes_then: int, due: bool) -> None:
    assert GROWTH_GAP_SECONDS < 10
    assert republish_due(now, last, 60.0, nodes, nodes_then) is due


@pytest.mark.parametrize(
    ("endpoints", "chosen"),
    [
        (["127.0.0.1:7", "10.0.0.5:7"], ["10.0.0.5:7"]),
        (["127.0.0.1:7"], ["127.0.0.1:7"]),
        (["10.0.0.5:7", "192.168.1.2:7", "127.0.0.1:7"], ["10.0.0.5:7", "192.168.1.2:7"]),
        ([], []),
    ],
)
def test_own_stores_go_to_the_addresses_others_can_reach(endpoints: list[str], chosen: list[str]) -> None:
    assert own_store_endpoints([Address.parse(text) for text in endpoints]) == [Address.parse(text) for text in chosen]


@pytest.mark.parametrize(
    ("stored_sequence", "stored_value", "sequence"),
    [(None, None, 1), (4, b"same", 4), (4, b"older", 5), (True, b"x", 1), (-3, b"x", 1), ("7", b"x", 1)],
)
def test_next_sequence(stored_sequence: object, stored_value: object, sequence: int) -> None:
    assert krpc.next_sequence(stored_sequence, stored_value, b"same") == sequence


def test_signed_bytes_follow_bep44() -> None:
    assert krpc.signed_bytes(b"", 1, b"Hello World!") == b"3:seqi1e1:v12:Hello World!"
    assert krpc.signed_bytes(b"foobar", 1, b"Hello World!") == b"4:salt6:foobar3:seqi1e1:v12:Hello World!"


@pytest.mark.parametrize(
    ("listen", "interfaces"),
    [
        ("127.0.0.1:7000", "127.0.0.1:7000"),
        ("0.0.0.0:6881", "0.0.0.0:6881,127.0.0.1:6881"),
        ("[::]:9", "[::]:9,[::1]:9"),
    ],
)
def test_a_wildcard_listens_on_loopback_by_name(listen: str, interfaces: str) -> None:
    assert listen_interfaces(Address.parse(listen)) == interfaces


@pytest.mark.parametrize(
    ("listen", "bootstrap", "on"),
    [
        ("127.0.0.1:0", [], False),  # one machine
        ("0.0.0.0:6881", [], False),  # a node anchoring its own swarm: nothing says it is on the internet
        ("0.0.0.0:6881", ["127.0.0.1:7000"], False),
        ("0.0.0.0:6881", ["10.1.0.1:6881", "192.168.1.5:6881"], False),  # a LAN, or the tests' lab
        ("0.0.0.0:6881", ["10.1.0.1:6881", "203.0.113.7:6881"], False),  # documentation range: not global
        ("0.0.0.0:6881", ["10.1.0.1:6881", "8.8.8.8:6881"], True),  # one public node: the internet
        ("0.0.0.0:6881", ["router.example.org:6881"], True),
        ("[::]:6881", ["[2001:4860::1]:6881"], True),
        ("8.8.4.4:6881", [], True),
    ],
)
def test_dht_anti_sybil_defences_are_on_unless_the_swarm_is_local(listen: str, bootstrap: list[str], on: bool) -> None:
    assert anti_sybil(Address.parse(listen), [Address.parse(node) for node in bootstrap]) is on


def test_wildcard_port_zero_is_chosen_once_for_both_sockets() -> None:
    wildcard, loopback = listen_interfaces(Address("0.0.0.0", 0)).split(",")
    assert wildcard.rpartition(":")[2] == loopback.rpartition(":")[2] != "0"


def _two_nodes(direct: bool) -> tuple[TorrentNode, TorrentNode, Presence]:
    bootstrap = TorrentNode(LOOPBACK)
    other = TorrentNode(LOOPBACK, [Address("127.0.0.1", bootstrap.listen_port)], read_only_dht=True)
    return bootstrap, other, Presence(bootstrap, interval=600.0, direct=direct)


@pytest.mark.parametrize("direct", [True, False])
def test_the_bootstrap_node_answers_with_its_own_announcements_and_items(direct: bool) -> None:
    bootstrap, other, presence = _two_nodes(direct)
    key = hashlib.sha1(b"swarm/test/" + str(direct).encode()).digest()
    pair = dht.keypair_from_seed(hashlib.sha256(b"test item").digest())
    try:
        presence.announce(key, 5555)
        presence.put(Item(pair, b"salt", b"value"))
        dht.wait_for_dht(bootstrap, 10)
        presence.publish()
        dht.wait_for_dht(other, 10)
        found = dht.get_peers(other, key, timeout=4.0)
        items = dht.get_mutable_items(other, [dht.Slot(pair.public, b"salt")], timeout=4.0)
    finally:
        presence.close()
        for node in (other, bootstrap):
            node.session.pause()
    item = items[dht.Slot(pair.public, b"salt")]
    if direct:
        assert Address("127.0.0.1", 5555) in found
        assert item is not None and item.value == b"value"
    else:
        # The control: without the direct store nothing is stored anywhere the other node can ask.
        assert found == [] and item is None


def test_a_lookup_asked_once_ends_when_its_traversal_ends() -> None:
    """get_peers(once=True) answers "nobody" as soon as libtorrent's lookup is over, not at its timeout; a key
    that was announced is still found."""
    bootstrap, other, presence = _two_nodes(direct=True)
    announced = hashlib.sha1(b"swarm/test/once/announced").digest()
    nobody = hashlib.sha1(b"swarm/test/once/nobody").digest()
    try:
        presence.announce(announced, 5556)
        dht.wait_for_dht(bootstrap, 10)
        presence.publish()
        dht.wait_for_dht(other, 10)
        started = time.monotonic()
        missing = dht.get_peers(other, nobody, timeout=20.0, once=True)
        took = time.monotonic() - started
        found = dht.get_peers(other, announced, timeout=20.0, once=True)
        waited = time.monotonic()
        assert dht.get_peers(other, nobody, timeout=1.0) == []  # without `once`, the whole timeout
        waited = time.monotonic() - waited
    finally:
        presence.close()
        for node in (other, bootstrap):
            node.session.pause()
    assert missing == [] and took < 5.0, took
    assert Address("127.0.0.1", 5556) in found
    assert waited >= 1.0


def test_a_silent_endpoint_is_given_up_at_once() -> None:
    seed = hashlib.sha256(b"k").digest()
    public = dht.keypair_from_seed(seed).public
    items = [krpc.SignedItem(seed, public, b"", b"v")] * 3
    report = krpc.store(Address("127.0.0.1", 9), [(b"k" * 20, 1)] * 3, items, timeout=0.2)
    assert not report.answered and report.announced == report.stored == 0 and report.failures == 1
    # The signature krpc makes is the one BEP 44 nodes check.
    signature = krpc.sign_item(seed, b"", 1, b"v")
    Ed25519PrivateKey.from_private_bytes(seed).public_key().verify(signature, krpc.signed_bytes(b"", 1, b"v"))
