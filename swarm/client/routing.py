"""Route planning and failover policy (pure): which peers run which blocks for one request, and what to do when
one of them fails.

A route is a chain of hops that runs blocks [0, num_blocks) in order; each hop runs a contiguous sub-range of
the span its peer hosts. The plan minimises the number of hops first (every hop costs a network round trip and
a serialisation), then the estimated seconds per token. The estimates come from speeds measured over time: each
peer's throughput smoothed over the steps it ran, and the client's smoothed round trips to it. Peers whose
estimates are close are treated as equals, and `spread` rotates the choice among them, so successive requests
are spread over replicas and chains.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from swarm.errors import SwarmError
from swarm.manifest import Manifest
from swarm.measure import ewma, trusted_rate
from swarm.wire import Hop

# Estimated per-token times within this fraction of the best count as equal: measured throughputs are noisy.
TIE_TOLERANCE = 0.10
# ... and so do those within this many seconds: below it a difference is timer and scheduling noise, which must not
# stop equal replicas from taking turns (on a loaded 2-core machine, identical loopback peers' least round trips
# differed by up to 1.4 ms and their smoothed step times by up to 1.5 ms).
TIE_SECONDS = 0.003
# Weight of the newest round trip in a peer's smoothed latency (round trips are measured at each refresh of the
# peers' info, seconds apart, so the newest counts for more than a step's time does).
LATENCY_WEIGHT = 0.3
# A peer's software version is shown to people: long enough for any version, short enough for a table.
MAX_KEY_CHARS = 40
MAX_VERSION_CHARS = 64
# Seconds per token assumed for a peer that reports no throughput (an unmeasured span).
UNKNOWN_SECONDS_PER_TOKEN = 0.05
# A peer's claimed throughput counts for at most this multiple of what the client measured of it (see
# swarm.measure.TRUST_MARGIN for why a client allows more than a healing peer does).
ROUTE_TRUST_MARGIN = 4.0

T = TypeVar("T")

# PeerFailure codes: a peer that did not answer in time, one the client could not send to, one whose connection
# is gone (refused, reset, or silent past the heartbeat timeout, seen by the client or by the hop before it).
TIMEOUT = "timeout"
SEND_FAILED = "send_failed"
UNREACHABLE = "unreachable"
BUSY = "busy"
# A result that cannot be right (wrong shape, NaN or infinite values): the peer that sent it is avoided.
BAD_RESULT = "bad_result"
# Codes that mean the peer did not answer at all (a candidate with one of these is skipped, not an error).
NO_ANSWER_CODES = frozenset({TIMEOUT, SEND_FAILED, UNREACHABLE})


class PeerFailure(SwarmError):
    """A request failed at a known peer: it refused (an `error` reply with `code`) or did not answer."""

    def __init__(self, message: str, address: str, code: str) -> None:
        super().__init__(message)
        self.address = address
        self.code = code


class UncoveredError(SwarmError):
    """No peer (that is not excluded) serves some of the model's blocks."""


class BusyError(SwarmError):
    """Peers serve every block, but every route needs one that has no free session: worth retrying later."""


