"""Bad discovery input gets one line naming the thing, within the stated timeout, and leaves nothing
half-written: an unreachable bootstrap node, one that is not a swarm node (an HTTP server, a plain BitTorrent
client's DHT), a name nobody holds, a tracker that does not answer, a malformed tracker URL."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import libtorrent as lt
import pytest

from tests.conftest import SWARM
from tests.peer_harness import peer_environment
from tests.test_fetch import NAME, new_home, publish
from tests.test_seedbox import start_seedbox

TIMEOUT = 3
# Process start (imports) on a busy 2-core machine, on top of the network timeout.
START_ALLOWANCE = 20.0


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A UDP port nobody answers on."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
def http_port() -> Iterator[int]:
    """A TCP service that is not a swarm node (its UDP port is closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture
def plain_dht_node() -> Iterator[int]:
    """A BitTorrent client's DHT node with libtorrent's defaults: it answers, but holds no swarm records."""
    session = lt.session({"listen_interfaces": "127.0.0.1:0", "enable_dht": True, "enable_lsd": False})
    try:
        yield int(session.listen_port())
    finally:
        session.pause()


def test_bad_discovery_input_is_one_line_within_the_timeout(
    model_dirs: dict[str, Path], tmp_path: Path, silent_port: int, http_port: int, plain_dht_node: int
) -> None:
    publisher = tmp_path / "publisher"
    publish(model_dirs["llama"], publisher)
    seedbox, listening = start_seedbox(publisher)
    try:
        seedbox.wait_for("seeding")
        held_by_seedbox = f"127.0.0.1:{listening['torrent_port']}"
        cases = {
            "unreachable, fetch": (
                ["fetch", NAME, "--bootstrap", f"127.0.0.1:{silent_port}"],
                f"error: bootstrap node(s) 127.0.0.1:{silent_port} did not answer within {TIMEOUT} s",
            ),
            "unreachable, join": (
                ["join", "--model", NAME, "--bootstrap", f"127.0.0.1:{silent_port}"],
                f"error: bootstrap node(s) 127.0.0.1:{silent_port} did not answer within {TIMEOUT} s",
            ),
            "unreachable, run": (
                ["run", "--model", NAME, "--prompt", "hi", "--bootstrap", f"127.0.0.1:{silent_port}"],
                f"error: bootstrap node(s) 127.0.0.1:{silent_port} did not answer within {TIMEOUT} s",
            ),
            "an HTTP server": (
                ["fetch", NAME, "--bootstrap", f"127.0.0.1:{http_port}"],
                f"error: bootstrap node(s) 127.0.0.1:{http_port} did not answer within {TIMEOUT} s",
            ),
            "a plain DHT node": (
                ["fetch", NAME, "--bootstrap", f"127.0.0.1:{plain_dht_node}"],
                f"error: no record for {NAME} was found on the DHT within {TIMEOUT} s",
            ),
            "a name nobody holds": (
                ["join", "--model", "nobody", "--bootstrap", held_by_seedbox],
                f"error: no record for nobody was found on the DHT within {TIMEOUT} s",
            ),
            "a malformed tracker URL": (
                ["fetch", NAME, "--tracker", "ftp://tracker.invalid/announce"],
                "error: bad tracker URL 'ftp://tracker.invalid/announce': use http://HOST:PORT/announce",
            ),
        }
        homes = {label: tmp_path / f"client-{index}" for index, label in enumerate(cases)}
        started = time.monotonic()
        runs = {
            label: subprocess.Popen(
                [SWARM, *arguments],
                env=peer_environment(os.environ, home=homes[label], network_timeout=TIMEOUT),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for label, (arguments, _) in cases.items()
        }
        results = {label: process.communicate(timeout=120) for label, process in runs.items()}
        elapsed = time.monotonic() - started
    finally:
        seedbox.stop()
    for label, (_, expected) in cases.items():
        _, stderr = results[label]
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert runs[label].returncode == 1 and len(errors) == 1, (label, stderr)
        assert errors[0].startswith(expected), (label, errors[0])
        assert "Traceback" not in stderr, (label, stderr)
        assert written(homes[label]) == [], label
    assert elapsed < TIMEOUT + START_ALLOWANCE, elapsed


def written(home: Path) -> list[Path]:
    """Catalog entries and chunk files under a home: what a failed command must not leave behind."""
    return [path for folder in ("torrents", "data/models") for path in (home / folder).rglob("*") if path.is_file()]


def test_a_tracker_that_does_not_answer_is_named(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    publisher = tmp_path / "publisher"
    publish(model_dirs["llama"], publisher)
    home = new_home(tmp_path, "fetcher", publisher)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = int(probe.getsockname()[1])
    dead = f"http://127.0.0.1:{closed}/announce"
    started = time.monotonic()
    done = subprocess.run(
        [SWARM, "fetch", NAME, "--tracker", dead, "--timeout", str(TIMEOUT), "--listen", "127.0.0.1:0"],
        env=peer_environment(os.environ, home=home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"made no progress for {TIMEOUT} s" in errors[0], done.stderr
    assert f"tracker {dead}: " in errors[0], errors[0]
    assert time.monotonic() - started < TIMEOUT + START_ALLOWANCE
