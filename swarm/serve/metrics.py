"""The server's Prometheus metrics (prometheus-client), in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "swarm_serve_requests", "HTTP requests answered", ["path", "status"], registry=self.registry
        )
        self.request_seconds = Histogram(
            "swarm_serve_request_seconds",
            "Seconds from a request's arrival to the end of its answer (a stream's last event)",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_token_seconds = Histogram(
            "swarm_serve_time_to_first_token_seconds",
            "Seconds from a generation request's arrival to its first text",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter("swarm_serve_prompt_tokens", "Prompt tokens", ["model"], registry=self.registry)
        self.completion_tokens = Counter(
            "swarm_serve_completion_tokens", "Generated tokens", ["model"], registry=self.registry
        )
        self.failovers = Counter(
            "swarm_serve_failovers", "Peers failed over from during generations", ["model"], registry=self.registry
        )
        self.generations = Gauge(
            "swarm_serve_active_generations", "Generations running now (one swarm session each)", registry=self.registry
        )
        self.peers = Gauge("swarm_serve_peers", "Compute peers known per model", ["model"], registry=self.registry)
        self.pipelines_cancelled = Counter(
            "swarm_serve_pipelines_cancelled",
            "Streamed pipelines stopped before their end because their client left",
            ["pipeline"],
            registry=self.registry,
        )