@dataclass(frozen=True)
class PeerInfo:
    """What a compute peer says about itself in its `info` reply, plus what the client measured."""

    address: str
    blocks: tuple[int, int]
    # Tokens per second through the whole hosted span (measured by the peer at startup).
    throughput: float = 0.0
    free_sessions: int = 1
    max_sessions: int = 1
    replica: bool = False
    # Round-trip seconds of the info exchange, measured by the client (0 when unknown).
    latency: float = 0.0
    model: str = ""
    info_hash: str = ""
    family: str | None = None
    dtype: str = ""
    serves_embed_head: bool = False
    # The software the peer says it runs ("swarm/0.1.0"); shown by `swarm status`, never trusted for anything.
    version: str = ""
    # Blocks [start, end) the peer is moving to (it fetches and loads them, then switches): peers deciding where to
    # move count it there already.
    moving_to: tuple[int, int] | None = None
    # A random id the peer chose at start: the same peer reached at two addresses is one peer.
    peer_id: str = ""
    # The key the peer connects with (Z85; "" in plaintext): its results must come over a connection of that key.
    member_key: str = ""
    # The transformers task the peer runs its model as ("" for text generation and encoder spans).
    task: str = ""
    # The port where only member_key answers (public swarms; 0: none): see swarm.client.peer_keys.
    key_port: int = 0

    @property
    def span_length(self) -> int:
        return self.blocks[1] - self.blocks[0]

    def seconds_per_token(self, block_count: int) -> float:
        """Estimated seconds for one token through `block_count` of this peer's blocks, network and load included."""
        if self.throughput > 0 and self.span_length > 0:
            compute = block_count / (self.throughput * self.span_length)
        else:
            compute = UNKNOWN_SECONDS_PER_TOKEN * block_count / max(self.span_length, 1)
        busy = max(self.max_sessions - self.free_sessions, 0)
        # Sessions share the peer's cores: each active one slows the others down.
        return self.latency + compute * (1 + busy / max(self.max_sessions, 1))

    @classmethod
    def from_info(cls, body: Mapping[str, Any], address: str, latency: float = 0.0) -> PeerInfo:
        """Parse an `info` reply body (untrusted): wrong types raise SwarmError naming the peer."""

        def fail(what: str) -> SwarmError:
            return SwarmError(f"peer {address} sent a malformed info reply: {what}")

        blocks = _block_range(body.get("blocks"))
        if blocks is None:
            raise fail(f"blocks {body.get('blocks')!r:.60}")
        moving_to = _block_range(body.get("moving_to"))
        if body.get("moving_to") is not None and moving_to is None:
            raise fail(f"moving_to {body.get('moving_to')!r:.60}")

        def number(key: str, default: float) -> float:
            value = body.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise fail(f"{key} {value!r:.40}")
            return float(value)

        def text(key: str) -> str:
            value = body.get(key, "")
            if value is None:
                return ""
            if not isinstance(value, str):
                raise fail(f"{key} {value!r:.40}")
            return value

        own_address = text("address") or address
        return cls(
            # The address we reached it at is known to work; the one it claims is only a hint.
            address=address if address else own_address,
            blocks=blocks,
            throughput=max(number("throughput", 0.0), 0.0),
            free_sessions=max(int(number("free_sessions", 1)), 0),
            max_sessions=max(int(number("max_sessions", 1)), 1),
            replica=bool(body.get("replica", False)),
            latency=latency,
            model=text("model"),
            info_hash=text("info_hash"),
            family=text("family") or None,
            dtype=text("dtype"),
            serves_embed_head=bool(body.get("serves_embed_head", False)),
            version=text("software")[:MAX_VERSION_CHARS],
            moving_to=moving_to,
            peer_id=text("peer_id")[:MAX_VERSION_CHARS],
            member_key=text("member_key")[:MAX_KEY_CHARS],
            task=text("task")[:MAX_VERSION_CHARS],
            key_port=_port(body.get("key_port")),
        )


