"""Route planning is a pure function: tables of peers in, hops out."""

from __future__ import annotations

import pytest

from swarm.client.routing import (
    PeerInfo,
    block_ranges_text,
    fails_over,
    peers_for_model,
    plan_route,
    route_without,
    uncovered_blocks,
)
from swarm.errors import SwarmError
from swarm.manifest import Manifest, TorrentInfo


def peer(name: str, start: int, end: int, throughput: float = 100.0, **fields: object) -> PeerInfo:
    return PeerInfo(address=f"tcp://{name}:5000", blocks=(start, end), throughput=throughput, **fields)  # type: ignore[arg-type]


def hops(route: list) -> list[tuple[str, tuple[int, int]]]:
    return [(hop.address.removeprefix("tcp://").removesuffix(":5000"), hop.blocks) for hop in route]


ROUTE_CASES = [
    # (case id, num_blocks, peers, spread, expected hops)
    ("one peer, all blocks", 4, [peer("a", 0, 4)], 0, [("a", (0, 4))]),
    ("two halves", 4, [peer("b", 2, 4), peer("a", 0, 2)], 0, [("a", (0, 2)), ("b", (2, 4))]),
    ("three spans in order", 6, [peer("a", 0, 2), peer("b", 2, 4), peer("c", 4, 6)], 0, [("a", (0, 2)), ("b", (2, 4)), ("c", (4, 6))]),
    # Overlap: the second hop starts where the first one stops, inside its own span.
    ("overlapping spans", 8, [peer("a", 0, 5), peer("b", 3, 8)], 0, [("a", (0, 5)), ("b", (5, 8))]),
    # Fewest hops beats speed: a slow replica (1 hop) wins over two fast halves.
    ("replica beats a faster chain", 4, [peer("a", 0, 2, 1000.0), peer("b", 2, 4, 1000.0), peer("r", 0, 4, 1.0, replica=True)], 0, [("r", (0, 4))]),
    # Same hop count: the faster chain wins.
    ("faster of two chains", 4, [peer("a", 0, 2, 10.0), peer("b", 2, 4, 10.0), peer("c", 0, 2, 500.0), peer("d", 2, 4, 500.0)], 0, [("c", (0, 2)), ("d", (2, 4))]),
    # A fast peer for the first half combines with the only peer of the second half.
    ("mix and match", 4, [peer("a", 0, 2, 10.0), peer("c", 0, 2, 500.0), peer("d", 2, 4, 50.0)], 0, [("c", (0, 2)), ("d", (2, 4))]),
    # A long span saves a hop over two short ones, even though it starts earlier than needed.
    ("long span saves a hop", 4, [peer("a", 0, 2), peer("b", 1, 4), peer("c", 2, 3), peer("d", 3, 4)], 0, [("a", (0, 2)), ("b", (2, 4))]),
    ("peer beyond the model is clipped", 3, [peer("a", 0, 8)], 0, [("a", (0, 3))]),
    # Replicas with equal estimates: spread rotates over them, in address order.
    ("replicas, spread 0", 4, [peer("r2", 0, 4), peer("r1", 0, 4), peer("r3", 0, 4)], 0, [("r1", (0, 4))]),
    ("replicas, spread 1", 4, [peer("r2", 0, 4), peer("r1", 0, 4), peer("r3", 0, 4)], 1, [("r2", (0, 4))]),
    ("replicas, spread 5", 4, [peer("r2", 0, 4), peer("r1", 0, 4), peer("r3", 0, 4)], 5, [("r3", (0, 4))]),
    # Within 10 %: still a tie, so spread picks the slightly slower one.
    ("near-equal replicas tie", 4, [peer("r1", 0, 4, 100.0), peer("r2", 0, 4, 95.0)], 1, [("r2", (0, 4))]),
    # Least load: a replica with most sessions taken loses to an idle one.
    ("least loaded replica", 4, [peer("r1", 0, 4, free_sessions=1, max_sessions=8), peer("r2", 0, 4, free_sessions=8, max_sessions=8)], 0, [("r2", (0, 4))]),
    # A busy peer (no free sessions) is left out.
    ("busy peer skipped", 4, [peer("r1", 0, 4, free_sessions=0), peer("a", 0, 2), peer("b", 2, 4)], 0, [("a", (0, 2)), ("b", (2, 4))]),
    # Latency counts: the far replica loses although it computes faster.
    ("latency counts", 4, [peer("far", 0, 4, 1000.0, latency=0.5), peer("near", 0, 4, 100.0, latency=0.001)], 0, [("near", (0, 4))]),
    # A model served only as whole replicas (a full chunk): num_blocks 0, the replica runs what it reported.
    ("full model replica", 0, [peer("r", 0, 1, replica=True)], 0, [("r", (0, 1))]),
    ("full model, two replicas, spread", 0, [peer("r1", 0, 1, replica=True), peer("r2", 0, 1, replica=True)], 1, [("r2", (0, 1))]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("num_blocks", "peers", "spread", "expected"),
    [case[1:] for case in ROUTE_CASES],
    ids=[case[0] for case in ROUTE_CASES],
)
def test_plan_route(num_blocks: int, peers: list[PeerInfo], spread: int, expected: list) -> None:
    assert hops(plan_route(num_blocks, peers, spread)) == expected


def test_plan_ignores_discovery_order() -> None:
    peers = [peer("a", 0, 2), peer("b", 2, 4), peer("c", 0, 2), peer("d", 2, 4)]
    for spread in range(4):
        assert plan_route(4, peers, spread) == plan_route(4, list(reversed(peers)), spread)


def test_spread_balances_two_chains() -> None:
    peers = [peer("a", 0, 2), peer("b", 2, 4), peer("c", 0, 2), peer("d", 2, 4)]
    first_hops = [plan_route(4, peers, spread)[0].address for spread in range(10)]
    assert first_hops.count("tcp://a:5000") == first_hops.count("tcp://c:5000") == 5


ERROR_CASES = [
    ("no peers at all", 4, [], r"no peer serves blocks 0\.\.3 \(the model has blocks 0\.\.3\)"),
    ("gap in the middle", 8, [peer("a", 0, 4), peer("b", 6, 8)], r"no peer serves blocks 4\.\.5 "),
    ("last block missing", 8, [peer("a", 0, 7)], r"no peer serves blocks 7 "),
    ("two gaps", 10, [peer("a", 1, 4), peer("b", 5, 9)], r"no peer serves blocks 0, 4, 9 "),
    ("only busy peers", 4, [peer("a", 0, 4, free_sessions=0)], r"every peer serving blocks 0\.\.3 is busy"),
    ("full model without replica", 0, [peer("a", 0, 2)], r"no replica peer serves this model"),
    ("full model, busy replica", 0, [peer("r", 0, 1, replica=True, free_sessions=0)], r"every replica peer is busy"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("num_blocks", "peers", "message"), [case[1:] for case in ERROR_CASES], ids=[case[0] for case in ERROR_CASES]
)
def test_plan_route_errors(num_blocks: int, peers: list[PeerInfo], message: str) -> None:
    with pytest.raises(SwarmError, match=message):
        plan_route(num_blocks, peers)


@pytest.mark.parametrize(
    ("blocks", "text"),
    [([], ""), ([3], "3"), ([4, 5, 6, 7], "4..7"), ([0, 1, 3, 5, 6], "0..1, 3, 5..6"), ([7, 4, 5, 4], "4..5, 7")],
)
def test_block_ranges_text(blocks: list[int], text: str) -> None:
    assert block_ranges_text(blocks) == text


def test_uncovered_blocks() -> None:
    assert uncovered_blocks(6, [peer("a", 0, 2), peer("b", 3, 5)]) == [2, 5]
    assert uncovered_blocks(3, [peer("a", 0, 9)]) == []


INFO_CASES = [
    ({"blocks": [0, 4], "throughput": 12.5, "free_sessions": 3, "max_sessions": 4, "replica": True, "model": "m", "info_hash": "ab"}, None),
    ({"blocks": [0, 4], "unknown_future_field": {"x": 1}}, None),
    ({"blocks": "0:4"}, "blocks"),
    ({"blocks": [4, 0]}, "blocks"),
    ({"blocks": [0, True]}, "blocks"),
    ({"blocks": [0, 4], "throughput": "fast"}, "throughput"),
    ({"blocks": [0, 4], "throughput": float("nan")}, "throughput"),
    ({"blocks": [0, 4], "model": 7}, "model"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "problem"), INFO_CASES)
def test_peer_info_from_untrusted_body(body: dict, problem: str | None) -> None:
    if problem is None:
        info = PeerInfo.from_info(body, "tcp://p:1", latency=0.01)
        assert info.blocks == (0, 4) and info.address == "tcp://p:1" and info.latency == 0.01
    else:
        with pytest.raises(SwarmError, match=rf"tcp://p:1 sent a malformed info reply: {problem}"):
            PeerInfo.from_info(body, "tcp://p:1")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("timeout", True),
        ("send_failed", True),
        ("busy", True),
        ("unknown_session", True),
        ("shutting_down", True),
        ("internal", True),
        # The request itself is wrong: another route would refuse it too.
        ("bad_tensor", False),
        ("bad_header", False),
        ("bad_step", False),
        ("wrong_blocks", False),
        # Reported by the hop before the one that is unreachable: excluding the reporter would be wrong.
        ("unreachable", False),
    ],
)
def test_fails_over(code: str, expected: bool) -> None:
    assert fails_over(code) is expected


