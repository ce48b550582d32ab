"""`swarm seedbox`: seeds the catalog, answers /status and /metrics, picks up new entries, mirrors what it
lacks, survives SIGKILL without losing verified pieces, and exits 0 with resume data on SIGTERM."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from swarm.manifest import Manifest
from swarm.torrent.merkle import file_root
from tests.test_fetch import NAME, Process, home_env, new_home, publish, start_seeder


def get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def metric_samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text read by prometheus_client's own parser: (labels, value) of each sample, by sample name."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def torrent_status(port: int, name: str) -> dict[str, Any] | None:
    _, _, body = get(port, "/status")
    return next((torrent for torrent in json.loads(body)["torrents"] if torrent["name"] == name), None)


def start_seedbox(home: Path, *extra: str, **environment: str) -> tuple[Process, dict[str, Any]]:
    process = Process(
        ["seedbox", "--listen", "127.0.0.1:0", "--status", "127.0.0.1:0", "--json", *extra],
        home_env(home, **environment),
    )
    return process, process.wait_for("listening")


@pytest.fixture
def publisher(model_dirs: dict[str, Path], tmp_path: Path) -> tuple[Path, Manifest]:
    home = tmp_path / "publisher"
    return home, publish(model_dirs["llama"], home)


def test_status_metrics_rescan_and_clean_stop(
    publisher: tuple[Path, Manifest], model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    home, manifest = publisher
    seedbox, listening = start_seedbox(home, "--rescan", "0.5")
    try:
        seeding = seedbox.wait_for("seeding", name=NAME)
        assert seeding["chunks"] == len(manifest.chunks)
        status_port = listening["status_port"]
        time.sleep(1.2)  # the status snapshot refreshes every second
        code, content_type, body = get(status_port, "/status")
        assert code == 200 and content_type == "application/json"
        document = json.loads(body)
        assert document["listen_port"] == listening["torrent_port"]
        torrent = torrent_status(status_port, NAME)
        assert torrent is not None
        assert torrent["info_hash"] == manifest.torrent.info_hash_v2
        assert torrent["state"] == "seeding" and torrent["progress"] == 1.0
        assert sorted(torrent["chunks_held"]) == sorted(chunk.id for chunk in manifest.chunks)
        for field in ("peers", "upload_rate", "download_rate", "bytes_uploaded", "bytes_downloaded"):
            assert isinstance(torrent[field], int), field

        # A downloader takes the model from the seedbox: /metrics counts the bytes it uploaded.
        fetcher_home = new_home(tmp_path, "fetcher", home)
        fetcher = Process(
            ["fetch", NAME, "--peer", f"127.0.0.1:{listening['torrent_port']}", "--listen", "127.0.0.1:0", "--json"],
            home_env(fetcher_home),
        )
        fetcher.wait_for("verified")
        assert fetcher.popen.wait(timeout=30) == 0
        # libtorrent adds a second's payload to the all-time counter on its once-a-second tick, and the snapshot
        # refreshes once a second too: on a busy machine the count lags the fetcher's exit by a few seconds.
        total = sum(c.size for c in manifest.chunks)
        deadline = time.monotonic() + 20
        while True:
            code, content_type, metrics = get(status_port, "/metrics")
            assert code == 200 and content_type.startswith("text/plain")
            samples = metric_samples(metrics)
            uploaded = samples["swarm_bytes_uploaded_total"]
            assert len(uploaded) == 1 and uploaded[0][0] == {"model": NAME, "info_hash": manifest.torrent.info_hash_v2}
            if uploaded[0][1] >= total or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        assert uploaded[0][1] >= total
        assert samples["swarm_chunks_held"][0][1] == samples["swarm_chunks_total"][0][1] == len(manifest.chunks)
        assert samples["swarm_seedbox_torrents"] == [({}, 1)]
        assert "# TYPE swarm_bytes_uploaded_total counter" in metrics
        assert get(status_port, "/nothing-here")[0] == 404

        # A model published into the catalog while the seedbox runs is picked up by the next scan.
        other = publish(model_dirs["gpt2"], home, name="other")
        assert seedbox.wait_for("seeding", name="other")["chunks"] == len(other.chunks)
    finally:
        returncode = seedbox.stop()
    assert returncode == 0
    assert seedbox.wait_for("stopped", timeout=5)
    assert (home / "data" / "resume" / f"{manifest.torrent.info_hash_v2}.resume").is_file()


def test_mirror_resumes_after_sigkill_and_stops_cleanly(publisher: tuple[Path, Manifest], tmp_path: Path) -> None:
    publisher_home, manifest = publisher
    total = sum(chunk.size for chunk in manifest.chunks)
    source, source_port = start_seeder(publisher_home)
    try:
        home = new_home(tmp_path, "seedbox", publisher_home)
        slow = ("--mirror", "--peer", f"127.0.0.1:{source_port}", "--download-limit", "100000", "--limit-local-peers")
        seedbox, listening = start_seedbox(home, *slow, SWARM_RESUME_INTERVAL="0.3")
        seedbox.wait_for("fetching", name=NAME)
        # Kill it once some chunks are verified (hence flushed to disk) and others are still coming.
        deadline = time.monotonic() + 30
        while True:
            torrent = torrent_status(listening["status_port"], NAME)
            if torrent is not None and 1 <= len(torrent["chunks_held"]) < len(manifest.chunks):
                break
            assert time.monotonic() < deadline, f"mirror fetch too slow: {torrent}"
            time.sleep(0.1)
        held = sum(manifest.chunk(chunk_id).size for chunk_id in torrent["chunks_held"])
        seedbox.popen.send_signal(signal.SIGKILL)
        seedbox.popen.wait(timeout=10)

        restarted, _ = start_seedbox(home, "--mirror", "--peer", f"127.0.0.1:{source_port}")
        try:
            fetched = restarted.wait_for("fetched", name=NAME)
            # The second run downloads only what the first had not: the pieces on disk survived the kill.
            assert fetched["downloaded_bytes"] <= total - held, fetched
            restarted.wait_for("seeding", name=NAME)
            for chunk in manifest.chunks:
                assert file_root(home / "data" / "models" / chunk.file) == chunk.root
        finally:
            returncode = restarted.stop()
        assert returncode == 0
        assert (home / "data" / "resume" / f"{manifest.torrent.info_hash_v2}.resume").is_file()
    finally:
        source.stop()
