"""Route planning (pure): which peers run which blocks for one request.

A route is a chain of hops that runs blocks [0, num_blocks) in order; each hop runs a contiguous sub-range of
the span its peer hosts. The plan minimises the number of hops first (every hop costs a network round trip and
a serialisation), then the estimated seconds per token. Peers whose estimates are close are treated as equals,
and `spread` rotates the choice among them, so successive requests are spread over replicas and chains.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from swarm.errors import SwarmError
from swarm.manifest import Manifest
from swarm.wire import Hop

# Estimated per-token times within this fraction of the best count as equal: measured throughputs are noisy.
TIE_TOLERANCE = 0.10
# Seconds per token assumed for a peer that reports no throughput (an unmeasured span).
UNKNOWN_SECONDS_PER_TOKEN = 0.05

T = TypeVar("T")


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

        blocks = body.get("blocks")
        if not (
            isinstance(blocks, list)
            and len(blocks) == 2
            and all(isinstance(value, int) and not isinstance(value, bool) for value in blocks)
            and 0 <= blocks[0] <= blocks[1]
        ):
            raise fail(f"blocks {blocks!r:.60}")

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
            blocks=(blocks[0], blocks[1]),
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
        )


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
                raise SwarmError(f"every replica peer is busy ({', '.join(sorted(p.address for p in busy))})")
            raise SwarmError("no replica peer serves this model")
        chosen = _pick(
            [(peer.seconds_per_token(max(peer.span_length, 1)), peer) for peer in replicas],
            spread,
        )
        return [Hop(chosen.address, _nonempty(chosen.blocks))]

    missing = uncovered_blocks(num_blocks, peers)
    if missing:
        raise SwarmError(
            f"no peer serves blocks {block_ranges_text(missing)} (the model has blocks 0..{num_blocks - 1})"
        )
    missing_free = uncovered_blocks(num_blocks, available)
    if missing_free:
        raise SwarmError(
            f"every peer serving blocks {block_ranges_text(missing_free)} is busy (no free sessions); try again later"
        )

    # best[b]: the best way to run blocks [b, num_blocks). From b, a peer hosting b runs as far as its span goes:
    # stopping earlier never saves a hop, because any peer that covers the stopping point and reaches further
    # also covers the peer's end.
    best: list[_Plan | None] = [None] * (num_blocks + 1)
    best[num_blocks] = _Plan(0, 0.0, ())
    for start in range(num_blocks - 1, -1, -1):
        options: list[tuple[_Plan, PeerInfo]] = []
        for peer in available:
            if not peer.blocks[0] <= start < peer.blocks[1]:
                continue
            end = min(peer.blocks[1], num_blocks)
            rest = best[end]
            if rest is None:
                continue
            plan = _Plan(
                hops=rest.hops + 1,
                seconds=rest.seconds + peer.seconds_per_token(end - start),
                route=(Hop(peer.address, (start, end)), *rest.route),
            )
            options.append((plan, peer))
        if options:
            fewest = min(plan.hops for plan, _ in options)
            shortest = [(plan.seconds, plan) for plan, _ in options if plan.hops == fewest]
            best[start] = _pick(shortest, spread)
    result = best[0]
    if result is None:  # unreachable: coverage was checked above
        raise SwarmError("no route covers every block")
    return list(result.route)


def _pick(scored: Sequence[tuple[float, T]], spread: int) -> T:
    """Among the items within TIE_TOLERANCE of the lowest score, the one `spread` selects (round robin)."""
    lowest = min(score for score, _ in scored)
    ties = [item for score, item in scored if score <= lowest * (1 + TIE_TOLERANCE) + 1e-12]
    return ties[spread % len(ties)]


def _nonempty(blocks: tuple[int, int]) -> tuple[int, int]:
    # The wire needs a non-empty range; a replica of an adapter-less model may report [0, 0).
    return blocks if blocks[1] > blocks[0] else (blocks[0], blocks[0] + 1)


# Failures after which a request moves to another route: the peer is gone, overloaded, restarted (it lost the
# session) or broken. Other codes (a malformed message, a wrong tensor) would fail on any route.
FAILOVER_CODES = frozenset({"timeout", "send_failed", "busy", "unknown_session", "shutting_down", "internal"})


def fails_over(code: str) -> bool:
    """Whether a request that failed at a peer with `code` should be retried on a route without that peer."""
    return code in FAILOVER_CODES


def route_without(num_blocks: int, peers: Sequence[PeerInfo], excluded: Collection[str], spread: int = 0) -> list[Hop]:
    """A new route avoiding the `excluded` peer addresses (those that failed this request)."""
    return plan_route(num_blocks, [peer for peer in peers if peer.address not in excluded], spread)


def manifest_info_hash(manifest: Manifest) -> str:
    """The torrent's info hash as peers report it: v2 when the torrent has one, else v1."""
    return manifest.torrent.info_hash_v2 or manifest.torrent.info_hash_v1 or ""


def peers_for_model(manifest: Manifest, infos: dict[str, PeerInfo | SwarmError], pinned: bool) -> list[PeerInfo]:
    """The peers that serve this model. With a pinned route every peer must answer and serve it (else an error
    naming the peer); discovered peers that do not are skipped."""
    expected_hash = manifest_info_hash(manifest)
    peers = []
    for address, info in infos.items():
        if isinstance(info, SwarmError):
            if pinned:
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
    return peers
