"""tools/attack_peer.py against two real `swarm join` processes while a legitimate client generates.

The attacker (from another loopback address, as another host would be) sends thousands of hostile messages of
every kind the tool knows; the peers must keep answering pings within a second, crash on nothing, answer nothing
with `internal`, stay within a bounded memory, and the client's tokens must equal local transformers `generate`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import ROOT, SWARM
from tests.peer_harness import PeerProcess, local_greedy_tokens, published_llama, start_peers

PROMPT = "Errors should never pass silently."
NEW_TOKENS = 12
MESSAGES = 3000
# Growth of a peer's resident memory the attack may cause (its queues, buckets and sockets are bounded).
RSS_GROWTH_MIB = 100


@dataclass
class Chain:
    model_dir: Path
    environment: dict[str, str]
    peers: list[PeerProcess]


@pytest.fixture(scope="module")
def chain(make_model_tool: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    root = tmp_path_factory.mktemp("attack")
    model_dir, environment = published_llama(make_model_tool, root, "attacked", seed=12)
    peers = start_peers(
        [["--model", "attacked", "--blocks", "0:2"], ["--model", "attacked", "--blocks", "2:4"]],
        environment,
        root / "logs",
    )
    try:
        yield Chain(model_dir, environment, peers)
    finally:
        for peer in peers:
            peer.stop()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_peers_survive_an_attack_while_a_client_generates(chain: Chain) -> None:
    peers = chain.peers
    addresses = [peer.address for peer in peers]
    rss_before = [rss_mib(peer.process.pid) for peer in peers]
    command = [sys.executable, str(ROOT / "tools" / "attack_peer.py"), "--messages", str(MESSAGES), "--sockets", "4",
               "--source", "127.0.0.2", "--json"]  # fmt: skip
    for address in addresses:
        command += ["--peer", address]
    attacker = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # its info requests and first pings
    run = subprocess.run(
        [SWARM, "run", "--model", "attacked", "--route", ",".join(addresses), "--prompt", PROMPT,
         "--max-new-tokens", str(NEW_TOKENS), "--json"],
        env=chain.environment,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output, errors = attacker.communicate(timeout=300)
    assert attacker.returncode == 0, output + errors
    report = json.loads(output.splitlines()[-1])  # after its "sending" and "sent" events
    assert report["messages"] == MESSAGES and report["internal_errors"] == 0, report
    assert all(report["answering_after"].values()), report
    # Malformed messages are answered one by one; the rest end in the queues toward dead addresses, bounded.
    assert sum(report["replies"].values()) >= MESSAGES // 2, report
    assert report["unanswered_pings"] == 0 and report["ping_ms"]["during_max"] < 1000, report
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["tokens"] == local_greedy_tokens(chain.model_dir, PROMPT, NEW_TOKENS)
    for peer, before in zip(peers, rss_before, strict=True):
        assert peer.process.poll() is None, peer.log()
        assert rss_mib(peer.process.pid) < before + RSS_GROWTH_MIB, (before, peer.log())
