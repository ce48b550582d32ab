"""Which address a public swarm's client reaches each peer at (swarm.client.peer_keys, pure): the port its own key
answers at, and only when the DHT vouches for that key there."""

from __future__ import annotations

import pytest

from swarm.address import Address
from swarm.client.peer_keys import choose_addresses
from swarm.client.routing import PeerInfo
from swarm.errors import SwarmError

KEY = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
OTHER_KEY = "Z*/4dllY!0W#8CU7#k8Ajarn2ZwW>X@T*9v:<t!-"
PEER = "tcp://10.0.0.2:5000"
KEYED = Address("10.0.0.2", 5001, KEY)


def info(key: str = KEY, key_port: int = 5001) -> PeerInfo:
    return PeerInfo(PEER, (0, 2), member_key=key, key_port=key_port)


@pytest.mark.parametrize(
    ("answer", "vouched", "chosen", "reason"),
    [
        # The DHT lists the key at the peer's IP and key port: the keyed address is used, nothing else.
        (info(), {KEYED}, [KEYED.tcp], None),
        # Listed at another port or host, or another key: someone may be answering in the peer's place.
        (info(), {Address("10.0.0.2", 5002, KEY)}, [], "the DHT does not list its key at 10.0.0.2:5001"),
        (info(), {Address("10.0.0.9", 5001, KEY)}, [], "does not list its key"),
        (info(OTHER_KEY), {KEYED}, [], "does not list its key"),
        # A reply without a key (removed on the path, or a peer of another kind) is not used either.
        (info(""), set(), [], "named no key of its own"),
        (info(key_port=0), {KEYED}, [], "named no key of its own"),
        # A peer that did not answer is left out with its error.
        (
            SwarmError("peer tcp://10.0.0.2:5000 did not answer"),
            {KEYED},
            [],
            "no answer (peer tcp://10.0.0.2:5000 did not answer)",
        ),
    ],
)
def test_a_peer_is_reached_only_at_a_key_the_dht_vouches_for(
    answer: PeerInfo | SwarmError, vouched: set[Address], chosen: list[str], reason: str | None
) -> None:
    choice = choose_addresses([PEER], {PEER: answer}, vouched)
    assert choice.addresses == chosen
    if reason is None:
        assert choice.left_out == {}
    else:
        assert list(choice.left_out) == [PEER] and reason in choice.left_out[PEER]


def test_a_peer_found_at_two_addresses_is_kept_at_each_vouched_one() -> None:
    loopback = "tcp://127.0.0.1:5000"
    infos = {PEER: info(), loopback: PeerInfo(loopback, (0, 2), member_key=KEY, key_port=5001)}
    choice = choose_addresses([PEER, loopback], infos, {KEYED})
    assert choice.addresses == [KEYED.tcp]
    assert list(choice.left_out) == [loopback]


@pytest.mark.parametrize(("value", "port"), [(5001, 5001), (0, 0), (70000, 0), ("5001", 0), (True, 0), (None, 0)])
def test_the_key_port_of_an_info_reply_is_a_port_or_none(value: object, port: int) -> None:
    body = {"blocks": [0, 2], "member_key": KEY, "key_port": value}
    assert PeerInfo.from_info(body, PEER).key_port == port
