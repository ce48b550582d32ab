"""`swarm seed` without --prepare-only serves the torrent: a second session on 127.0.0.1 downloads it."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import libtorrent as lt

from swarm.manifest import load_manifest
from swarm.torrent.merkle import file_root
from tests.conftest import SWARM


def test_seed_serves_a_downloader(model_dirs: dict[str, Path], swarm_env: dict[str, str], tmp_path: Path) -> None:
    seeder = subprocess.Popen(
        [SWARM, "seed", str(model_dirs["llama"]), "--name", "served", "--listen", "127.0.0.1:0", "--json"],
        env=swarm_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert seeder.stdout is not None
        published = json.loads(seeder.stdout.readline())
        seeding = json.loads(seeder.stdout.readline())
        assert seeding["event"] == "seeding"
        manifest = load_manifest(Path(published["manifest"]))

        downloader = lt.session(
            {
                "listen_interfaces": "127.0.0.1:0",
                "enable_dht": False,
                "enable_lsd": False,
                "enable_upnp": False,
                "enable_natpmp": False,
                "allow_multiple_connections_per_ip": True,
            }
        )
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(Path(published["torrent"]).read_bytes())
        params.save_path = str(tmp_path / "download")
        handle = downloader.add_torrent(params)
        handle.connect_peer(("127.0.0.1", seeding["port"]))
        deadline = time.monotonic() + 60
        while not handle.status().is_seeding:
            assert time.monotonic() < deadline, f"download stalled at {handle.status().progress:.0%}"
            time.sleep(0.1)
        for chunk in manifest.chunks:
            assert file_root(tmp_path / "download" / chunk.file) == chunk.root
    finally:
        seeder.send_signal(signal.SIGTERM)
        _, stderr = seeder.communicate(timeout=30)
    assert seeder.returncode == 0, stderr
