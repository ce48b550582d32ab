"""Several hosts, each knowing only the seedbox's address: network namespaces of our own (tools/netlab.py, the
benchmark's lab), two subnets joined by a router, every command with its default listen addresses.

The seedbox host (10.77.0.1) seeds a model; five hosts, on its LAN and across the router, each fetch the whole
model; two of them join as compute peers with half the model's memory each (so they split the blocks between
them, finding each other through the seedbox's DHT); another runs greedy generation through them, equal to
local transformers `generate`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from swarm.catalog import resolve
from tests.conftest import ROOT, SWARM
from tests.peer_harness import PeerProcess, peer_environment, wait_for_event
from tests.test_dht import LineProcess

sys.path.insert(0, str(ROOT / "tools"))
import netlab

PROMPT = "Flat is better than nested."
NEW_TOKENS = 10
LAYERS = 4


@pytest.fixture
def lab() -> Iterator[netlab.Lab]:
    usable, reason = netlab.available()
    assert usable, f"network namespaces are needed for multi-host tests (run as root with iproute2): {reason}"
    with netlab.Lab(6, rate=None, subnets=2) as built:
        yield built


def on(host: netlab.Host, arguments: list[str]) -> list[str]:
    return host.command([SWARM, *arguments])


def start_seedbox_host(host: netlab.Host, model_dir: Path, name: str, environment: dict[str, str]) -> LineProcess:
    """On `host`: publish the model into the catalog (swarm seed --prepare-only), then run a seedbox with every
    default, once it seeds."""
    prepared = subprocess.run(
        on(host, ["seed", str(model_dir), "--name", name, "--prepare-only"]),
        env=environment, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    seedbox = LineProcess(on(host, ["seedbox", "--json"]), environment)
    try:
        seedbox.wait_event("seeding", 60)
    except BaseException:
        seedbox.stop()
        raise
    return seedbox


def test_hosts_knowing_only_the_seedbox_fetch_join_and_run(
    lab: netlab.Lab, make_model_tool: ModuleType, tmp_path: Path
) -> None:
    model_dir = make_model_tool.make_model("llama", tmp_path / "m", layers=LAYERS, seed=9, log=lambda _line: None)
    seed_host, *hosts = lab.hosts
    bootstrap = f"{seed_host.address}:6881"

    def home(label: str) -> dict[str, str]:
        return peer_environment(os.environ, home=tmp_path / label)

    seedbox = start_seedbox_host(seed_host, model_dir, "demo", home("seedbox"))
    started: list[PeerProcess] = []
    try:
        fetches = [
            subprocess.Popen(
                on(host, ["fetch", "demo", "--bootstrap", bootstrap, "--json"]),
                env=home(f"host{index}"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for index, host in enumerate(hosts, start=1)
        ]
        for index, fetch in enumerate(fetches, start=1):
            out, err = fetch.communicate(timeout=180)
            assert fetch.returncode == 0, f"host{index} ({hosts[index - 1].address}): {err}"
            verified = [json.loads(line) for line in out.splitlines() if '"verified"' in line][-1]
            # Fetched over the network, not found on disk (per-source counts may miss a peer that came and went
            # between two 0.1 s samples: a host of the LAN finished and left).
            assert verified["downloaded_bytes"] > 0 and verified["already_verified"] == [], verified

        manifest, _ = resolve("demo", tmp_path / "seedbox" / "torrents")
        block_bytes = max(chunk.size for chunk in manifest.chunks if chunk.kind == "blocks")
        memory = str(2 * block_bytes + block_bytes // 2)
        for index in (1, 2):
            log = tmp_path / f"join{index}.log"
            process = subprocess.Popen(
                on(hosts[index - 1], ["join", "--model", "demo", "--bootstrap", bootstrap, "--memory", memory, "--json"]),
                env=home(f"host{index}"), stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
            )  # fmt: skip
            started.append(PeerProcess(process, wait_for_event(process, "serving", log), log))
        spans = sorted(tuple(peer.serving["blocks"]) for peer in started)
        assert spans == [(0, 2), (2, LAYERS)], [peer.log() for peer in started]

        run = subprocess.run(
            on(hosts[2], ["run", "--model", "demo", "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS),
                          "--bootstrap", bootstrap, "--json"]),
            env=home("host3"), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr + "".join(peer.log() for peer in started)
        record = json.loads(run.stdout)
    finally:
        for peer in started:
            peer.stop()
        seedbox.stop()

    # The route crosses the router: its hops are the two joiners, at their own subnets' addresses.
    assert [hop["address"].removeprefix("tcp://").rpartition(":")[0] for hop in record["route"]] == [
        hosts[0].address if started[0].serving["blocks"][0] == 0 else hosts[1].address,
        hosts[1].address if started[0].serving["blocks"][0] == 0 else hosts[0].address,
    ]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    expected = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=NEW_TOKENS
    )
    assert record["tokens"] == expected[0, prompt.shape[1] :].tolist()


@pytest.mark.parametrize("lsd", [True, False])
def test_hosts_on_one_lan_find_each_other_with_no_address_at_all(
    make_model_tool: ModuleType, tmp_path: Path, lsd: bool
) -> None:
    """Local service discovery (BEP 14): a fetcher given no bootstrap node, no tracker and no peer finds the
    seeder next to it on the LAN by multicast; with LSD off (the control) it finds nobody."""
    usable, reason = netlab.available()
    assert usable, reason
    model_dir = make_model_tool.make_model("llama", tmp_path / "m", layers=2, seed=4, log=lambda _line: None)
    with netlab.Lab(2, rate=None) as lan:
        seeder_host, fetcher_host = lan.hosts
        seeder_home = peer_environment(os.environ, home=tmp_path / "seeder", lsd=int(lsd))
        seeder = LineProcess(on(seeder_host, ["seed", str(model_dir), "--name", "lan", "--json"]), seeder_home)
        try:
            seeder.wait_event("seeding", 60)
            fetcher_home = tmp_path / "fetcher"
            (fetcher_home / "torrents").mkdir(parents=True)
            for suffix in (".json", ".torrent"):
                source = tmp_path / "seeder" / "torrents" / f"lan{suffix}"
                (fetcher_home / "torrents" / source.name).write_bytes(source.read_bytes())
            done = subprocess.run(
                on(fetcher_host, ["fetch", "lan", "--json", "--timeout", "30" if lsd else "8"]),
                env=peer_environment(os.environ, home=fetcher_home, lsd=int(lsd)),
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            seeder.stop()
    if not lsd:
        assert done.returncode == 1 and "0 peers seen" in done.stderr, done.stderr
        return
    assert done.returncode == 0, done.stderr
    verified = [json.loads(line) for line in done.stdout.splitlines() if '"verified"' in line][-1]
    # The seeder was the only other host: the bytes came from it.
    assert verified["downloaded_bytes"] > 0 and verified["already_verified"] == [], verified


def test_the_swarm_heals_after_two_peers_are_killed(
    lab: netlab.Lab, make_model_tool: ModuleType, tmp_path: Path
) -> None:
    """Four peers with memory for half the model each (no --blocks) split it two and two; nothing moves while
    nothing changes; SIGKILL both servers of one half and a survivor moves there without anyone acting."""
    model_dir = make_model_tool.make_model("llama", tmp_path / "m", layers=LAYERS, seed=3, log=lambda _line: None)
    seed_host, *hosts = lab.hosts
    bootstrap = f"{seed_host.address}:6881"

    def home(label: str) -> dict[str, str]:
        return peer_environment(os.environ, home=tmp_path / label, rebalance_interval=REBALANCE_SECONDS)

    seedbox = start_seedbox_host(seed_host, model_dir, "heal", home("seedbox"))
    peers: list[LineProcess] = []
    try:
        manifest, _ = resolve("heal", tmp_path / "seedbox" / "torrents")
        block_bytes = max(chunk.size for chunk in manifest.chunks if chunk.kind == "blocks")
        memory = str(2 * block_bytes + block_bytes // 2)
        spans = []
        for index in range(4):
            arguments = ["join", "--model", "heal", "--bootstrap", bootstrap, "--memory", memory, "--json"]
            peers.append(LineProcess(on(hosts[index], arguments), home(f"peer{index}")))
            spans.append(tuple(peers[-1].wait_event("serving", 120)["blocks"]))
        assert sorted(spans) == [(0, 2), (0, 2), (2, LAYERS), (2, LAYERS)], spans

        events = [Events(peer) for peer in peers]
        # A quiet period of several looks each: nobody moves.
        time.sleep(QUIET_SECONDS)
        assert [peer.of("moving") for peer in events] == [[], [], [], []]
        assert generated(hosts[4], bootstrap, home("client")) == expected_tokens(model_dir)

        doomed = [index for index, span in enumerate(spans) if span == (2, LAYERS)]
        for index in doomed:
            peers[index].process.send_signal(signal.SIGKILL)
            peers[index].process.wait()
        killed_at = time.monotonic()
        survivors = [events[index] for index in range(4) if index not in doomed]
        moved = wait_for_move(survivors, timeout=HEAL_SECONDS)
        healed_after = time.monotonic() - killed_at
        assert moved["blocks"] == [2, LAYERS], moved
        print(f"every block served again {healed_after:.1f} s after the kills")
        assert generated(hosts[4], bootstrap, home("client")) == expected_tokens(model_dir)
        # The other survivor stays where it is: the gap is filled, moving would uncover its half.
        time.sleep(QUIET_SECONDS)
        assert sum(len(peer.of("moving")) for peer in survivors) == 1
    finally:
        for peer in peers:
            peer.stop()
        seedbox.stop()


# Mean seconds between a peer's looks in the healing test, how long a quiet period lasts, and how long healing
# may take (a look, a second look, fetching and loading two blocks).
REBALANCE_SECONDS = 3
QUIET_SECONDS = 15.0
HEAL_SECONDS = 60.0


@dataclass
class Events:
    """The JSON events a process has printed so far, collected without waiting."""

    process: LineProcess
    seen: list[dict[str, Any]] = field(default_factory=list)

    def of(self, kind: str) -> list[dict[str, Any]]:
        while not self.process.lines.empty():
            line = self.process.lines.get_nowait()
            if line and line.startswith("{"):
                self.seen.append(json.loads(line))
        return [event for event in self.seen if event.get("event") == kind]


def wait_for_move(peers: list[Events], timeout: float) -> dict[str, Any]:
    """The first "moved" event any of the peers prints within timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for peer in peers:
            if moved := peer.of("moved"):
                return moved[0]
        time.sleep(0.2)
    raise AssertionError(f"no peer moved within {timeout} s")


def generated(host: netlab.Host, bootstrap: str, environment: dict[str, str]) -> list[int]:
    run = subprocess.run(
        on(host, ["run", "--model", "heal", "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS),
                  "--bootstrap", bootstrap, "--json"]),
        env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return list(json.loads(run.stdout)["tokens"])


def expected_tokens(model_dir: Path) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    expected = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=NEW_TOKENS
    )
    return list(expected[0, prompt.shape[1] :].tolist())