def _port(value: object) -> int:
    """A port number from an untrusted reply; 0 for anything else."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536 else 0


def _block_range(value: object) -> tuple[int, int] | None:
    """[start, end] with 0 <= start <= end, from an untrusted reply; None for anything else."""
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(item, int) and not isinstance(item, bool) for item in value)
        and 0 <= value[0] <= value[1]
    ):
        return value[0], value[1]
    return None


def block_ranges_text(blocks: Sequence[int]) -> str:
    """[4, 5, 6, 7, 9] → '4..7, 9' (inclusive ranges, as people count blocks)."""
    parts: list[str] = []
    ordered = sorted(set(blocks))
    index = 0
    while index < len(ordered):
        first = last = ordered[index]
        while index + 1 < len(ordered) and ordered[index + 1] == last + 1:
            index += 1
            last = ordered[index]
        parts.append(str(first) if first == last else f"{first}..{last}")
        index += 1
    return ", ".join(parts)


def uncovered_blocks(num_blocks: int, peers: Sequence[PeerInfo]) -> list[int]:
    """Blocks in [0, num_blocks) that no peer hosts."""
    covered = [False] * num_blocks
    for peer in peers:
        for block in range(max(peer.blocks[0], 0), min(peer.blocks[1], num_blocks)):
            covered[block] = True
    return [block for block, is_covered in enumerate(covered) if not is_covered]


@dataclass(frozen=True)
class _Plan:
    hops: int
    seconds: float
    route: tuple[Hop, ...]


def plan_route(num_blocks: int, peers: Sequence[PeerInfo], spread: int = 0) -> list[Hop]:
    """The route through `peers` that runs blocks [0, num_blocks): fewest hops, then fastest; see module doc.

    `num_blocks == 0` means a model served only as whole replicas (a `full` chunk): one replica peer, which runs
    the span it reported. Peers without a free session would refuse the session, so they are left out (the
    error then says the blocks' peers are busy). `spread` (a request counter or seed) rotates among equally good
    choices. Raises SwarmError naming the blocks no peer serves.
    """
    if num_blocks < 0:
        raise SwarmError(f"a model cannot have {num_blocks} blocks")
    # A fixed order makes the plan independent of the order peers were discovered in.
    available = sorted((peer for peer in peers if peer.free_sessions > 0), key=lambda peer: (peer.address, peer.blocks))
    if num_blocks == 0:
        replicas = [peer for peer in available if peer.replica]
        if not replicas:
            busy = [peer for peer in peers if peer.replica]
            if busy:
                raise BusyError(f"every replica peer is busy ({', '.join(sorted(p.address for p in busy))})")
            raise _uncovered(num_blocks, peers)
        chosen = _pick(
            [(peer.seconds_per_token(max(peer.span_length, 1)), peer) for peer in replicas],
            spread,
        )
        return [Hop(chosen.address, _nonempty(chosen.blocks))]

    if uncovered_blocks(num_blocks, peers):
        raise _uncovered(num_blocks, peers)
    missing_free = uncovered_blocks(num_blocks, available)
    if missing_free:
        raise BusyError(
            f"every peer serving blocks {block_ranges_text(missing_free)} is busy (no free sessions); try again later"
        )

    # best[b]: the best way to run blocks [b, num_blocks). From b, a peer hosting b runs as far as its span goes:
    # stopping earlier never saves a hop, because any peer that covers the stopping point and reaches further
    # also covers the peer's end.
    # Peers by the blocks they cover: the planning work grows with the spans' total length, not blocks x peers.
    covering: list[list[PeerInfo]] = [[] for _ in range(num_blocks)]
    for peer in available:
        for block in range(max(peer.blocks[0], 0), min(peer.blocks[1], num_blocks)):
            covering[block].append(peer)
    best: list[_Plan | None] = [None] * (num_blocks + 1)
    best[num_blocks] = _Plan(0, 0.0, ())
    for start in range(num_blocks - 1, -1, -1):
        options: list[tuple[int, float, PeerInfo, int]] = []
        for peer in covering[start]:
            end = min(peer.blocks[1], num_blocks)
            rest = best[end]
            if rest is not None:
                options.append((rest.hops + 1, rest.seconds + peer.seconds_per_token(end - start), peer, end))
        if options:
            fewest = min(hops for hops, _, _, _ in options)
            seconds, chosen, end = _pick([(s, (s, p, e)) for h, s, p, e in options if h == fewest], spread)
            rest = best[end]
            if rest is not None:
                best[start] = _Plan(fewest, seconds, (Hop(chosen.address, (start, end)), *rest.route))
    result = best[0]
    if result is None:  # unreachable: coverage was checked above
        raise SwarmError("no route covers every block")
    return list(result.route)


def _uncovered(num_blocks: int, peers: Sequence[PeerInfo]) -> UncoveredError:
    if num_blocks == 0:
        return UncoveredError("no replica peer serves this model")
    missing = block_ranges_text(uncovered_blocks(num_blocks, peers))
    return UncoveredError(f"no peer serves blocks {missing} (the model has blocks 0..{num_blocks - 1})")


def _pick(scored: Sequence[tuple[float, T]], spread: int) -> T:
    """Among the items within TIE_TOLERANCE (or TIE_SECONDS) of the lowest score, the one `spread` selects (round
    robin)."""
    lowest = min(score for score, _ in scored)
    ties = [item for score, item in scored if score <= max(lowest * (1 + TIE_TOLERANCE), lowest + TIE_SECONDS)]
    return ties[spread % len(ties)]


def _nonempty(blocks: tuple[int, int]) -> tuple[int, int]:
    # The wire needs a non-empty range; a replica of an adapter-less model may report [0, 0).
    return blocks if blocks[1] > blocks[0] else (blocks[0], blocks[0] + 1)


# Failures after which a request moves to another route: the peer is gone (no answer, connection lost, or named as
# unreachable by the hop before it), overloaded, restarted (it lost the session) or broken. Other codes (a malformed
# message, a wrong tensor) would fail on any route.
# A peer refusing sessions from this client's address for a while (too many too fast): waited for like busy.
RATE_LIMITED = "rate_limited"
FAILOVER_CODES = frozenset(
    {TIMEOUT, SEND_FAILED, UNREACHABLE, BUSY, RATE_LIMITED, BAD_RESULT, "unknown_session", "shutting_down", "internal"}
)
# Pauses between tries while the swarm is busy: BACKOFF_FIRST seconds, doubling up to BACKOFF_CAP.
BACKOFF_FIRST = 0.2
BACKOFF_CAP = 3.0
# Share of a pause that jitter may take off, so that clients refused together do not all come back together.
BACKOFF_JITTER = 0.5


def fails_over(code: str) -> bool:
    """Whether a request that failed at a peer with `code` should be retried on a route without that peer."""
    return code in FAILOVER_CODES


def backoff_delay(attempt: int, jitter: float = 0.0) -> float:
    """Seconds to wait before try `attempt` + 1 (0 is the first retry) while the swarm is busy; `jitter` in [0, 1)
    (a random draw) shortens the pause by up to BACKOFF_JITTER of it."""
    delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** min(max(attempt, 0), 32))
    return delay * (1 - BACKOFF_JITTER * min(max(jitter, 0.0), 1.0))


def route_avoiding(
    num_blocks: int,
    peers: Sequence[PeerInfo],
    failed: Collection[str],
    busy: Collection[str] = (),
    spread: int = 0,
) -> list[Hop]:
    """A route around the `failed` peers (gone for this request) and the `busy` ones (they refused a session).

    BusyError when a route exists only through busy peers (worth retrying later); UncoveredError when not even
    those cover every block."""
    live = [peer for peer in peers if peer.address not in failed]
    free = [peer for peer in live if peer.address not in busy]
    try:
        return plan_route(num_blocks, free, spread)
    except UncoveredError:
        if not busy:
            raise
        if not _covers(num_blocks, live):
            raise _uncovered(num_blocks, live) from None
        names = ", ".join(sorted(address for address in busy if address not in failed))
        if num_blocks == 0:
            raise BusyError(f"every replica peer is busy ({names})") from None
        blocked = block_ranges_text(uncovered_blocks(num_blocks, free))
        raise BusyError(f"every peer serving blocks {blocked} is busy ({names})") from None


def _covers(num_blocks: int, peers: Sequence[PeerInfo]) -> bool:
    if num_blocks == 0:
        return any(peer.replica for peer in peers)
    return not uncovered_blocks(num_blocks, peers)


def smooth_latencies(previous: Sequence[PeerInfo], fresh: Sequence[PeerInfo]) -> list[PeerInfo]:
    """`fresh` infos whose latencies are averaged (LATENCY_WEIGHT on the new one) with those measured before."""
    before = {peer.address: peer.latency for peer in previous if peer.latency > 0}
    smoothed = []
    for peer in fresh:
        old = before.get(peer.address)
        latency = peer.latency if old is None or peer.latency <= 0 else ewma(old, peer.latency, LATENCY_WEIGHT)
        smoothed.append(replace(peer, latency=latency))
    return smoothed


def peers_with_rivals(peers: Sequence[PeerInfo]) -> list[PeerInfo]:
    """The peers whose speed decides a route: those sharing a block with another peer (a replica shares all)."""

    def overlap(one: PeerInfo, other: PeerInfo) -> bool:
        if one.replica or other.replica:
            return True
        return one.blocks[0] < other.blocks[1] and other.blocks[0] < one.blocks[1]

    return [peer for peer in peers if any(other.address != peer.address and overlap(peer, other) for other in peers)]


def with_trusted_rates(
    peers: Sequence[PeerInfo],
    probed: Collection[str],
    measured: Mapping[str, float | None],
    measured_before: Mapping[str, float],
) -> list[PeerInfo]:
    """`peers` with the throughput of each `probed` one capped by what the client measured of it (by address:
    this probe's rate, None when it did not run it, and the last rate it did run at)."""
    trusted = []
    for peer in peers:
        if peer.address in probed:
            rate = trusted_rate(
                peer.throughput,
                measured.get(peer.address),
                measured_before.get(peer.address),
                busy=peer.free_sessions == 0,
                margin=ROUTE_TRUST_MARGIN,
            )
            peer = replace(peer, throughput=rate)
        trusted.append(peer)
    return trusted


def manifest_info_hash(manifest: Manifest) -> str:
    """The torrent's info hash as peers report it: v2 when the torrent has one, else v1."""
    return manifest.torrent.info_hash_v2 or manifest.torrent.info_hash_v1 or ""


@dataclass(frozen=True)
class Candidates:
    """The peers that serve this model, and the candidates that did not answer (address → why)."""

    peers: list[PeerInfo]
    unreachable: dict[str, str]

    def explain(self, error: SwarmError) -> SwarmError:
        """A planning error, with the candidates that did not answer when they may be why blocks are missing."""
        if not self.unreachable or not isinstance(error, UncoveredError):
            return error
        return UncoveredError(f"{error}; not reachable: {'; '.join(self.unreachable.values())}")


def peers_for_model(manifest: Manifest, infos: Mapping[str, PeerInfo | SwarmError], pinned: bool) -> list[PeerInfo]:
    """The peers that serve this model (see `candidates_for_model`)."""
    return candidates_for_model(manifest, infos, pinned).peers


def candidates_for_model(manifest: Manifest, infos: Mapping[str, PeerInfo | SwarmError], pinned: bool) -> Candidates:
    """The peers that serve this model. A candidate that does not answer is skipped (and listed); with a pinned
    route (--route) a peer that answers but serves another model, or answers nonsense, is an error naming it;
    discovered peers that do are skipped."""
    expected_hash = manifest_info_hash(manifest)
    peers = []
    unreachable: dict[str, str] = {}
    for address, info in infos.items():
        if isinstance(info, SwarmError):
            if isinstance(info, PeerFailure) and info.code in NO_ANSWER_CODES:
                unreachable[address] = str(info)
            elif pinned:
                raise info
            continue
        # Peers identify the model by its torrent's info hash; the name is only a fallback for peers that omit it.
        serves = info.info_hash == expected_hash if info.info_hash and expected_hash else info.model == manifest.name
        if not serves:
            if pinned:
                raise SwarmError(
                    f"peer {address} serves {info.model or 'another model'} with info hash "
                    f"{info.info_hash[:16] or 'unknown'}..., not {manifest.name} ({expected_hash[:16]}...)"
                )
            continue
        peers.append(info)
    return Candidates(peers, unreachable)
