"""`swarm run` with nothing but a model name and a DHT bootstrap node: real processes on 127.0.0.1.

The client's SWARM_HOME starts empty. It resolves the name through the DHT, fetches only its own chunks (meta,
embed, head) over BitTorrent from the publisher's seeder, finds the two compute peers through the DHT, plans
the route over them, and generates exactly what transformers generates.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from swarm.catalog import resolve
from tests.conftest import SWARM
from tests.peer_harness import PeerProcess, peer_environment, start_liar, start_peers
from tests.test_dht import DhtNode, LineProcess

NEW_TOKENS = 8
# A loopback DHT converges in rounds; success returns early.
LOOKUP_TIMEOUT = 60.0
PROMPT = "Now is better than never."


def test_run_finds_everything_through_the_dht(make_model_tool: ModuleType, tmp_path: Path) -> None:
    model_dir = make_model_tool.make_model("llama", tmp_path / "llama", layers=4, seed=11, log=lambda _line: None)
    base = peer_environment(os.environ, torrent_listen="127.0.0.1:0")
    boot = DhtNode(base)
    finder = DhtNode(base, (boot.address,))
    bootstrap = ["--bootstrap", boot.address]
    seeder_home = tmp_path / "seeder"
    seeder_environment = peer_environment(os.environ, home=seeder_home, torrent_listen="127.0.0.1:0")
    seeder = LineProcess(
        [SWARM, "seed", str(model_dir), "--name", "dhtllama", "--listen", "127.0.0.1:0", *bootstrap, "--json"],
        seeder_environment,
    )
    peers = []
    try:
        seeder.next_json(120)  # the publish summary
        seeder_port = seeder.wait_event("seeding", 60)["port"]
        peers = start_peers(
            [["--model", "dhtllama", "--blocks", span, "--bootstrap", boot.address] for span in ("0:2", "2:4")],
            seeder_environment,
            tmp_path / "logs",
        )
        # A peer's first announcement can go out before its DHT has any node (it repeats every minute):
        # wait until a third party finds both, so the client's own lookup meets a converged DHT.
        wanted = sorted(["127.0.0.1", int(peer.address.rpartition(":")[2])] for peer in peers)
        deadline = time.monotonic() + LOOKUP_TIMEOUT
        found: list[list[object]] = []
        manifest_path = str(seeder_home / "torrents" / "dhtllama.json")
        while sorted(found) != wanted and time.monotonic() < deadline:
            found = finder.ask(op="find_compute", manifest=manifest_path, timeout=10)["peers"]
        assert sorted(found) == wanted
        client_home = tmp_path / "client"
        arguments = ["--model", "dhtllama", "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS), *bootstrap]
        run = subprocess.run(
            [SWARM, "run", *arguments, "--peer", f"127.0.0.1:{seeder_port}", "--json"],
            env=peer_environment(os.environ, home=client_home, torrent_listen="127.0.0.1:0"),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr + "\n".join(peer.log() for peer in peers)
        record = json.loads(run.stdout)
        impostor_run, impostor_address = run_beside_an_impostor(
            peers, boot.address, lambda: finder.ask(op="find_compute", manifest=manifest_path, timeout=10)["peers"],
            seeder_environment, tmp_path,
        )  # fmt: skip
    finally:
        for peer in peers:
            peer.stop()
        seeder.stop()
        finder.stop()
        boot.stop()

    # Through the ports only each peer's own key answers at (public swarms are encrypted by default).
    assert [(hop["address"], hop["blocks"]) for hop in record["route"]] == [
        (peers[0].serving["keyed_address"], [0, 2]),
        (peers[1].serving["keyed_address"], [2, 4]),
    ]
    assert all("/" in hop["address"] for hop in record["route"])
    assert impostor_run.returncode == 1
    (line,) = impostor_run.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: ") and f"peer {impostor_address} not used: the DHT does not list its key" in line
    # Only the client's own chunks came over BitTorrent.
    manifest, _ = resolve("dhtllama", seeder_home / "torrents")
    fetched = sorted(path.name for path in (client_home / "data" / "models" / "dhtllama").iterdir() if path.is_file())
    assert fetched == sorted(
        Path(chunk.file).name for chunk in manifest.chunks if chunk.kind in ("meta", "embed", "head")
    )

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = torch.tensor([AutoTokenizer.from_pretrained(model_dir)(PROMPT)["input_ids"]])
    assert record["prompt_tokens"] == prompt.shape[1]
    expected = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=NEW_TOKENS
    )
    assert record["tokens"] == expected[0, prompt.shape[1] :].tolist()


def run_beside_an_impostor(
    peers: list[PeerProcess],
    bootstrap: str,
    find: Callable[[], list[list[object]]],
    environment: dict[str, str],
    tmp_path: Path,
) -> tuple[subprocess.CompletedProcess[str], str]:
    """The peer of blocks 0:2 stops and one whose key is not in the DHT takes its place (as an attacker answering at
    a peer's address would be): the client does not use it. The control: the same impostor computes when the route
    is given by hand (--route, nothing to check it against)."""
    peers[0].stop()
    impostor = start_liar("unvouched", ["--model", "dhtllama", "--blocks", "0:2", "--bootstrap", bootstrap],
                          environment, tmp_path / "impostor.log")  # fmt: skip
    client = peer_environment(os.environ, home=tmp_path / "client", torrent_listen="127.0.0.1:0")
    arguments = ["--model", "dhtllama", "--prompt", PROMPT, "--max-new-tokens", "2", "--json"]
    try:
        by_hand = subprocess.run([SWARM, "run", *arguments, "--route", f"{impostor.address},{peers[1].address}"],
                                 env=client, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert by_hand.returncode == 0, by_hand.stderr
        port = int(impostor.address.rpartition(":")[2])
        deadline = time.monotonic() + LOOKUP_TIMEOUT
        while ["127.0.0.1", port] not in find() and time.monotonic() < deadline:
            pass
        run = subprocess.run([SWARM, "run", *arguments, "--bootstrap", bootstrap], env=client,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        return run, impostor.address
    finally:
        impostor.stop()
