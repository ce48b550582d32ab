"""The seedbox's BitTorrent tracker as a pure table (request parsing, peer lists, expiry, scrapes), and with real
clients: aria2 finds the seedbox through it alone, and so does `swarm fetch` without any DHT bootstrap."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from swarm.catalog import resolve
from swarm.manifest import Manifest
from swarm.torrent.bencode import bdecode
from swarm.torrent.merkle import file_root
from swarm.tracker import PEER_TTL_SECONDS, PeerTable, TrackerError, parse_announce, parse_scrape
from tests.conftest import SWARM
from tests.test_fetch import NAME, home_env, last_event, new_home, run_fetch
from tests.test_interop import ARIA2_QUIET, free_port
from tests.test_seedbox import start_seedbox

INFO_HASH = hashlib.sha1(b"torrent").digest()
OTHER_HASH = hashlib.sha1(b"other").digest()


def query(info_hash: bytes = INFO_HASH, peer: bytes = b"A" * 20, **fields: str | int) -> str:
    values = {"info_hash": info_hash, "peer_id": peer, "port": 6881, "uploaded": 0, "downloaded": 0, "left": 10}
    values.update(fields)
    return urllib.parse.urlencode(values)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("peer_id=" + "A" * 20 + "&port=1", "missing info_hash"),
        (query(info_hash=b"short"), "info_hash must be 20 bytes"),
        (query(peer=b"short"), "peer_id must be 20 bytes"),
        (query(port=0), "invalid port"),
        (query(port=70000), "invalid port"),
        (query(port="x"), "invalid port"),
        (query(left=-1), "invalid left"),
        (query(event="exploded"), "invalid event"),
        ("%zz", "missing info_hash"),
    ],
)
def test_bad_announces_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(TrackerError, match=reason):
        parse_announce(text, "10.0.0.1")


def test_announces_list_the_other_peers_compactly() -> None:
    table = PeerTable()
    table.track([INFO_HASH])
    first = bdecode(table.announce(parse_announce(query(peer=b"A" * 20, port=1001), "10.0.0.1"), now=0.0))
    assert first[b"peers"] == b"" and first[b"incomplete"] == 1
    second = bdecode(table.announce(parse_announce(query(peer=b"B" * 20, port=1002, left=0), "10.0.0.2"), now=1.0))
    assert second[b"peers"] == bytes([10, 0, 0, 1]) + (1001).to_bytes(2, "big")
    assert (second[b"complete"], second[b"incomplete"]) == (1, 1)
    # The tracker's own address comes first; an IPv6 peer goes to peers6 (BEP 7).
    third = bdecode(
        table.announce(parse_announce(query(peer=b"C" * 20, port=1003), "fd00::3"), now=2.0, own=("10.0.0.9", 7))
    )
    assert third[b"peers"][:6] == bytes([10, 0, 0, 9, 0, 7])
    assert len(third[b"peers"]) == 18 and third[b"peers6"] == b""
    fourth = bdecode(table.announce(parse_announce(query(peer=b"D" * 20), "10.0.0.4"), now=3.0))
    assert len(fourth[b"peers6"]) == 18


def test_stopped_and_silent_peers_are_forgotten_and_strangers_refused() -> None:
    table = PeerTable()
    table.track([INFO_HASH])
    table.announce(parse_announce(query(peer=b"A" * 20), "10.0.0.1"), now=0.0)
    table.announce(parse_announce(query(peer=b"B" * 20), "10.0.0.2"), now=0.0)
    table.announce(parse_announce(query(peer=b"A" * 20, event="stopped"), "10.0.0.1"), now=1.0)
    seen = bdecode(table.announce(parse_announce(query(peer=b"C" * 20, compact=0), "10.0.0.3"), now=2.0))
    assert seen[b"peers"] == [{b"ip": b"10.0.0.2", b"port": 6881}]
    later = bdecode(table.announce(parse_announce(query(peer=b"C" * 20), "10.0.0.3"), now=2.0 + PEER_TTL_SECONDS + 1))
    assert later[b"peers"] == b""
    refused = bdecode(table.announce(parse_announce(query(info_hash=OTHER_HASH), "10.0.0.1"), now=0.0))
    assert refused == {b"failure reason": b"unregistered torrent"}


def test_scrape_counts_seeds_and_leechers() -> None:
    table = PeerTable()
    table.track([INFO_HASH, OTHER_HASH])
    table.announce(parse_announce(query(peer=b"A" * 20, left=0), "10.0.0.1"), now=0.0)
    table.announce(parse_announce(query(peer=b"B" * 20, left=5), "10.0.0.2"), now=0.0)
    answer = bdecode(table.scrape(parse_scrape(urllib.parse.urlencode({"info_hash": INFO_HASH})), now=1.0))
    assert answer[b"files"] == {INFO_HASH: {b"complete": 1, b"downloaded": 0, b"incomplete": 1}}
    assert set(bdecode(table.scrape([], now=1.0))[b"files"]) == {INFO_HASH, OTHER_HASH}
    with pytest.raises(TrackerError):
        parse_scrape("info_hash=short")


@pytest.fixture
def tracked_publisher(model_dirs: dict[str, Path], tmp_path: Path) -> tuple[Path, Manifest, str, int]:
    """A v1 model (aria2 reads v1 only) published with the seedbox's future tracker URL in its torrent."""
    status_port = free_port()
    url = f"http://127.0.0.1:{status_port}/announce"
    home = tmp_path / "publisher"
    done = subprocess.run(
        [SWARM, "seed", str(model_dirs["llama"]), "--name", NAME, "--prepare-only", "--format", "v1", "--json",
         "--tracker", url],
        env=home_env(home), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    torrent = bdecode((home / "torrents" / f"{NAME}.torrent").read_bytes())
    assert torrent[b"announce"] == url.encode()
    manifest, _ = resolve(NAME, home / "torrents")
    return home, manifest, url, status_port


def test_aria2_finds_the_seedbox_through_its_tracker(
    tracked_publisher: tuple[Path, Manifest, str, int], tmp_path: Path
) -> None:
    aria2 = shutil.which("aria2c")
    assert aria2 is not None, "aria2c is needed (apt-get install aria2; .ci/run installs it)"
    home, manifest, _url, status_port = tracked_publisher
    seedbox, _ = start_seedbox(home, "--status", f"127.0.0.1:{status_port}")
    try:
        seedbox.wait_for("seeding")
        target = tmp_path / "aria2"
        # No DHT, no LSD, no PEX, no peer given: the tracker is aria2's only way to the seedbox.
        done = subprocess.run(
            [aria2, "--dir", str(target), "--seed-time=0", "--bt-stop-timeout=60", *ARIA2_QUIET,
             str(home / "torrents" / f"{NAME}.torrent")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        seedbox.stop()
    for chunk in manifest.chunks:
        assert file_root(target / chunk.file) == chunk.root


def test_swarm_fetch_finds_the_seedbox_through_the_tracker_alone(
    tracked_publisher: tuple[Path, Manifest, str, int], tmp_path: Path
) -> None:
    home, manifest, _url, status_port = tracked_publisher
    seedbox, _ = start_seedbox(home, "--status", f"127.0.0.1:{status_port}")
    try:
        seedbox.wait_for("seeding")
        fetcher = new_home(tmp_path, "fetcher", home)
        done = run_fetch(fetcher, NAME, "--timeout", "30")
        assert done.returncode == 0, done.stderr
    finally:
        seedbox.stop()
    assert last_event(done.stdout, "verified")["chunks"] == [chunk.id for chunk in manifest.chunks]
