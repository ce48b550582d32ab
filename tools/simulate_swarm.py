"""A discrete-event simulation of a large swarm serving one big model, driving the project's own policies (not
copies): block selection for joining peers (swarm.peer.selection.choose_span), rebalancing of serving peers
(swarm.peer.rebalance.better_span) and route planning for requests (swarm.client.routing.plan_route).

Peers of mixed memory and speed join, serve, check the swarm every few minutes and move when the policy says so
(they keep serving their old span while they fetch and load the new one, and others count them at their target
from the moment they decide), and crash without notice at a steady churn, replaced by newcomers. Requests arrive
at a steady rate, take a route, hold a session on every hop for as long as their tokens take, and are re-planned
when a hop crashes under them. Every simulated minute the per-block server counts are sampled.

Usage: python tools/simulate_swarm.py [--peers 1000] [--blocks 80] [--hours 6] [--churn 0.10] [--seed 1]
Prints one row per simulated hour and a summary against the goals (>= 99 % of requests served, no block without
a server after the first minutes, every block with >= 2 servers >= 99 % of the time).
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from swarm.client.routing import BusyError, PeerInfo, backoff_delay, plan_route
from swarm.config import Settings
from swarm.errors import SwarmError
from swarm.peer.rebalance import Coverage, ServedSpan, better_span
from swarm.peer.selection import choose_span, coverage_from_spans

# Memory budgets in blocks of a 70B-like model (80 blocks of ~1.7 GB in 16-bit): 8, 16, 24, 48, 80, 160 GB.
MEMORY_BLOCKS = (4, 8, 12, 25, 45, 80)
MEMORY_WEIGHTS = (0.30, 0.30, 0.20, 0.12, 0.06, 0.02)
MAX_SESSIONS = 16
SAMPLE_SECONDS = 60.0
# Minutes before which nothing is counted (requests, coverage): the first peers are still arriving and loading.
WARMUP_MINUTES = 15


@dataclass
class Peer:
    ident: int
    length: int
    block_seconds: float  # seconds per token for one block (the peer's speed)
    latency: float
    start: int = 0
    serving: bool = False
    target: tuple[int, int] | None = None  # where it is moving to (counted there by everyone already)
    sessions: set[int] = field(default_factory=set)
    alive: bool = True
    # Loaded its new span and waits for its open sessions to end before switching: takes no new ones.
    draining: bool = False

    @property
    def span(self) -> tuple[int, int]:
        return self.start, self.start + self.length

    @property
    def rate(self) -> float:
        return 1.0 / (self.block_seconds * self.length)

    def info(self) -> PeerInfo:
        return PeerInfo(
            address=f"peer-{self.ident}",
            blocks=self.span,
            throughput=self.rate,
            free_sessions=0 if self.draining else MAX_SESSIONS - len(self.sessions),
            max_sessions=MAX_SESSIONS,
            latency=self.latency,
        )


@dataclass
class Hour:
    requests: int = 0
    served: int = 0
    failovers: int = 0
    busy_waits: int = 0
    moves: int = 0
    joins: int = 0
    crashes: int = 0
    samples: int = 0
    blocks_thin_samples: int = 0  # (block, sample) pairs with fewer than 2 servers
    blocks_empty_samples: int = 0  # (block, sample) pairs with no server
    worst_thin: int = 0
    costs: list[float] = field(default_factory=list)


class Simulation:
    def __init__(self, arguments: argparse.Namespace) -> None:
        self.arguments = arguments
        self.random = random.Random(arguments.seed)
        self.blocks = arguments.blocks
        self.now = 0.0
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self.sequence = 0
        self.peers: dict[int, Peer] = {}
        self.next_ident = 0
        # Request id → the peers holding its sessions, the route's number (a failover makes a new one) and the hour
        # the request arrived in.
        self.requests: dict[int, tuple[list[int], int, Hour]] = {}
        self.next_request = 0
        self.hours: list[Hour] = [Hour() for _ in range(math.ceil(arguments.hours))]

    # ----- the event queue -----

    def at(self, when: float, action: Callable[[], None]) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (when, self.sequence, action))

    @property
    def hour(self) -> Hour:
        return self.hours[min(int(self.now // 3600), len(self.hours) - 1)]

    def run(self) -> None:
        for _ in range(self.arguments.peers):
            self.at(self.random.uniform(0, self.arguments.arrival_minutes * 60), self.join)
        self.at(self.random.expovariate(self.join_rate()), self.churn)
        self.at(self.random.expovariate(self.arguments.requests_per_minute / 60), self.request)
        self.at(SAMPLE_SECONDS, self.sample)
        end = self.arguments.hours * 3600
        while self.events and self.events[0][0] < end:
            self.now, _, action = heapq.heappop(self.events)
            action()

    def join_rate(self) -> float:
        """Crashes per second at the configured churn (each followed by a join, --replace of the time)."""
        return self.arguments.peers * self.arguments.churn / 3600

    # ----- peers -----

    def spans_as_seen(self, exclude: int | None = None) -> list[ServedSpan]:
        """What peers know of each other: serving peers, movers counted at their target."""
        seen = []
        for peer in self.peers.values():
            if peer.ident == exclude or not peer.alive or not (peer.serving or peer.target):
                continue
            start, end = peer.target or peer.span
            seen.append(ServedSpan(start, end, peer.rate))
        return seen

    def join(self) -> None:
        length = min(self.blocks, self.random.choices(MEMORY_BLOCKS, MEMORY_WEIGHTS)[0])
        peer = Peer(
            ident=self.next_ident,
            length=length,
            block_seconds=self.random.lognormvariate(math.log(0.004), 0.5),
            latency=self.random.uniform(0.005, 0.060),
        )
        self.next_ident += 1
        coverage = coverage_from_spans(self.blocks, [(span.start, span.end) for span in self.spans_as_seen()])
        peer.start, _ = choose_span(self.blocks, 1, length, coverage)
        peer.target = peer.span  # counted where it is going while it fetches and loads
        self.peers[peer.ident] = peer
        self.hour.joins += 1
        self.at(self.now + self.load_seconds(length), lambda: self.loaded(peer))
        self.at(self.now + self.check_interval(), lambda: self.check(peer))

    def load_seconds(self, length: int) -> float:
        """Fetching and loading a span: a fixed start-up plus ~1.7 GB per block at ~100 MB/s."""
        return 20.0 + 17.0 * length * self.random.uniform(0.5, 1.5)

    def check_interval(self) -> float:
        return self.arguments.check_minutes * 60 * self.random.uniform(0.5, 1.5)

    def loaded(self, peer: Peer) -> None:
        if peer.alive:
            peer.serving, peer.target = True, None

    def check(self, peer: Peer) -> None:
        if not peer.alive:
            return
        self.at(self.now + self.check_interval(), lambda: self.check(peer))
        if not peer.serving or peer.target is not None or self.arguments.no_rebalance:
            return
        own = ServedSpan(peer.start, peer.start + peer.length, peer.rate)
        move = better_span(own, Coverage.of(self.blocks, [*self.spans_as_seen(exclude=peer.ident), own]))
        if move is None:
            return
        peer.target = move
        self.hour.moves += 1
        self.at(self.now + self.load_seconds(peer.length), lambda: self.moved(peer))

    def moved(self, peer: Peer) -> None:
        """The new span is loaded: switch once the open sessions have ended (none are taken meanwhile)."""
        if not peer.alive or peer.target is None:
            return
        if peer.sessions:
            peer.draining = True
            self.at(self.now + 5.0, lambda: self.moved(peer))
            return
        peer.start, peer.target, peer.draining = peer.target[0], None, False

    def churn(self) -> None:
        live = [peer for peer in self.peers.values() if peer.alive]
        if live:
            self.crash(self.random.choice(live))
        if self.random.random() < self.arguments.replace:
            self.join()
        self.at(self.now + self.random.expovariate(self.join_rate()), self.churn)

    def crash(self, peer: Peer) -> None:
        peer.alive = False
        del self.peers[peer.ident]
        self.hour.crashes += 1
        for request in list(peer.sessions):
            _, attempt, arrived = self.requests[request]
            self.release(request)
            try:
                rerouted = self.route(request, arrived, attempt + 1) is not None
            except BusyError:
                rerouted = False
            if rerouted:
                arrived.failovers += 1
            else:
                arrived.served -= 1  # it had counted as served when it started

    # ----- requests -----

    def request(self) -> None:
        self.at(self.now + self.random.expovariate(self.arguments.requests_per_minute / 60), self.request)
        if self.now < WARMUP_MINUTES * 60:
            return  # the swarm is still assembling: requests count from the end of the warm-up
        request = self.next_request
        self.next_request += 1
        self.hour.requests += 1
        self.try_request(request, self.hour, self.now, 0)

    def try_request(self, request: int, arrived: Hour, since: float, tries: int) -> None:
        """Route the request now; while only busy peers stand in the way, try again as the client does (the
        product's backoff, for at most Settings.busy_retry_seconds)."""
        try:
            cost = self.route(request, arrived, 0)
        except BusyError:
            delay = backoff_delay(tries, self.random.random())
            if self.now + delay - since > Settings().busy_retry_seconds:
                return
            arrived.busy_waits += 1
            self.at(self.now + delay, lambda: self.try_request(request, arrived, since, tries + 1))
            return
        if cost is not None:
            arrived.served += 1
            arrived.costs.append(cost)

    def route(self, request: int, arrived: Hour, attempt: int) -> float | None:
        """Plan and occupy a route for the request; its seconds per token, or None when blocks have no server
        (BusyError when only busy peers stand in the way)."""
        serving = [peer for peer in self.peers.values() if peer.serving and peer.alive]
        try:
            hops = plan_route(self.blocks, [peer.info() for peer in serving], spread=request)
        except BusyError:
            raise
        except SwarmError:
            return None
        by_address = {f"peer-{peer.ident}": peer for peer in serving}
        used = [by_address[hop.address] for hop in hops]
        cost = sum(
            peer.latency + peer.block_seconds * (hop.blocks[1] - hop.blocks[0])
            for peer, hop in zip(used, hops, strict=True)
        )
        for peer in used:
            peer.sessions.add(request)
        self.requests[request] = ([peer.ident for peer in used], attempt, arrived)
        self.at(self.now + cost * self.arguments.tokens, lambda: self.finish(request, attempt))
        return cost

    def finish(self, request: int, attempt: int) -> None:
        if request in self.requests and self.requests[request][1] == attempt:
            self.release(request)

    def release(self, request: int) -> None:
        idents, _, _ = self.requests.pop(request, ([], 0, None))
        for ident in idents:
            peer = self.peers.get(ident)
            if peer is not None:
                peer.sessions.discard(request)

    # ----- sampling -----

    def sample(self) -> None:
        self.at(self.now + SAMPLE_SECONDS, self.sample)
        if self.now < WARMUP_MINUTES * 60:
            return
        serving = [peer.span for peer in self.peers.values() if peer.serving and peer.alive]
        coverage = coverage_from_spans(self.blocks, serving)
        hour = self.hour
        hour.samples += 1
        thin = sum(count < 2 for count in coverage)
        hour.blocks_thin_samples += thin
        hour.blocks_empty_samples += sum(count == 0 for count in coverage)
        hour.worst_thin = max(hour.worst_thin, thin)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


@dataclass(frozen=True)
class Outcome:
    """One run against the goals, counted from the end of the warm-up."""

    requests: int
    served: float  # share
    empty_block_minutes: int
    two_server_share: float

    @property
    def goals_met(self) -> bool:
        return self.served >= 0.99 and self.empty_block_minutes == 0 and self.two_server_share >= 0.99


def outcome(simulation: Simulation) -> Outcome:
    hours = simulation.hours
    requests = sum(hour.requests for hour in hours)
    samples = sum(hour.samples for hour in hours) * simulation.blocks
    return Outcome(
        requests=requests,
        served=sum(hour.served for hour in hours) / max(requests, 1),
        empty_block_minutes=sum(hour.blocks_empty_samples for hour in hours),
        two_server_share=1 - sum(hour.blocks_thin_samples for hour in hours) / max(samples, 1),
    )


def report_hours(simulation: Simulation) -> None:
    print(
        "| hour | requests | served % | failovers | busy retries | blocks < 2 servers (mean, worst) | blocks with none "
        "| moves | joins/crashes | route s/token median | p99 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for index, hour in enumerate(simulation.hours):
        served = 100 * hour.served / max(hour.requests, 1)
        thin = hour.blocks_thin_samples / max(hour.samples, 1)
        print(
            f"| {index + 1} | {hour.requests} | {served:.2f} | {hour.failovers} | {hour.busy_waits} "
            f"| {thin:.2f}, {hour.worst_thin} | {hour.blocks_empty_samples} | {hour.moves} "
            f"| {hour.joins}/{hour.crashes} | {statistics.median(hour.costs) if hour.costs else float('nan'):.3f} "
            f"| {percentile(hour.costs, 0.99):.3f} |"
        )


def report_outcome(result: Outcome, seconds: float) -> None:
    print(
        f"after the first {WARMUP_MINUTES} min: served {100 * result.served:.2f} % of {result.requests} requests "
        f"(goal >= 99 %); block-minutes without a server: {result.empty_block_minutes} (goal 0); block-minutes "
        f"with >= 2 servers: {100 * result.two_server_share:.2f} % (goal >= 99 %); goals "
        f"{'met' if result.goals_met else 'NOT met'}; simulated in {seconds:.0f} s"
    )


def report_runs(results: list[Outcome]) -> None:
    """Several seeds: the mean and the worst run."""
    served = [result.served for result in results]
    print(
        f"{len(results)} runs: served mean {100 * statistics.mean(served):.2f} %, worst {100 * min(served):.2f} %; "
        f"block-minutes without a server {sum(result.empty_block_minutes for result in results)} in all "
        f"({sum(1 for result in results if result.empty_block_minutes)} runs with any); block-minutes with >= 2 "
        f"servers mean {100 * statistics.mean(result.two_server_share for result in results):.2f} %; goals met in "
        f"{sum(result.goals_met for result in results)} of {len(results)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--blocks", type=int, default=80)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--churn", type=float, default=0.10, help="share of peers crashing per hour")
    parser.add_argument("--replace", type=float, default=1.0, help="share of crashed peers replaced by a newcomer")
    parser.add_argument("--requests-per-minute", type=float, default=60.0)
    parser.add_argument("--tokens", type=int, default=128, help="tokens per request")
    parser.add_argument("--check-minutes", type=float, default=5.0, help="mean minutes between a peer's checks")
    parser.add_argument("--arrival-minutes", type=float, default=10.0, help="minutes over which the peers arrive")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-rebalance", action="store_true", help="the control: peers never move once joined")
    parser.add_argument("--runs", type=int, default=1, help="runs with seeds --seed, --seed + 1, ...: a summary")
    arguments = parser.parse_args()
    results = []
    for run in range(arguments.runs):
        started = time.monotonic()
        simulation = Simulation(argparse.Namespace(**vars(arguments) | {"seed": arguments.seed + run}))
        simulation.run()
        results.append(outcome(simulation))
        if arguments.runs == 1:
            report_hours(simulation)
            print()
        report_outcome(results[-1], time.monotonic() - started)
    if arguments.runs > 1:
        report_runs(results)
    return 0 if all(result.goals_met for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
