"""Route planning and the failover policies are pure functions: tables of peers (or failures, or samples) in,
hops (or decisions, or averages) out."""

from __future__ import annotations

import itertools
import math

import pytest

from swarm.client.routing import (
    BACKOFF_CAP,
    TIE_SECONDS,
    BusyError,
    PeerFailure,
    PeerInfo,
    UncoveredError,
    backoff_delay,
    block_ranges_text,
    candidates_for_model,
    fails_over,
    peers_for_model,
    plan_route,
    route_avoiding,
    smooth_latencies,
    uncovered_blocks,
)
from swarm.client.session import PING_ROUNDS, Reply, query_peers
from swarm.errors import SwarmError
from swarm.manifest import Manifest, TorrentInfo
from swarm.measure import SpeedMeter, benchmark, ewma, median_rate
from swarm.wire import Header, Kind


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
    # Smoothed speeds of equal replicas differ by noise: within TIE_SECONDS they still take turns.
    ("equal replicas, noisy latencies, spread 0", 4, [peer("r1", 0, 4, 1000.0, latency=0.0004), peer("r2", 0, 4, 1000.0, latency=0.0019)], 0, [("r1", (0, 4))]),
    ("equal replicas, noisy latencies, spread 1", 4, [peer("r1", 0, 4, 1000.0, latency=0.0004), peer("r2", 0, 4, 1000.0, latency=0.0019)], 1, [("r2", (0, 4))]),
    # ... and so do replicas whose smoothed throughputs differ by less than 10 % of a slow step.
    ("equal slow replicas, spread 1", 4, [peer("r1", 0, 4, 10.0), peer("r2", 0, 4, 9.5)], 1, [("r2", (0, 4))]),
    # A replica whose smoothed throughput fell well behind (it is loaded) loses every time.
    ("loaded replica loses, spread 0", 4, [peer("r1", 0, 4, 10.0), peer("r2", 0, 4, 5.0)], 0, [("r1", (0, 4))]),
    ("loaded replica loses, spread 1", 4, [peer("r1", 0, 4, 10.0), peer("r2", 0, 4, 5.0)], 1, [("r1", (0, 4))]),
    # Just past TIE_SECONDS on a fast model: the nearer replica wins every time.
    ("beyond the tie slack", 4, [peer("r1", 0, 4, 1000.0, latency=0.001), peer("r2", 0, 4, 1000.0, latency=0.001 + TIE_SECONDS + 0.0005)], 1, [("r1", (0, 4))]),
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
    # Busy is worth retrying later, missing blocks are not: the two are told apart by type.
    expected = BusyError if "busy" in message else UncoveredError
    with pytest.raises(expected, match=message):
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
        # A hop whose connection is gone: named by the client's liveness watch, or by the hop before it (which names
        # the unreachable hop, not itself).
        ("unreachable", True),
        ("some_future_code", False),
    ],
)
def test_fails_over(code: str, expected: bool) -> None:
    assert fails_over(code) is expected


