"""A compute peer's Prometheus metrics (`swarm join --metrics HOST:PORT`).

Counters and the step-latency histogram are incremented by the ZeroMQ loop as it goes (a lock and an add each:
microseconds, nothing that waits); what the peer is now (its model and blocks, open and free sessions, its
throughput) is read from the server when scraped. Serving happens on a thread of its own (swarm/http_thread.py),
so a scrape never holds up the loop. Each peer has a registry of its own, so that several can run in one process
(tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, make_asgi_app
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from swarm.address import Address

if TYPE_CHECKING:
    from swarm.http_thread import ServerThread

# Seconds: a decode step of a small span takes about a millisecond on a CPU, a long prefill seconds.
STEP_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The kind counted for a message that could not be decoded (it has no kind).
MALFORMED = "malformed"


@dataclass(frozen=True)
class PeerState:
    """What a peer is at the moment of a scrape."""

    model: str
    info_hash: str
    address: str
    blocks: tuple[int, int]
    open_sessions: int
    free_sessions: int
    throughput: float


class PeerStateCollector(Collector):
    def __init__(self, state: Callable[[], PeerState]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state()
        yield InfoMetricFamily(
            "swarm_peer",
            "The model and blocks this peer serves, and where.",
            value={
                "model": state.model,
                "info_hash": state.info_hash,
                "address": state.address,
                "blocks": f"{state.blocks[0]}:{state.blocks[1]}",
            },
        )
        yield GaugeMetricFamily("swarm_peer_sessions_open", "Sessions open on this peer.", value=state.open_sessions)
        yield GaugeMetricFamily(
            "swarm_peer_sessions_free", "Sessions this peer can still open.", value=state.free_sessions
        )
        yield GaugeMetricFamily(
            "swarm_peer_throughput_steps_per_second",
            "Decode steps per second through the hosted blocks, smoothed.",
            value=state.throughput,
        )


class PeerMetrics:
    """The counters the peer's loop increments, in a registry of its own; `watch` adds the peer's current state."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.messages = Counter("swarm_peer_messages", "Messages received, by kind.", ["kind"], registry=self.registry)
        self.errors = Counter("swarm_peer_errors", "Error replies sent, by code.", ["code"], registry=self.registry)
        self.steps = Counter("swarm_peer_steps", "Steps run (prefill and decode).", registry=self.registry)
        self.tokens = Counter(
            "swarm_peer_tokens",
            "Tokens computed through the hosted blocks (batch x new tokens).",
            registry=self.registry,
        )
        self.step_seconds = Histogram(
            "swarm_peer_step_seconds",
            "Compute time of one step through the hosted blocks.",
            buckets=STEP_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.forwarded = Counter(
            "swarm_peer_forwarded", "Messages forwarded to the next hop of their route.", registry=self.registry
        )

    def watch(self, state: Callable[[], PeerState]) -> None:
        """Report `state()` (called from the metrics thread at each scrape)."""
        self.registry.register(PeerStateCollector(state))

    def step_ran(self, tokens: int, seconds: float) -> None:
        self.steps.inc()
        self.tokens.inc(tokens)
        self.step_seconds.observe(seconds)


def metrics_server(metrics: PeerMetrics, listen: Address | None) -> ServerThread | None:
    """The HTTP server of `metrics` on `listen`, bound now (a taken address fails before any fetch) and started
    by the caller; None when metrics are off."""
    if listen is None:
        return None
    # Imported here: uvicorn is loaded only by peers that serve metrics.
    from swarm.http_thread import ServerThread

    return ServerThread(make_asgi_app(metrics.registry), listen, "metrics")
