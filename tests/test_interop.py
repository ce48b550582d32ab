"""Interop with a standard BitTorrent client (aria2, from Debian's `aria2` package): it downloads a torrent
made by `swarm seed --format v1`, and `swarm fetch` downloads the same model from it.

aria2 1.36 reads v1 torrents only (not v2 or hybrid) and knows nothing of BEP 47 pad files: it stores them
as ordinary zero-filled files, so its copy has `.pad/N` files beside the chunks. The tests fail when aria2c
is missing (.ci/run installs it: `apt-get install -y --no-install-recommends aria2`).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import libtorrent as lt
import pytest

from swarm.manifest import Manifest
from swarm.torrent.merkle import file_root
from tests.test_fetch import NAME, Process, home_env, last_event, new_home, publish, run_fetch

ARIA2 = shutil.which("aria2c")


@pytest.fixture(autouse=True)
def aria2_installed() -> None:
    assert ARIA2 is not None, "aria2c is needed (apt-get install aria2; .ci/run installs it)"


ARIA2_QUIET = [
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--enable-peer-exchange=false",
    "--file-allocation=none",
    "--console-log-level=warn",
    "--summary-interval=0",
    "--download-result=hide",
]


def free_port() -> int:
    """A port aria2 can listen on (aria2 cannot be told to pick one and report it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def publisher_v1(model_dirs: dict[str, Path], tmp_path: Path) -> tuple[Path, Manifest]:
    home = tmp_path / "publisher"
    manifest = publish(model_dirs["llama"], home, torrent_format="v1")
    assert manifest.torrent.info_hash_v1 and not manifest.torrent.info_hash_v2
    return home, manifest


@pytest.fixture
def cleanup() -> Iterator[list[subprocess.Popen[bytes] | Process]]:
    started: list[subprocess.Popen[bytes] | Process] = []
    yield started
    for process in started:
        if isinstance(process, Process):
            process.stop()
        else:
            process.kill()
            process.wait()


def test_aria2_downloads_from_swarm(
    publisher_v1: tuple[Path, Manifest], tmp_path: Path, cleanup: list[subprocess.Popen[bytes] | Process]
) -> None:
    home, manifest = publisher_v1
    port = free_port()
    download_dir = tmp_path / "aria2"
    assert ARIA2 is not None
    aria2 = subprocess.Popen(
        [ARIA2, "--dir", str(download_dir), "--listen-port", str(port), "--seed-time=0", "--bt-stop-timeout=60",
         *ARIA2_QUIET, str(home / "torrents" / f"{NAME}.torrent")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    cleanup.append(aria2)
    # aria2 has no tracker or DHT here: the swarm seeder dials it (and redials until it answers).
    seeder = Process(
        ["fetch", NAME, "--seed", "--peer", f"127.0.0.1:{port}", "--listen", "127.0.0.1:0", "--json"], home_env(home)
    )
    cleanup.append(seeder)
    seeder.wait_for("seeding")
    assert aria2.wait(timeout=90) == 0, aria2.stderr.read() if aria2.stderr else ""
    for chunk in manifest.chunks:
        assert file_root(download_dir / chunk.file) == chunk.root


def test_swarm_fetches_from_aria2(
    publisher_v1: tuple[Path, Manifest], tmp_path: Path, cleanup: list[subprocess.Popen[bytes] | Process]
) -> None:
    publisher_home, manifest = publisher_v1
    torrent_file = publisher_home / "torrents" / f"{NAME}.torrent"
    seed_dir = tmp_path / "aria2"
    shutil.copytree(publisher_home / "data" / "models" / NAME, seed_dir / NAME)
    # aria2 treats BEP 47 pad files as real files: give it the zeros it expects, or it thinks pieces are missing.
    layout = lt.torrent_info(str(torrent_file)).layout()
    for index in range(layout.num_files()):
        if layout.file_flags(index) & lt.file_storage.flag_pad_file:
            pad = seed_dir / layout.file_path(index)
            pad.parent.mkdir(parents=True, exist_ok=True)
            pad.write_bytes(b"\0" * layout.file_size(index))
    port = free_port()
    assert ARIA2 is not None
    aria2 = subprocess.Popen(
        [ARIA2, "--dir", str(seed_dir), "--listen-port", str(port), "--check-integrity=true", "--seed-ratio=0.0",
         "--seed-time=10", *ARIA2_QUIET, str(torrent_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    cleanup.append(aria2)

    home = new_home(tmp_path, "fetcher", publisher_home)
    done = run_fetch(home, NAME, "--peer", f"127.0.0.1:{port}", "--timeout", "30")
    assert done.returncode == 0, done.stderr
    verified = last_event(done.stdout, "verified")
    # aria2 was the only peer (no bootstrap node, no LSD on loopback): every byte came from it. Per-source counts are
    # sampled every 0.1 s, and aria2 drops the connection once both sides are seeds, so a transfer this small may
    # finish between two samples: the bytes are counted in total, the source named when it was seen.
    assert verified["downloaded_bytes"] >= sum(chunk.size for chunk in manifest.chunks)
    assert set(verified["sources"]) <= {f"127.0.0.1:{port}"}
    for chunk in manifest.chunks:
        assert file_root(home / "data" / "models" / chunk.file) == chunk.root