R, A, B, C = "tcp://r:5000", "tcp://a:5000", "tcp://b:5000", "tcp://c:5000"
AVOID_PEERS = [peer("r", 0, 4, replica=True), peer("a", 0, 2), peer("b", 2, 4), peer("c", 2, 4)]
AVOID_CASES = [
    # (case id, failed, busy, expected hops or the error type and message)
    ("nothing to avoid", set(), set(), [("r", (0, 4))]),
    ("failed replica", {R}, set(), [("a", (0, 2)), ("b", (2, 4))]),
    ("failed replica and hop", {R, B}, set(), [("a", (0, 2)), ("c", (2, 4))]),
    ("busy replica: the chain", set(), {R}, [("a", (0, 2)), ("b", (2, 4))]),
    ("failed and busy", {B}, {R}, [("a", (0, 2)), ("c", (2, 4))]),
    # Only busy peers stand in the way: worth waiting for.
    ("only busy peers left", {A}, {R}, (BusyError, r"every peer serving blocks 0\.\.1 is busy \(tcp://r:5000\)")),
    ("all busy", set(), {R, A}, (BusyError, r"blocks 0\.\.1 is busy")),
    # Blocks nobody live serves: not worth waiting for.
    ("blocks gone", {R, A}, set(), (UncoveredError, r"no peer serves blocks 0\.\.1 ")),
    ("blocks gone, others busy", {R, A}, {B, C}, (UncoveredError, r"no peer serves blocks 0\.\.1 ")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("failed", "busy", "expected"), [case[1:] for case in AVOID_CASES], ids=[case[0] for case in AVOID_CASES]
)
def test_route_avoiding(failed: set[str], busy: set[str], expected: list | tuple) -> None:
    if isinstance(expected, list):
        assert hops(route_avoiding(4, AVOID_PEERS, failed, busy)) == expected
    else:
        error, message = expected
        with pytest.raises(error, match=message):
            route_avoiding(4, AVOID_PEERS, failed, busy)


def test_route_avoiding_busy_replicas_of_a_full_model() -> None:
    replicas = [peer("r1", 0, 1, replica=True), peer("r2", 0, 1, replica=True)]
    assert hops(route_avoiding(0, replicas, set(), {"tcp://r1:5000"})) == [("r2", (0, 1))]
    with pytest.raises(BusyError, match=r"every replica peer is busy \(tcp://r1:5000, tcp://r2:5000\)"):
        route_avoiding(0, replicas, set(), {"tcp://r1:5000", "tcp://r2:5000"})


BACKOFF_CASES = [
    # (attempt, jitter, seconds): doubling from 0.2 s, capped; jitter takes off up to half of a pause.
    (0, 0.0, 0.2),
    (1, 0.0, 0.4),
    (2, 0.0, 0.8),
    (3, 0.0, 1.6),
    (4, 0.0, BACKOFF_CAP),
    (50, 0.0, BACKOFF_CAP),
    (10**9, 0.0, BACKOFF_CAP),
    (-1, 0.0, 0.2),
    (0, 0.5, 0.15),
    (2, 1.0, 0.4),
    (4, 1.0, BACKOFF_CAP / 2),
    (1, 7.0, 0.2),  # jitter out of range is clamped
]


@pytest.mark.parametrize(("attempt", "jitter", "seconds"), BACKOFF_CASES)
def test_backoff_delay(attempt: int, jitter: float, seconds: float) -> None:
    assert backoff_delay(attempt, jitter) == pytest.approx(seconds)


def test_backoff_schedule_fits_a_retry_budget() -> None:
    """What the client does with the schedule: pause until the next pause would pass the budget."""
    waited, tries = 0.0, 0
    for attempt in itertools.count():
        delay = backoff_delay(attempt)
        if waited + delay > 15.0:
            break
        waited, tries = waited + delay, tries + 1
    assert (tries, round(waited, 6)) == (8, 15.0)  # 0.2 + 0.4 + 0.8 + 1.6, then 4 pauses at the 3 s cap


EWMA_CASES = [
    # (previous, sample, weight, expected)
    (None, 5.0, 0.1, 5.0),  # the first sample is the average
    (float("nan"), 5.0, 0.1, 5.0),
    (10.0, 20.0, 0.1, 11.0),
    (10.0, 20.0, 1.0, 20.0),
    (10.0, 0.0, 0.5, 5.0),
    (10.0, float("inf"), 0.1, 10.0),  # a broken sample is ignored
    (10.0, 10.0, 0.3, 10.0),
]


@pytest.mark.parametrize(("previous", "sample", "weight", "expected"), EWMA_CASES)
def test_ewma(previous: float | None, sample: float, weight: float, expected: float) -> None:
    assert ewma(previous, sample, weight) == pytest.approx(expected)


@pytest.mark.parametrize("weight", [0.0, -0.1, 1.5])
def test_ewma_rejects_weights_outside_0_1(weight: float) -> None:
    with pytest.raises(ValueError, match="weight"):
        ewma(1.0, 2.0, weight)


def test_speed_meter_follows_measured_steps_not_the_benchmark() -> None:
    meter = SpeedMeter(initial_rate=17.4)  # a start-up benchmark taken while another peer was loading
    for _ in range(60):
        meter.add(0.01)  # it really runs 100 steps per second
    assert meter.rate == pytest.approx(100.0, rel=0.01)
    assert SpeedMeter().rate == 0.0
    unmeasured = SpeedMeter(50.0)
    unmeasured.add(0.0)  # nothing measured
    assert unmeasured.rate == pytest.approx(50.0)


MEDIAN_CASES = [
    # (seconds per repetition, units each, rate): one preempted repetition does not move the median.
    ([0.01, 0.01, 0.01], 2, 200.0),
    ([0.01, 0.5, 0.01, 0.01, 0.012], 2, 200.0),
    ([0.05, 0.01, 0.011], 1, 1 / 0.011),
    ([], 2, 0.0),
    ([0.0, -1.0], 2, 0.0),
    ([0.01, float("nan"), 0.01], 1, 100.0),
]


@pytest.mark.parametrize(("seconds", "units", "rate"), MEDIAN_CASES)
def test_median_rate(seconds: list[float], units: int, rate: float) -> None:
    assert median_rate(seconds, units) == pytest.approx(rate)


BENCHMARK_CASES = [
    # (case id, seconds of each timed repetition as they come, repetitions run, rate)
    # A slow warm-up is not timed; one preempted repetition does not move the median; past the budget (1 s) no
    # repetition starts.
    ("one preempted, then past the budget", [0.010, 0.400, 0.010, 0.011, 0.010, 0.010, 0.700, 0.010], 7, 2 / 0.010),
    ("fast steps: the most repetitions", [0.001] * 20, 15, 2 / 0.001),
    ("slow steps: the fewest repetitions", [0.5, 0.6, 0.4, 0.5, 0.7, 0.5], 5, 2 / 0.5),
]  # fmt: skip


@pytest.mark.parametrize(
    ("durations", "repetitions", "rate"),
    [case[1:] for case in BENCHMARK_CASES],
    ids=[case[0] for case in BENCHMARK_CASES],
)
def test_benchmark_warms_up_then_takes_the_median_of_repetitions(
    durations: list[float], repetitions: int, rate: float
) -> None:
    """A fake clock: the warm-up is slow and untimed; the repetitions take the given times."""
    pending = iter(durations)
    now = [0.0]
    calls: list[str] = []

    def warm_up() -> None:
        calls.append("warm")
        now[0] += 5.0

    def repetition() -> None:
        calls.append("rep")
        now[0] += next(pending)

    assert benchmark(warm_up, repetition, units_each=2, clock=lambda: now[0]) == pytest.approx(rate)
    assert calls == ["warm"] + ["rep"] * repetitions


def test_smooth_latencies() -> None:
    old = [peer("a", 0, 4, latency=0.010), peer("b", 0, 4, latency=0.0), peer("gone", 0, 4, latency=0.5)]
    new = [peer("a", 0, 4, latency=0.020), peer("b", 0, 4, latency=0.004), peer("new", 0, 4, latency=0.002)]
    smoothed = {info.address: info.latency for info in smooth_latencies(old, new)}
    assert smoothed == pytest.approx({A: 0.013, B: 0.004, "tcp://new:5000": 0.002})


def manifest_named(name: str, info_hash: str) -> Manifest:
    torrent = TorrentInfo(format="v2", piece_length=16384, magnet="magnet:?", info_hash_v2=info_hash)
    return Manifest(name, "llama", "LlamaForCausalLM", {}, "float32", 4, torrent, (), "key", "2026-01-01")


def test_peers_for_model_keeps_only_this_models_peers() -> None:
    manifest = manifest_named("m", "aa" * 32)
    ours = peer("a", 0, 4, info_hash="aa" * 32, model="m")
    renamed = peer("b", 0, 4, info_hash="aa" * 32, model="other-name")  # same content under another name
    other = peer("c", 0, 4, info_hash="bb" * 32, model="m")  # same name, other content
    legacy = peer("d", 0, 4, model="m")  # no info hash: the name decides
    silent = PeerFailure("peer tcp://e:5000 did not answer info within 1 s", "tcp://e:5000", "timeout")
    dead = PeerFailure("cannot reach peer tcp://f:5000: refused", "tcp://f:5000", "unreachable")
    infos = {p.address: p for p in (ours, renamed, other, legacy)} | {"tcp://e:5000": silent, "tcp://f:5000": dead}
    assert peers_for_model(manifest, infos, pinned=False) == [ours, renamed, legacy]  # type: ignore[arg-type]
    found = candidates_for_model(manifest, infos, pinned=False)  # type: ignore[arg-type]
    assert found.peers == [ours, renamed, legacy]
    assert found.unreachable == {"tcp://e:5000": str(silent), "tcp://f:5000": str(dead)}
    # A pinned candidate that does not answer is skipped too, when the others may cover the blocks.
    pinned = candidates_for_model(
        manifest, {ours.address: ours, "tcp://e:5000": silent, "tcp://f:5000": dead}, pinned=True
    )
    assert pinned.peers == [ours] and set(pinned.unreachable) == {"tcp://e:5000", "tcp://f:5000"}
    # Answering nonsense, or an error reply, is still an error for a pinned candidate.
    refused = PeerFailure("peer tcp://g:5000 refused the request (bad_kind): no", "tcp://g:5000", "bad_kind")
    with pytest.raises(SwarmError, match=r"refused the request \(bad_kind\)"):
        peers_for_model(manifest, {ours.address: ours, "tcp://g:5000": refused}, pinned=True)
    assert peers_for_model(manifest, {"tcp://g:5000": refused}, pinned=False) == []
    with pytest.raises(
        SwarmError,
        match=r"peer tcp://c:5000 serves m with info hash bbbbbbbbbbbbbbbb\.\.\., not m \(aaaaaaaaaaaaaaaa\.\.\.\)",
    ):
        peers_for_model(manifest, {other.address: other}, pinned=True)


def test_candidates_explain_missing_blocks_with_the_silent_ones() -> None:
    manifest = manifest_named("m", "aa" * 32)
    silent = PeerFailure("peer tcp://e:5000 did not answer info within 1 s", "tcp://e:5000", "timeout")
    found = candidates_for_model(manifest, {"tcp://e:5000": silent}, pinned=True)
    with pytest.raises(UncoveredError) as raised:
        plan_route(4, found.peers)
    explained = found.explain(raised.value)
    assert isinstance(explained, UncoveredError)
    assert str(explained) == (
        "no peer serves blocks 0..3 (the model has blocks 0..3); "
        "not reachable: peer tcp://e:5000 did not answer info within 1 s"
    )
    busy = BusyError("every peer serving blocks 0..3 is busy")
    assert found.explain(busy) is busy  # the silent ones are not why a route is busy


class ScriptedPeers:
    """Answers pings with the round trips given per peer and round, and info after them (query_peers' ranking is
    pure given the round trips; real peers are queried in the integration tests)."""

    def __init__(self, round_trips: dict[str, list[float]], info_seconds: float) -> None:
        self.round_trips = round_trips
        self.info_seconds = info_seconds
        self.pings = 0

    def ask_many(self, addresses: list[str], kind: Kind, timeout: float) -> dict[str, Reply | SwarmError]:
        if kind is Kind.INFO:
            body = {"blocks": [0, 4], "throughput": 10.0}
            return {
                a: Reply(Header(kind=Kind.INFO, request_id="i", body=body), {}, self.info_seconds) for a in addresses
            }
        replies: dict[str, Reply | SwarmError] = {}
        for address in addresses:
            seconds = self.round_trips[address][self.pings]
            pong = Reply(Header(kind=Kind.PONG, request_id="p"), {}, seconds)
            replies[address] = pong if seconds < math.inf else SwarmError(f"no answer from {address}")
        self.pings += 1
        return replies


@pytest.mark.parametrize(
    ("round_trips", "latencies"),
    [
        # The least round trip counts: a wait for a core in one round is not the path's latency.
        (
            {"tcp://a:1": [0.024, 0.002, 0.003], "tcp://b:1": [0.034, 0.009, 0.001]},
            {"tcp://a:1": 0.002, "tcp://b:1": 0.001},
        ),
        # A ping lost after the first answer leaves the ones that came.
        ({"tcp://a:1": [0.004, math.inf, 0.003]}, {"tcp://a:1": 0.003}),
        # No answer to the first ping: the peer is not asked again and gets the error.
        ({"tcp://a:1": [math.inf, 0.001, 0.001], "tcp://b:1": [0.005, 0.005, 0.005]}, {"tcp://b:1": 0.005}),
    ],
)
def test_peers_are_ranked_by_their_least_round_trip(round_trips: dict, latencies: dict) -> None:
    peers = ScriptedPeers(round_trips, info_seconds=0.05)
    infos = query_peers(peers, list(round_trips), timeout=1.0)  # type: ignore[arg-type]
    assert peers.pings == PING_ROUNDS
    assert {a: i.latency for a, i in infos.items() if isinstance(i, PeerInfo)} == latencies
    assert all(isinstance(infos[a], SwarmError) for a in round_trips if a not in latencies)
