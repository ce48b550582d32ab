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
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

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


def test_hosts_knowing_only_the_seedbox_fetch_join_and_run(
    lab: netlab.Lab, make_model_tool: ModuleType, tmp_path: Path
) -> None:
    model_dir = make_model_tool.make_model("llama", tmp_path / "m", layers=LAYERS, seed=9, log=lambda _line: None)
    seed_host, *hosts = lab.hosts
    bootstrap = f"{seed_host.address}:6881"

    def home(label: str) -> dict[str, str]:
        return peer_environment(os.environ, home=tmp_path / label)

    prepared = subprocess.run(
        on(seed_host, ["seed", str(model_dir), "--name", "demo", "--prepare-only"]),
        env=home("seedbox"), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    seedbox = LineProcess(on(seed_host, ["seedbox", "--json"]), home("seedbox"))
    started: list[PeerProcess] = []
    try:
        seedbox.wait_event("seeding", 60)
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
            assert verified["name"] == "demo" and verified["sources"], verified

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
    assert any(source.startswith(seeder_host.address) for source in verified["sources"]), verified
