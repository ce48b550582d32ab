"""`swarm fetch`: real processes, real libtorrent sessions on 127.0.0.1.

Partial fetches take exactly the chunk files asked for; a full fetch draws from several partial seeders; a
seeder serving corrupted bytes is caught by the piece hashes; bad input and dead peers end in one-line errors.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarm.manifest import Manifest, load_manifest
from swarm.torrent.merkle import file_root
from tests.conftest import SWARM

NAME = "tiny"


# --- helpers shared with test_seedbox.py and test_interop.py --------------------------------------------------


def home_env(home: Path, **extra: str) -> dict[str, str]:
    environment = dict(os.environ)
    environment["SWARM_HOME"] = str(home)
    for variable in ("SWARM_CATALOG", "SWARM_DATA", "SWARM_BOOTSTRAP", "SWARM_TORRENT_LISTEN"):
        environment.pop(variable, None)
    environment.update(extra)
    return environment


def publish(model_dir: Path, home: Path, name: str = NAME, torrent_format: str = "v2") -> Manifest:
    """`swarm seed --prepare-only` into home; returns the manifest."""
    done = subprocess.run(
        [SWARM, "seed", str(model_dir), "--name", name, "--prepare-only", "--json", "--format", torrent_format],
        env=home_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return load_manifest(Path(json.loads(done.stdout)["manifest"]))


def new_home(tmp_path: Path, label: str, publisher_home: Path) -> Path:
    """A SWARM_HOME with a copy of the publisher's catalog and no chunk files."""
    home = tmp_path / label
    shutil.copytree(publisher_home / "torrents", home / "torrents")
    return home


def copy_chunks(manifest: Manifest, source_home: Path, target_home: Path, chunk_ids: list[str]) -> None:
    for chunk_id in chunk_ids:
        chunk = manifest.chunk(chunk_id)
        target = target_home / "data" / "models" / chunk.file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source_home / "data" / "models" / chunk.file, target)


def files_under(directory: Path) -> set[str]:
    """Every file (hidden ones too, e.g. libtorrent's .parts) under directory, relative to it."""
    if not directory.exists():
        return set()
    return {str(path.relative_to(directory)) for path in directory.rglob("*") if path.is_file()}


