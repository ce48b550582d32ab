"""Four sessions at once through the same two peers: each gets exactly the tokens it gets alone.

The peers keep one KV cache per session; if they mixed them up, or misrouted a result to another session's
client, the concurrent tokens would differ from the ones produced alone.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm.client.generate import SamplingParams
from swarm.client.run import RunResult, SwarmClient
from swarm.config import Settings
from swarm.publish import publish
from tests.peer_harness import peer_environment, start_peers

PROMPTS = [
    "Beautiful is better than ugly.",
    "Explicit is better than implicit. Simple is",
    "Flat",
    "Errors should never pass silently, unless",
]
NEW_TOKENS = 16
SESSIONS = len(PROMPTS)


@pytest.fixture(scope="module")
def client(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwarmClient]:
    home = tmp_path_factory.mktemp("concurrency") / "home"
    publish(str(model_dirs["llama"]), "llama", Settings(home=home))
    environment = peer_environment(os.environ, home=home, max_sessions=SESSIONS)
    peers = start_peers(
        [["--model", "llama", "--blocks", "0:2"], ["--model", "llama", "--blocks", "2:3"]], environment, home / "logs"
    )
    try:
        with SwarmClient.connect("llama", Settings(home=home), [peer.address for peer in peers]) as connected:
            yield connected
    finally:
        for peer in peers:
            peer.stop()


@pytest.mark.parametrize(
    "params",
    [SamplingParams(), SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=5)],
    ids=["greedy", "seeded-sampling"],
)
def test_concurrent_sessions_match_solo_runs(client: SwarmClient, params: SamplingParams) -> None:
    alone = [client.generate(prompt, NEW_TOKENS, params) for prompt in PROMPTS]
    assert all(len(result.route) == 2 for result in alone)

    results: list[RunResult | BaseException | None] = [None] * SESSIONS
    spans: list[tuple[float, float]] = [(0.0, 0.0)] * SESSIONS
    barrier = threading.Barrier(SESSIONS)

    def run(index: int) -> None:
        barrier.wait()
        started = time.monotonic()
        try:
            results[index] = client.generate(PROMPTS[index], NEW_TOKENS, params)
        except BaseException as error:  # reported below, with the session it belongs to
            results[index] = error
        spans[index] = (started, time.monotonic())

    threads = [threading.Thread(target=run, args=(index,)) for index in range(SESSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    together = []
    for index, result in enumerate(results):
        assert isinstance(result, RunResult), f"session {index} failed: {result!r}"
        together.append(result)
    # The sessions really overlapped: every one started before any finished.
    assert max(start for start, _ in spans) < min(end for _, end in spans)
    assert [result.generation.token_ids for result in together] == [result.generation.token_ids for result in alone]
    assert len({len(result.generation.prompt_ids) for result in together}) > 1  # different positions per session
