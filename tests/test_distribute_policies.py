"""Pure distribution policies, table-tested: chunk selection, magnet parsing, file priorities, when to trust
resume data, disk space, the Prometheus rendering of a seedbox's status."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from swarm.distribute import (
    chunks_by_ids,
    chunks_for_blocks,
    chunks_for_client,
    disk_space_problem,
    parse_block_range,
    select_chunks,
)
from swarm.errors import SwarmError
from swarm.manifest import Chunk, Manifest, TorrentInfo
from swarm.seedbox_metrics import seedbox_registry
from swarm.torrent.dht import parse_magnet
from swarm.torrent.fetch import SKIP, WANTED, TorrentFile, file_priorities
from swarm.torrent.request_queue import MAX_ACCEPTED_REQUESTS, MIN_ACCEPTED_REQUESTS, accepted_requests_per_peer
from swarm.torrent.resume import FileOnDisk, resume_agrees_with_disk


def chunk(chunk_id: str, kind: str, blocks: tuple[int, int] | None = None, requires: tuple[str, ...] = ()) -> Chunk:
    return Chunk(
        id=chunk_id,
        kind=kind,
        file=f"m/{chunk_id}",
        size=10,
        root="0" * 64,
        first_piece=0,
        last_piece=0,
        blocks=blocks,
        requires=requires,
    )


def manifest(*chunks: Chunk, num_blocks: int) -> Manifest:
    return Manifest(
        name="m",
        family="llama",
        architecture=None,
        config={},
        dtype="float32",
        num_blocks=num_blocks,
        torrent=TorrentInfo(format="v2", piece_length=16384, magnet="magnet:?xt=urn:btmh:1220" + "a" * 64),
        chunks=chunks,
        publisher_key="00" * 32,
        created="2026-01-01T00:00:00+00:00",
    )


# Six blocks in chunks of two, a head tied to the embeddings.
SHARDED = manifest(
    chunk("meta", "meta"),
    chunk("embed", "embed"),
    chunk("b0", "blocks", (0, 2)),
    chunk("b2", "blocks", (2, 4)),
    chunk("b4", "blocks", (4, 6)),
    chunk("head", "head", requires=("embed",)),
    num_blocks=6,
)
WHOLE = manifest(chunk("meta", "meta"), chunk("full", "full"), num_blocks=4)
UNKNOWN_FAMILY = manifest(chunk("meta", "meta"), chunk("full", "full"), num_blocks=0)
GAP = manifest(chunk("meta", "meta"), chunk("b0", "blocks", (0, 1)), chunk("b2", "blocks", (2, 3)), num_blocks=3)


def ids(chunks: list[Chunk]) -> list[str]:
    return [item.id for item in chunks]


@pytest.mark.parametrize(
    ("manifest_", "start", "end", "expected"),
    [
        (SHARDED, 0, 1, ["meta", "b0"]),
        (SHARDED, 1, 2, ["meta", "b0"]),
        (SHARDED, 1, 3, ["meta", "b0", "b2"]),
        (SHARDED, 2, 4, ["meta", "b2"]),
        (SHARDED, 0, 6, ["meta", "b0", "b2", "b4"]),
        (SHARDED, 5, 6, ["meta", "b4"]),
        (WHOLE, 1, 2, ["meta", "full"]),
        (UNKNOWN_FAMILY, 0, 1, ["meta", "full"]),
    ],
)
def test_chunks_for_blocks(manifest_: Manifest, start: int, end: int, expected: list[str]) -> None:
    assert ids(chunks_for_blocks(manifest_, start, end)) == expected


@pytest.mark.parametrize(
    ("manifest_", "start", "end", "message"),
    [
        (SHARDED, 0, 7, "not inside m's blocks 0:6"),
        (SHARDED, -1, 2, "not inside"),
        (SHARDED, 3, 3, "not inside"),
        (SHARDED, 4, 2, "not inside"),
        (WHOLE, 0, 5, "not inside"),
        (GAP, 0, 3, "no chunk for blocks 1..1"),
    ],
)
def test_chunks_for_blocks_refuses_bad_ranges(manifest_: Manifest, start: int, end: int, message: str) -> None:
    with pytest.raises(SwarmError, match=message):
        chunks_for_blocks(manifest_, start, end)


@pytest.mark.parametrize(
    ("manifest_", "expected"),
    [
        (SHARDED, ["meta", "embed", "head"]),
        (manifest(chunk("meta", "meta"), chunk("b0", "blocks", (0, 1)), chunk("head", "head"), num_blocks=1),
         ["meta", "head"]),
        (WHOLE, ["meta", "full"]),
    ],
)  # fmt: skip
def test_chunks_for_client(manifest_: Manifest, expected: list[str]) -> None:
    assert ids(chunks_for_client(manifest_)) == expected


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        (["b2"], ["meta", "b2"]),
        (["head"], ["meta", "embed", "head"]),  # the head requires the embeddings
        (["b4", "b0", "b4"], ["meta", "b0", "b4"]),  # manifest order, no duplicates
        ([], ["meta"]),
    ],
)
def test_chunks_by_ids(requested: list[str], expected: list[str]) -> None:
    assert ids(chunks_by_ids(SHARDED, requested)) == expected


def test_chunks_by_ids_refuses_unknown_ids() -> None:
    with pytest.raises(SwarmError, match="no chunk 'b9'"):
        chunks_by_ids(SHARDED, ["b0", "b9"])


@pytest.mark.parametrize(
    ("blocks", "chunk_ids", "expected"),
    [
        (None, None, ["meta", "embed", "b0", "b2", "b4", "head"]),
        ("2:3", None, ["meta", "b2"]),
        (None, "head", ["meta", "embed", "head"]),
        ("0:1", "b4", ["meta", "b0", "b4"]),
    ],
)
def test_select_chunks(blocks: str | None, chunk_ids: str | None, expected: list[str]) -> None:
    assert ids(select_chunks(SHARDED, blocks, chunk_ids)) == expected


@pytest.mark.parametrize(
    ("text", "expected"), [("0:4", (0, 4)), (" 2 : 3 ", (2, 3)), ("3:5", (3, 5)), (" 1 : 2 ", (1, 2))]
)
def test_parse_block_range(text: str, expected: tuple[int, int]) -> None:
    assert parse_block_range(text) == expected


@pytest.mark.parametrize("text", ["", "3", "a:b", "1:2:3", "-1:2", "4", "1:", ":3", "-1:3"])
def test_parse_block_range_refuses(text: str) -> None:
    with pytest.raises(SwarmError, match="START:END"):
        parse_block_range(text)


@pytest.mark.parametrize("text", ["4:4", "5:2"])
def test_parse_block_range_refuses_empty_ranges(text: str) -> None:
    with pytest.raises(SwarmError, match="END must be greater than START"):
        parse_block_range(text)


V1 = "3c048ca883adebf4ffb343f1c1db10c466890970"
V2 = "ace5a8e7b9ca0d7cfaed7b6116ff13b08dd6b3e6b2f7aa6ce8cfadbe1159ac66"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (f"magnet:?xt=urn:btih:{V1}&dn=x", (V1, None)),
        (f"magnet:?xt=urn:btih:{V1.upper()}", (V1, None)),
        (f"magnet:?xt=urn:btmh:1220{V2}&dn=tiny", (None, V2)),
        (f"magnet:?xt=urn:btih:{V1}&xt=urn:btmh:1220{V2}", (V1, V2)),
        # base32 form of a v1 hash (BEP 9)
        ("magnet:?xt=urn:btih:HQCIZKEDVXV7J75TIPY4DWYQYRTISCLQ", (V1, None)),
    ],
)
def test_parse_magnet(uri: str, expected: tuple[str | None, str | None]) -> None:
    v1, v2 = expected
    assert parse_magnet(uri).info_hashes == tuple(item for item in (v2, v1) if item)


@pytest.mark.parametrize(
    "uri",
    [
        "magnet:?dn=no-hash",
        "magnet:?xt=urn:btih:1234",
        f"magnet:?xt=urn:btmh:1221{V2}",  # not a SHA-256 multihash
        f"magnet:?xt=urn:sha1:{V1}",
        f"http://example.invalid/?xt=urn:btih:{V1}",
    ],
)
def test_parse_magnet_refuses_malformed_links(uri: str) -> None:
    with pytest.raises(SwarmError, match="magnet"):
        parse_magnet(uri)


FILES = [
    TorrentFile("m/a", False),
    TorrentFile("m/.pad/100", True),
    TorrentFile("m/b", False),
    TorrentFile("m/.pad/200", True),
    TorrentFile("m/c", False),
]


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        ({"m/b"}, [SKIP, SKIP, WANTED, SKIP, SKIP]),
        ({"m/a", "m/c"}, [WANTED, SKIP, SKIP, SKIP, WANTED]),
        (set(), [SKIP] * 5),
        ({"m/a", "m/b", "m/c"}, [WANTED, SKIP, WANTED, SKIP, WANTED]),  # pad files are never wanted
    ],
)
def test_file_priorities_cover_every_file_including_pads(wanted: set[str], expected: list[int]) -> None:
    assert file_priorities(FILES, wanted) == expected


@pytest.mark.parametrize("wanted", [{"m/z"}, {"m/.pad/100"}])
def test_file_priorities_refuse_files_not_in_the_torrent(wanted: set[str]) -> None:
    with pytest.raises(SwarmError, match="no file"):
        file_priorities(FILES, wanted)


# Two files: pieces 0-1 (size 20) and 2-3 (size 20).
def on_disk(first: int | None, second: int | None) -> list[FileOnDisk]:
    return [FileOnDisk(0, 1, 20, first), FileOnDisk(2, 3, 20, second)]


@pytest.mark.parametrize(
    ("have", "files", "trusted"),
    [
        ([True, True, True, True], on_disk(20, 20), True),
        ([True, True, False, False], on_disk(20, None), True),
        ([False, False, False, False], on_disk(None, None), True),
        ([], on_disk(None, None), True),
        # A save that raced the finish (0 pieces) while the files are there: check the files instead.
        ([False, False, False, False], on_disk(20, 20), False),
        # Killed mid-download: a partial file whose pieces are not all claimed.
        ([True, True, True, False], on_disk(20, 20), False),
        # The resume data claims a file that was deleted or truncated since.
        ([True, True, True, True], on_disk(20, None), False),
        ([True, True, True, True], on_disk(20, 7), False),
        # A file of the wrong size on disk.
        ([True, True, False, False], on_disk(20, 30), False),
    ],
)
def test_resume_data_is_trusted_only_when_it_agrees_with_the_disk(
    have: list[bool], files: list[FileOnDisk], trusted: bool
) -> None:
    assert resume_agrees_with_disk(have, files) is trusted


@pytest.mark.parametrize(
    ("needed", "free", "fits"),
    [(100, 1000, True), (1000, 1000, True), (1001, 1000, False), (10, None, True), (0, 0, True)],
)
def test_disk_space_problem(needed: int, free: int | None, fits: bool) -> None:
    problem = disk_space_problem(needed, free)
    assert (problem is None) is fits
    if not fits:
        assert problem is not None and "no space left on device" in problem


def torrent(name: str, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "name": name,
        "info_hash": "ab" * 32,
        "bytes_uploaded": 10,
        "bytes_downloaded": 20,
        "upload_rate": 1,
        "download_rate": 2,
        "peers": 3,
        "progress": 0.5,
        "chunks_held": ["meta", "head"],
        "chunks_total": 6,
    }
    record.update(fields)
    return record


def test_metrics_render_one_sample_per_model_with_escaped_labels() -> None:
    torrents = [torrent("tiny"), torrent('we"ird\\name', bytes_uploaded=99)]
    text = generate_latest(seedbox_registry(lambda: torrents)).decode()
    lines = text.splitlines()
    assert "# TYPE swarm_bytes_uploaded_total counter" in lines
    assert "# TYPE swarm_peers gauge" in lines
    samples = {
        (sample.name, sample.labels.get("model")): (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("swarm_seedbox_torrents", None)][1] == 2
    assert samples[("swarm_bytes_uploaded_total", "tiny")] == ({"model": "tiny", "info_hash": "ab" * 32}, 10)
    assert samples[("swarm_bytes_uploaded_total", 'we"ird\\name')][1] == 99  # escaped and read back
    assert samples[("swarm_chunks_held", "tiny")][1] == 2  # the chunk ids counted
    assert samples[("swarm_progress_ratio", "tiny")][1] == 0.5
    # One sample per model and metric, every value a number of 0 or more.
    assert len([key for key in samples if key[0] == "swarm_peers"]) == 2
    assert all(value >= 0 for _, value in samples.values())


@pytest.mark.parametrize(
    ("upload_rate", "downloading_peers", "expected"),
    [
        (0, 0, MIN_ACCEPTED_REQUESTS),  # idle: the floor
        (12_500_000, 8, 9),  # 100 Mbit/s shared by 8 peers: 9.5 blocks in 0.1 s
        (6_250_000, 16, MIN_ACCEPTED_REQUESTS),  # 50 Mbit/s shared by 16 peers: 2.4 blocks, the floor
        (50_000_000, 8, 38),
        (12_500_000, 1, 76),  # the same link to one peer
        (125_000_000, 1, 762),  # 1 Gbit/s to one peer: deep enough for 0.1 s round trips
        (10_000_000_000, 1, MAX_ACCEPTED_REQUESTS),  # capped at libtorrent's default
        (-5, 3, MIN_ACCEPTED_REQUESTS),
        (100_000_000, 0, 610),  # no peer counted yet: the whole rate
    ],
)
def test_accepted_requests_follow_upload_per_peer(upload_rate: int, downloading_peers: int, expected: int) -> None:
    assert accepted_requests_per_peer(upload_rate, downloading_peers) == expected
