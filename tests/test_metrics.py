"""Compute peers' Prometheus metrics read the way Prometheus reads them: two real `swarm join --metrics` processes
serve a tiny Llama as a pipeline, `swarm run` generates through them, and each peer's /metrics is fetched over
HTTP and parsed with prometheus_client's own parser. (A seedbox's /metrics is read the same way, after a real
fetch from it, in tests/test_seedbox.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client.parser import text_string_to_metric_families

from swarm.address import Address
from swarm.config import load_settings
from tests.conftest import SWARM
from tests.peer_harness import ComputeClient, PeerProcess, peer_environment, start_peers

LAYERS = 4
SPLIT = 2
MAX_SESSIONS = 3
NEW_TOKENS = 5
PROMPT = "Beautiful is better than"

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(url: str) -> Samples:
    """GET a metrics URL and parse it: (labels, value) of each sample, by sample name."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels`; 0 when there is none (a label never counted)."""
    matching = [found for found_labels, found in samples.get(name, []) if labels.items() <= found_labels.items()]
    assert len(matching) <= 1, (name, labels, matching)
    return matching[0] if matching else 0.0


@dataclass
class Pipeline:
    home: Path
    first: PeerProcess
    second: PeerProcess


@pytest.fixture(scope="module")
def pipeline(make_model_tool: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    root = tmp_path_factory.mktemp("metrics")
    model_dir = make_model_tool.make_model("llama", root / "llama", layers=LAYERS, seed=3, log=lambda _line: None)
    environment = peer_environment(os.environ, home=root / "home", max_sessions=MAX_SESSIONS)
    subprocess.run(
        [SWARM, "seed", str(model_dir), "--name", "tiny", "--prepare-only", "--json"],
        env=environment,
        check=True,
        capture_output=True,
    )
    peers = start_peers(
        [
            ["--model", "tiny", "--blocks", f"0:{SPLIT}", "--metrics", "127.0.0.1:0"],
            ["--model", "tiny", "--blocks", f"{SPLIT}:{LAYERS}", "--metrics", "127.0.0.1:0"],
        ],
        environment,
        root / "logs",
    )
    try:
        yield Pipeline(root / "home", *peers)
    finally:
        for peer in peers:
            if peer.process.poll() is None:
                peer.stop()


def test_peers_count_a_generation_through_them(pipeline: Pipeline) -> None:
    first, second = pipeline.first, pipeline.second
    for peer in (first, second):
        assert peer.serving["metrics"].startswith("http://127.0.0.1:") and peer.serving["metrics"].endswith("/metrics")
    environment = peer_environment(os.environ, home=pipeline.home)
    done = subprocess.run(
        [SWARM, "run", "--model", "tiny", "--route", f"{first.address},{second.address}", "--prompt", PROMPT,
         "--max-new-tokens", str(NEW_TOKENS), "--json"],
        env=environment, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    generated = len(json.loads(done.stdout)["tokens"])
    assert generated >= 1

    scraped = [scrape(peer.serving["metrics"]) for peer in (first, second)]
    for peer, samples in zip((first, second), scraped, strict=True):
        steps = value(samples, "swarm_peer_steps_total")
        # A prefill, then one decode step per further token (the last token needs no step).
        assert generated <= steps <= generated + 1, (steps, generated)
        assert value(samples, "swarm_peer_messages_total", kind="step") == steps
        assert value(samples, "swarm_peer_messages_total", kind="open_session") >= 1
        assert value(samples, "swarm_peer_step_seconds_count") == steps
        assert value(samples, "swarm_peer_step_seconds_sum") > 0
        # The prompt's tokens in the prefill, one per decode step after it.
        assert value(samples, "swarm_peer_tokens_total") > steps
        assert value(samples, "swarm_peer_errors_total", code="internal") == 0
        info = samples["swarm_peer_info"][0][0]
        assert info["model"] == "tiny" and info["address"] == peer.address
        assert info["blocks"] == f"{peer.serving['blocks'][0]}:{peer.serving['blocks'][1]}"
        assert value(samples, "swarm_peer_throughput_steps_per_second") > 0
    # Both hops ran the same steps over the same tokens; only the first forwarded them.
    assert value(scraped[0], "swarm_peer_tokens_total") == value(scraped[1], "swarm_peer_tokens_total")
    assert value(scraped[0], "swarm_peer_forwarded_total") >= value(scraped[0], "swarm_peer_steps_total") + 1
    assert value(scraped[1], "swarm_peer_forwarded_total") == 0

    # `swarm run` closed its session on the way out: every slot is free again.
    deadline = time.monotonic() + 10
    while (samples := scrape(first.serving["metrics"])) and value(samples, "swarm_peer_sessions_open") > 0:
        assert time.monotonic() < deadline, "the session stayed open"
        time.sleep(0.2)
    assert value(samples, "swarm_peer_sessions_free") == MAX_SESSIONS


def test_malformed_messages_and_error_codes_are_counted(pipeline: Pipeline) -> None:
    peer = pipeline.second
    before = scrape(peer.serving["metrics"])
    client = ComputeClient()
    try:
        client.send_raw(peer.address, [b"not a header"])
        reply = client.receive_direct(peer.address).header
    finally:
        client.close()
    code = reply.body["code"]
    after = scrape(peer.serving["metrics"])
    assert value(after, "swarm_peer_messages_total", kind="malformed") == (
        value(before, "swarm_peer_messages_total", kind="malformed") + 1
    )
    assert value(after, "swarm_peer_errors_total", code=code) == value(before, "swarm_peer_errors_total", code=code) + 1


def test_a_taken_metrics_address_fails_before_any_fetch(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [SWARM, "join", "--model", "nothing-here", "--metrics", f"127.0.0.1:{port}", "--listen", "127.0.0.1:0",
             "--torrent-listen", "127.0.0.1:0"],
            env=peer_environment(os.environ, home=tmp_path / "home"), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode != 0
    assert f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" in done.stderr


def test_metrics_are_off_unless_asked_for() -> None:
    assert load_settings({}).metrics_listen is None
    assert load_settings({"SWARM_METRICS_LISTEN": "127.0.0.1:9464"}).metrics_listen == Address("127.0.0.1", 9464)