class Process:
    """A CLI subprocess whose stdout JSON lines are read on a thread, so waits can time out."""

    def __init__(self, arguments: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            [SWARM, *arguments], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                continue

    def wait_for(self, event: str, timeout: float = 30, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                record = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.popen.poll() is not None and self.lines.empty():
                    stderr = self.popen.stderr.read() if self.popen.stderr else ""
                    raise AssertionError(
                        f"process ended (rc {self.popen.returncode}) before {event}: {stderr}"
                    ) from None
                continue
            self.seen.append(record)
            if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
                return record
        raise AssertionError(f"no {event} event within {timeout} s; saw {[r.get('event') for r in self.seen]}")

    def stop(self, timeout: float = 30) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        return self.popen.returncode

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait()


def start_seeder(home: Path, name: str = NAME, *extra: str, env: dict[str, str] | None = None) -> tuple[Process, int]:
    """`swarm fetch NAME --seed` over chunks already on disk: verifies them, then seeds; returns its port."""
    process = Process(
        ["fetch", name, "--seed", "--listen", "127.0.0.1:0", "--json", "--timeout", "20", *extra],
        env or home_env(home),
    )
    seeding = process.wait_for("seeding")
    return process, int(seeding["port"])


def run_fetch(home: Path, *arguments: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SWARM, "fetch", *arguments, "--listen", "127.0.0.1:0", "--json"],
        env=home_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_event(output: str, event: str) -> dict[str, Any]:
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    matching = [record for record in records if record.get("event") == event]
    assert matching, f"no {event} event in {output!r}"
    return matching[-1]


@pytest.fixture
def publisher(model_dirs: dict[str, Path], tmp_path: Path) -> tuple[Path, Manifest]:
    home = tmp_path / "publisher"
    return home, publish(model_dirs["llama"], home)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.stop()


def fetcher_beside_seeder(
    publisher: tuple[Path, Manifest], tmp_path: Path, processes: list[Process]
) -> tuple[Path, str]:
    """A seeder of the whole model (the publisher's home) and a fresh fetcher home; returns it and the seeder."""
    publisher_home, _ = publisher
    seeder, port = start_seeder(publisher_home)
    processes.append(seeder)
    return new_home(tmp_path, "fetcher", publisher_home), f"127.0.0.1:{port}"


# --- tests ---------------------------------------------------------------------------------------------------


def test_partial_fetch_takes_only_the_selected_chunks_and_resumes(
    publisher: tuple[Path, Manifest], tmp_path: Path, processes: list[Process]
) -> None:
    manifest = publisher[1]
    home, seeder_address = fetcher_beside_seeder(publisher, tmp_path, processes)

    done = run_fetch(home, NAME, "--blocks", "1:2", "--peer", seeder_address, "--timeout", "20")
    assert done.returncode == 0, done.stderr
    wanted = {manifest.chunk("meta"), manifest.chunk("blocks-00001-00002")}
    models = home / "data" / "models"
    # Exactly the chunk files of block 1 plus meta: no other chunk file, no pad file, no libtorrent part file.
    assert files_under(models) == {chunk.file for chunk in wanted}
    for chunk in wanted:
        assert file_root(models / chunk.file) == chunk.root
    verified = last_event(done.stdout, "verified")
    assert verified["downloaded_bytes"] >= sum(chunk.size for chunk in wanted)
    assert (home / "data" / "resume" / f"{manifest.torrent.info_hash_v2}.resume").is_file()

    # Widening the selection (by magnet link, resolved from the local catalog) fetches only the new chunk.
    done = run_fetch(home, manifest.torrent.magnet, "--blocks", "1:3", "--peer", seeder_address, "--timeout", "20")
    assert done.returncode == 0, done.stderr
    verified = last_event(done.stdout, "verified")
    assert sorted(verified["already_verified"]) == ["blocks-00001-00002", "meta"]
    new_chunk = manifest.chunk("blocks-00002-00003")
    assert new_chunk.size <= verified["downloaded_bytes"] < new_chunk.size + manifest.torrent.piece_length
    assert file_root(models / new_chunk.file) == new_chunk.root
    assert "embed.safetensors" not in {Path(path).name for path in files_under(models)}


def test_full_fetch_draws_from_several_partial_seeders(
    publisher: tuple[Path, Manifest], tmp_path: Path, processes: list[Process]
) -> None:
    publisher_home, manifest = publisher
    # Three seeders, none holding the whole model (a fetch always includes meta): every one must contribute.
    holdings = {
        "a": ["meta", "embed", "blocks-00000-00001"],
        "b": ["meta", "blocks-00001-00002", "head"],
        "c": ["meta", "blocks-00002-00003"],
    }
    ports = {}
    for label, chunk_ids in holdings.items():
        home = new_home(tmp_path, f"seeder-{label}", publisher_home)
        copy_chunks(manifest, publisher_home, home, chunk_ids)
        seeder, ports[label] = start_seeder(home, NAME, "--chunks", ",".join(chunk_ids))
        processes.append(seeder)
        assert len(files_under(home / "data" / "models")) == len(chunk_ids)

    home = new_home(tmp_path, "fetcher", publisher_home)
    peers = [argument for port in ports.values() for argument in ("--peer", f"127.0.0.1:{port}")]
    done = run_fetch(home, NAME, *peers, "--timeout", "20")
    assert done.returncode == 0, done.stderr
    for chunk in manifest.chunks:
        assert file_root(home / "data" / "models" / chunk.file) == chunk.root
    sources = last_event(done.stdout, "verified")["sources"]
    assert {f"127.0.0.1:{port}" for port in ports.values()} <= {address for address, got in sources.items() if got}


def test_chunks_behind_resume_data_get_the_full_sha256_check(
    publisher: tuple[Path, Manifest], tmp_path: Path, processes: list[Process]
) -> None:
    """A fresh v2 fetch is proven by libtorrent's SHA-256 merkle checks; pieces libtorrent takes from resume data
    are not checked by it, so those chunks get the manifest's SHA-256 pass, which catches a flipped byte."""
    manifest = publisher[1]
    home, seeder_address = fetcher_beside_seeder(publisher, tmp_path, processes)
    done = run_fetch(home, NAME, "--blocks", "0:1", "--peer", seeder_address, "--timeout", "20")
    assert done.returncode == 0, done.stderr
    chunk = manifest.chunk("blocks-00000-00001")
    path = home / "data" / "models" / chunk.file
    assert file_root(path) == chunk.root
    assert (home / "data" / "resume" / f"{manifest.torrent.info_hash_v2}.resume").is_file()

    # Same size, one byte different: the resume data still agrees with the disk, so libtorrent trusts it.
    with path.open("r+b") as handle:
        handle.seek(chunk.size // 2)
        byte = handle.read(1)
        handle.seek(chunk.size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    done = run_fetch(home, NAME, "--blocks", "0:1", "--peer", seeder_address, "--timeout", "20")
    assert done.returncode == 1
    assert "blocks-00000-00001 (corrupt)" in done.stderr
    assert '"event": "verified"' not in done.stdout


def _corrupt_block_files(manifest: Manifest, home: Path) -> None:
    """Flip one byte in every piece of every blocks chunk, in place."""
    step = manifest.torrent.piece_length
    for chunk in manifest.chunks:
        if chunk.kind != "blocks":
            continue
        path = home / "data" / "models" / chunk.file
        data = bytearray(path.read_bytes())
        for offset in range(100, len(data), step):
            data[offset] ^= 0xFF
        with path.open("r+b") as handle:
            handle.write(data)


def test_corrupted_seeder_is_caught_by_piece_hashes(
    publisher: tuple[Path, Manifest], tmp_path: Path, processes: list[Process]
) -> None:
    publisher_home, manifest = publisher
    liar_home = new_home(tmp_path, "liar", publisher_home)
    copy_chunks(manifest, publisher_home, liar_home, [chunk.id for chunk in manifest.chunks])
    liar, liar_port = start_seeder(liar_home)
    processes.append(liar)
    # The liar checked its files when it started; the bytes change under it afterwards, so it serves bad data.
    _corrupt_block_files(manifest, liar_home)
    block_chunks = [chunk for chunk in manifest.chunks if chunk.kind == "blocks"]

    alone = new_home(tmp_path, "alone", publisher_home)
    done = run_fetch(alone, NAME, "--peer", f"127.0.0.1:{liar_port}", "--timeout", "3")
    assert done.returncode == 1
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: fetching tiny made no progress"), error
    assert all(chunk.id in error for chunk in block_chunks)
    assert any(json.loads(line).get("event") == "hash_failed" for line in done.stdout.splitlines())
    for chunk in block_chunks:
        path = alone / "data" / "models" / chunk.file
        assert not path.exists() or file_root(path) != chunk.root

    # With an honest (slower) seeder beside the liar, the fetch completes and every chunk verifies.
    honest, honest_port = start_seeder(publisher_home, NAME, "--upload-limit", "300000", "--limit-local-peers")
    processes.append(honest)
    home = new_home(tmp_path, "fetcher", publisher_home)
    done = run_fetch(home, NAME, "--peer", f"127.0.0.1:{liar_port}", "--peer", f"127.0.0.1:{honest_port}",
                     "--timeout", "20")  # fmt: skip
    assert done.returncode == 0, done.stderr
    verified = last_event(done.stdout, "verified")
    assert verified["hash_failures"] >= 1
    for chunk in manifest.chunks:
        assert file_root(home / "data" / "models" / chunk.file) == chunk.root


def _error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one error line (warnings may precede it; a traceback may not)."""
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def test_bad_references_and_unreachable_peers_fail_fast_with_one_line(
    publisher: tuple[Path, Manifest], tmp_path: Path
) -> None:
    publisher_home, _ = publisher
    home = new_home(tmp_path, "fetcher", publisher_home)
    cases = [
        (["no-such-model"], "no-such-model is not in the catalog"),
        (["magnet:?dn=tiny"], "malformed magnet link"),
        (["magnet:?xt=urn:btih:not-a-hash"], "malformed magnet link"),
        ([NAME, "--blocks", "2:9"], "block range 2:9 is not inside"),
        ([NAME, "--blocks", "two"], "--blocks takes START:END"),
        ([NAME, "--chunks", "blocks-99"], "has no chunk 'blocks-99'"),
        ([NAME, "--peer", "nowhere"], "--peer: expected HOST:PORT"),
        # Nothing listens on port 9: no progress, a message within the timeout rather than a hang.
        ([NAME, "--peer", "127.0.0.1:9"], "made no progress for 2 s: chunks meta, embed"),
        (["unknown-name", "--bootstrap", "127.0.0.1:9"], "error: "),
    ]
    started = time.monotonic()
    # The cases run side by side: each is a separate process with its own error.
    running = [
        subprocess.Popen(
            [SWARM, "fetch", *arguments, "--listen", "127.0.0.1:0", "--timeout", "2"],
            env=home_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for arguments, _ in cases
    ]
    for (arguments, expected), process in zip(cases, running, strict=True):
        stdout, stderr = process.communicate(timeout=30)
        done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        assert done.returncode == 1, (arguments, done.stdout)
        assert expected in _error_line(done), (arguments, done.stderr)
    assert time.monotonic() - started < 30
    assert files_under(home / "data" / "models") == set()


def test_disk_full_is_a_clear_error(publisher: tuple[Path, Manifest], tmp_path: Path, processes: list[Process]) -> None:
    publisher_home, manifest = publisher
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(small)], capture_output=True)
    # Root, as for the network namespaces of the multi-host tests.
    assert mounted.returncode == 0, f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}"
    try:
        home = new_home(tmp_path, "fetcher", publisher_home)
        # Known up front: the model (about 870 KiB) does not fit in 600 KiB.
        done = run_fetch(home, NAME, "--data", str(small / "up-front"), "--peer", "127.0.0.1:9", "--timeout", "10")
        assert done.returncode == 1
        assert "no space left on device" in _error_line(done)

        # Found while writing: the disk fills up during a slow fetch of a selection that fitted at the start.
        seeder, port = start_seeder(publisher_home, NAME, "--upload-limit", "100000", "--limit-local-peers")
        processes.append(seeder)
        fetcher = Process(
            ["fetch", NAME, "--blocks", "0:2", "--data", str(small / "data"), "--peer", f"127.0.0.1:{port}",
             "--listen", "127.0.0.1:0", "--json", "--timeout", "10"],
            home_env(home),
        )  # fmt: skip
        processes.append(fetcher)
        fetcher.wait_for("fetching")
        (small / "filler").write_bytes(b"\0" * (shutil.disk_usage(small).free - 4096))
        assert fetcher.popen.wait(timeout=60) == 1
        stderr = fetcher.popen.stderr.read() if fetcher.popen.stderr else ""
        assert "no space left on device" in stderr, stderr
        assert "Traceback" not in stderr
        wanted = [manifest.chunk("blocks-00000-00001"), manifest.chunk("blocks-00001-00002")]
        for chunk in wanted:
            path = small / "data" / "models" / chunk.file
            assert not path.exists() or file_root(path) != chunk.root
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