def test_route_without_failed_peers() -> None:
    peers = [peer("r", 0, 4, replica=True), peer("a", 0, 2), peer("b", 2, 4), peer("c", 2, 4)]
    assert hops(route_without(4, peers, set())) == [("r", (0, 4))]
    assert hops(route_without(4, peers, {"tcp://r:5000"})) == [("a", (0, 2)), ("b", (2, 4))]
    assert hops(route_without(4, peers, {"tcp://r:5000", "tcp://b:5000"})) == [("a", (0, 2)), ("c", (2, 4))]
    with pytest.raises(SwarmError, match=r"no peer serves blocks 0\.\.1 "):
        route_without(4, peers, {"tcp://r:5000", "tcp://a:5000"})


def manifest_named(name: str, info_hash: str) -> Manifest:
    torrent = TorrentInfo(format="v2", piece_length=16384, magnet="magnet:?", info_hash_v2=info_hash)
    return Manifest(name, "llama", "LlamaForCausalLM", {}, "float32", 4, torrent, (), "key", "2026-01-01")


def test_peers_for_model_keeps_only_this_models_peers() -> None:
    manifest = manifest_named("m", "aa" * 32)
    ours = peer("a", 0, 4, info_hash="aa" * 32, model="m")
    renamed = peer("b", 0, 4, info_hash="aa" * 32, model="other-name")  # same content under another name
    other = peer("c", 0, 4, info_hash="bb" * 32, model="m")  # same name, other content
    legacy = peer("d", 0, 4, model="m")  # no info hash: the name decides
    silent = SwarmError("peer tcp://e:5000 did not answer info within 1 s")
    infos = {p.address: p for p in (ours, renamed, other, legacy)} | {"tcp://e:5000": silent}
    assert peers_for_model(manifest, infos, pinned=False) == [ours, renamed, legacy]  # type: ignore[arg-type]
    with pytest.raises(SwarmError, match="did not answer info"):
        peers_for_model(manifest, {ours.address: ours, "tcp://e:5000": silent}, pinned=True)
    with pytest.raises(
        SwarmError,
        match=r"peer tcp://c:5000 serves m with info hash bbbbbbbbbbbbbbbb\.\.\., not m \(aaaaaaaaaaaaaaaa\.\.\.\)",
    ):
        peers_for_model(manifest, {other.address: other}, pinned=True)
