"""A joining peer finds the peers already serving through the DHT, hosts the blocks nobody serves, and
fetches exactly those chunks over BitTorrent from a seeder. Real processes on 127.0.0.1 throughout.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from swarm.catalog import resolve
from swarm.wire import Kind
from tests.conftest import SWARM
from tests.peer_harness import ComputeClient, peer_environment, request, start_peers
from tests.test_dht import DhtNode, LineProcess

LAYERS = 4
LOOKUP_TIMEOUT = 45.0


@pytest.fixture(scope="module")
def dht_nodes() -> Iterator[list[DhtNode]]:
    environment = peer_environment(os.environ)
    boot = DhtNode(environment)
    nodes: list[DhtNode] = []
    try:
        nodes = [DhtNode(environment, (boot.address,)) for _ in range(2)]
        for node in nodes:
            assert node.ask(op="wait_dht", timeout=30)["messages_in"] > 0
        yield [boot, *nodes]
    finally:
        for node in [*nodes, boot]:
            node.stop()


def test_joining_peer_covers_the_unserved_blocks(
    dht_nodes: list[DhtNode], make_model_tool: ModuleType, tmp_path: Path
) -> None:
    boot, finder = dht_nodes[0], dht_nodes[1]
    model_dir = make_model_tool.make_model("llama", tmp_path / "llama", layers=LAYERS, seed=7, log=lambda _line: None)
    seeder_home = tmp_path / "seeder"
    seeder_environment = peer_environment(os.environ, home=seeder_home)
    seeder = LineProcess(
        [SWARM, "seed", str(model_dir), "--name", "gap", "--listen", "127.0.0.1:0", "--json"], seeder_environment
    )
    started = []
    try:
        published = seeder.next_json(60)
        seeder_port = seeder.wait_event("seeding", 30)["port"]
        manifest, _ = resolve("gap", seeder_home / "torrents")
        block_bytes = max(chunk.size for chunk in manifest.chunks if chunk.kind == "blocks")

        # The first peer serves blocks 0:2 from the seeder's own files and announces itself.
        (first,) = start_peers(
            [["--model", "gap", "--blocks", "0:2", "--bootstrap", boot.address]], seeder_environment, tmp_path / "logs"
        )
        started.append(first)
        first_port = int(first.address.rpartition(":")[2])
        deadline = time.monotonic() + LOOKUP_TIMEOUT
        found: list[list[object]] = []
        while ["127.0.0.1", first_port] not in found and time.monotonic() < deadline:
            found = finder.ask(op="find_compute", manifest=published["manifest"], timeout=10)["peers"]
        assert ["127.0.0.1", first_port] in found

        # The second peer knows only the catalog entry; its budget fits two blocks and a half.
        joiner_home = tmp_path / "joiner"
        (joiner_home / "torrents").mkdir(parents=True)
        for suffix in (".json", ".torrent"):
            shutil.copy(seeder_home / "torrents" / f"gap{suffix}", joiner_home / "torrents")
        (second,) = start_peers(
            [
                [
                    "--model", "gap",
                    "--memory", str(2 * block_bytes + block_bytes // 2),
                    "--bootstrap", boot.address,
                    "--peer", f"127.0.0.1:{seeder_port}",
                ]
            ],
            peer_environment(os.environ, home=joiner_home),
            tmp_path / "logs",
        )  # fmt: skip
        started.append(second)
        assert second.serving["blocks"] == [2, LAYERS], second.log()
        # Exactly the chunks of its span (and meta) came over BitTorrent; nothing else.
        fetched = sorted(path.name for path in (joiner_home / "data" / "models" / "gap").iterdir() if path.is_file())
        assert fetched == ["blocks-00002-00003.safetensors", "blocks-00003-00004.safetensors", "meta.tar"]
        client = ComputeClient()
        try:
            client.send(second.address, request(Kind.INFO))
            info = client.receive_direct(second.address).header.body
        finally:
            client.close()
        assert info["blocks"] == [2, LAYERS] and info["model"] == "gap"
        for peer in started:
            assert peer.stop() == 0, peer.log()
    finally:
        for peer in started:
            if peer.process.poll() is None:
                peer.process.kill()
        seeder.stop()
