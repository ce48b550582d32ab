"""`swarm seed --prepare-only`: chunk round trip, piece map, signatures, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import libtorrent as lt
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.numpy import save_file

from swarm.cli import main
from swarm.config import Settings
from swarm.errors import SwarmError
from swarm.manifest import load_manifest, manifest_from_dict
from swarm.model.chunker import extract_meta_archive
from swarm.publish import publish
from swarm.torrent.create import make_torrent
from swarm.torrent.merkle import file_root


def source_tensors(model_dir: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    tensors = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                array = handle.get_tensor(name) if handle.get_slice(name).get_dtype() != "BF16" else None
                tensors[name] = _describe(handle, name, array)
    return tensors


def _describe(handle, name, array):  # type: ignore[no-untyped-def]
    tensor_slice = handle.get_slice(name)
    data = array.tobytes() if array is not None else b""
    return tensor_slice.get_dtype(), tuple(tensor_slice.get_shape()), data


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(home=tmp_path / "home").with_overrides(**overrides)


@pytest.mark.parametrize("family", ["llama", "mistral", "mixtral", "qwen2", "gpt2", "bert"])
def test_chunks_round_trip_to_the_source_tensors(family: str, model_dirs: dict[str, Path], tmp_path: Path) -> None:
    published = publish(str(model_dirs[family]), f"{family}-tiny", settings_for(tmp_path))
    manifest = published.manifest
    assert manifest.family == family
    assert manifest.signature_valid()
    expected = source_tensors(model_dirs[family])
    seen: dict[str, str] = {}
    for chunk in manifest.chunks:
        path = published.content_dir.parent / chunk.file
        if chunk.kind == "meta":
            names = {p.name for p in extract_meta_archive(path, tmp_path / "meta")}
            assert "config.json" in names and "tokenizer.json" in names
            continue
        for name, description in source_tensors_of_file(path).items():
            assert name not in seen, f"{name} in both {seen.get(name)} and {chunk.id}"
            seen[name] = chunk.id
            assert description == expected[name], name
    assert set(seen) == set(expected)
    block_chunks = [c for c in manifest.chunks if c.kind == "blocks"]
    assert [c.blocks for c in block_chunks] == [(i, i + 1) for i in range(manifest.num_blocks)]


def source_tensors_of_file(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    with safe_open(str(path), framework="numpy") as handle:
        return {name: _describe(handle, name, handle.get_tensor(name)) for name in handle.keys()}  # noqa: SIM118


def test_bfloat16_bytes_round_trip_exactly(make_model_tool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model_dir = Path(make_model_tool.make_model("llama", tmp_path / "bf16", layers=2, seed=3, dtype="bfloat16"))
    published = publish(str(model_dir), "bf16", settings_for(tmp_path))
    assert published.manifest.dtype == "bfloat16"
    original = {}
    for path in model_dir.glob("*.safetensors"):
        original.update(_raw_tensor_bytes(path))
    chunked = {}
    for path in published.content_dir.glob("*.safetensors"):
        chunked.update(_raw_tensor_bytes(path))
    assert chunked == original


def _raw_tensor_bytes(path: Path) -> dict[str, bytes]:
    data = path.read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_length])
    header.pop("__metadata__", None)
    start = 8 + header_length
    return {
        name: data[start + info["data_offsets"][0] : start + info["data_offsets"][1]] for name, info in header.items()
    }


def test_blocks_per_chunk_groups_ranges(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    manifest = publish(str(model_dirs["llama"]), "grouped", settings_for(tmp_path, blocks_per_chunk=2)).manifest
    assert [c.blocks for c in manifest.chunks if c.kind == "blocks"] == [(0, 2), (2, 3)]


@pytest.mark.parametrize("torrent_format", ["v1", "hybrid"])
def test_piece_ranges_hold_exactly_each_chunk(torrent_format: str, model_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Hash each chunk's bytes piece by piece (zero-padded at its end) against the torrent's SHA-1 piece hashes."""
    settings = settings_for(tmp_path, torrent_format=torrent_format, piece_length=32768)
    published = publish(str(model_dirs["gpt2"]), "pieces", settings)
    info = lt.torrent_info(published.torrent_path.read_bytes())
    piece_length = info.piece_length()
    assert published.manifest.torrent.piece_length == piece_length
    covered: set[int] = set()
    for chunk in published.manifest.chunks:
        data = (published.content_dir.parent / chunk.file).read_bytes()
        assert len(data) == chunk.size
        pieces = range(chunk.first_piece, chunk.last_piece + 1)
        assert len(pieces) == -(-chunk.size // piece_length)
        for position, piece in enumerate(pieces):
            block = data[position * piece_length : (position + 1) * piece_length]
            block += bytes(min(piece_length, info.piece_size(piece)) - len(block))
            import hashlib

            assert hashlib.sha1(block).digest() == info.hash_for_piece(piece), (chunk.id, piece)
        assert covered.isdisjoint(pieces)
        covered.update(pieces)
    assert covered == set(range(info.num_pieces()))


def test_v2_torrent_is_v2_only_and_piece_aligned(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    published = publish(str(model_dirs["llama"]), "v2model", settings_for(tmp_path))
    torrent = published.manifest.torrent
    assert torrent.format == "v2" and torrent.info_hash_v2 and torrent.info_hash_v1 is None
    assert torrent.magnet.startswith("magnet:?xt=urn:btmh:")
    info = lt.torrent_info(published.torrent_path.read_bytes())
    layout = info.layout()
    offsets = {layout.file_path(i): layout.file_offset(i) for i in range(layout.num_files())}
    for chunk in published.manifest.chunks:
        assert offsets[chunk.file] == chunk.first_piece * info.piece_length()


def test_unknown_architecture_becomes_one_full_chunk(tmp_path: Path) -> None:
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=128,
                       word_embed_proj_dim=32, max_position_embeddings=64)  # fmt: skip
    OPTForCausalLM(config).save_pretrained(tmp_path / "opt")
    manifest = publish(str(tmp_path / "opt"), "opt", settings_for(tmp_path)).manifest
    assert [c.kind for c in manifest.chunks] == ["meta", "full"]
    assert manifest.family is None and manifest.architecture == "OPTForCausalLM"


def test_tied_head_requires_the_embeddings(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    manifest = publish(str(model_dirs["gpt2"]), "gpt2tied", settings_for(tmp_path)).manifest
    head = manifest.chunk("head")
    tensor_names = source_tensors_of_file(tmp_path / "home/data/models" / head.file).keys()
    if not any(name.endswith("lm_head.weight") for name in tensor_names):
        assert head.requires == ("embed",)


def test_tampered_manifest_and_flipped_byte_are_detected(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    published = publish(str(model_dirs["llama"]), "tamper", settings)
    runner = CliRunner()
    home = {"SWARM_HOME": str(settings.home)}
    assert runner.invoke(main, ["verify", "tamper"], env=home).exit_code == 0

    chunk = published.manifest.chunks[2]
    path = published.content_dir.parent / chunk.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = runner.invoke(main, ["verify", "tamper"], env=home)
    assert result.exit_code == 1 and f"{chunk.id}: corrupt" in result.output

    record = json.loads(published.manifest_path.read_text())
    record["chunks"][2]["root"] = "0" * 64
    published.manifest_path.write_text(json.dumps(record))
    assert not load_manifest(published.manifest_path).signature_valid()
    result = runner.invoke(main, ["verify", "tamper"], env=home)
    assert result.exit_code == 1 and "signature INVALID" in result.output


def test_unknown_manifest_fields_are_kept_and_signed(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    from swarm.signing import load_or_create_key

    settings = settings_for(tmp_path)
    manifest = publish(str(model_dirs["llama"]), "future", settings).manifest
    record = manifest.to_dict(with_signature=False)
    record["added_by_a_newer_swarm"] = {"anything": [1, 2]}
    extended = manifest_from_dict(record).signed(load_or_create_key(settings.keys_dir))
    reloaded = manifest_from_dict(json.loads(json.dumps(extended.to_dict())))
    assert reloaded.signature_valid()
    assert reloaded.unknown == {"added_by_a_newer_swarm": {"anything": [1, 2]}}


def test_publisher_key_is_created_once_and_reused(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    first = publish(str(model_dirs["llama"]), "one", settings).manifest
    second = publish(str(model_dirs["gpt2"]), "two", settings).manifest
    assert first.publisher_key == second.publisher_key
    assert (settings.keys_dir / "publisher.pem").stat().st_mode & 0o077 == 0


def run_cli(arguments: list[str], home: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, arguments, env={"SWARM_HOME": str(home)})
    return result.exit_code, result.output


def assert_clean_error(code: int, output: str, fragment: str) -> None:
    assert code != 0
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert fragment in lines[0], output


def test_bad_inputs_give_one_line_errors(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    home = tmp_path / "home"
    code, output = run_cli(["seed", str(tmp_path / "nowhere"), "--name", "x", "--prepare-only"], home)
    assert_clean_error(code, output, "no model directory")

    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(*run_cli(["seed", str(empty), "--name", "x", "--prepare-only"], home), "no config.json")

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(model_dirs["llama"] / "config.json", no_weights)
    assert_clean_error(*run_cli(["seed", str(no_weights), "--name", "x", "--prepare-only"], home), "no weights")

    pickle_only = tmp_path / "pickle-only"
    shutil.copytree(no_weights, pickle_only)
    (pickle_only / "pytorch_model.bin").write_bytes(b"not really")
    assert_clean_error(*run_cli(["seed", str(pickle_only), "--name", "x", "--prepare-only"], home), "save_pretrained")

    truncated = tmp_path / "truncated"
    shutil.copytree(model_dirs["llama"], truncated)
    weights = next(truncated.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-100])
    assert_clean_error(
        *run_cli(["seed", str(truncated), "--name", "x", "--prepare-only"], home), "not a valid safetensors"
    )

    assert_clean_error(
        *run_cli(["seed", str(model_dirs["llama"]), "--name", "../x", "--prepare-only"], home),
        "invalid model name",
    )
    assert_clean_error(
        *run_cli(["seed", str(model_dirs["llama"]), "--name", "x", "--prepare-only", "--piece-length", "16384"], home),
        "piece length 16384 must be a power of two of at least 32768 bytes for v2",
    )

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    code, output = run_cli(
        [
            "seed",
            str(model_dirs["llama"]),
            "--name",
            "x",
            "--prepare-only",
            "--catalog",
            str(blocked / "catalog"),
        ],
        home,
    )
    assert_clean_error(code, output, "cannot create the catalog")

    assert_clean_error(*run_cli(["verify", "never-published"], home), "unknown model")


def test_existing_name_with_other_content_needs_force(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert run_cli(["seed", str(model_dirs["llama"]), "--name", "same", "--prepare-only"], home)[0] == 0
    # Publishing the same content again is allowed (idempotent).
    assert run_cli(["seed", str(model_dirs["llama"]), "--name", "same", "--prepare-only"], home)[0] == 0
    code, output = run_cli(["seed", str(model_dirs["gpt2"]), "--name", "same", "--prepare-only"], home)
    assert_clean_error(code, output, "--force")
    assert load_manifest(home / "torrents/same.json").family == "llama"
    assert run_cli(["seed", str(model_dirs["gpt2"]), "--name", "same", "--prepare-only", "--force"], home)[0] == 0
    assert load_manifest(home / "torrents/same.json").family == "gpt2"
    assert not list((home / "data/models").glob(".staging-*"))


def test_json_output_is_one_object(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    code, output = run_cli(
        ["seed", str(model_dirs["qwen2"]), "--name", "j", "--prepare-only", "--json"], tmp_path / "h"
    )
    assert code == 0
    record = json.loads(output)
    assert set(record) >= {"name", "manifest", "torrent", "magnet", "chunks", "bytes", "seconds"}
    code, output = run_cli(["inspect", "j", "--json"], tmp_path / "h")
    assert code == 0 and json.loads(output)["name"] == "j"


def test_table_output_names_every_chunk(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    code, output = run_cli(["seed", str(model_dirs["llama"]), "--name", "t", "--prepare-only"], tmp_path / "h")
    assert code == 0, output
    manifest = load_manifest(Settings(home=tmp_path / "h").catalog / "t.json")
    for chunk in manifest.chunks:
        assert chunk.id in output
    assert manifest.torrent.magnet in output


def test_commands_printing_json_never_load_rich() -> None:
    # rich is a noticeable share of start-up; eight fetches starting at once on two cores wait on it.
    probe = "import sys, swarm.cli, swarm.distribute, swarm.publish; sys.exit('rich' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


def test_source_may_be_a_hub_id_in_the_local_cache(model_dirs: dict[str, Path], tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny" / "snapshots" / ("a" * 40)
    shutil.copytree(model_dirs["llama"], snapshot)
    (cache / "models--acme--tiny" / "refs").mkdir()
    (cache / "models--acme--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    published = publish("acme/tiny", "from-cache", settings_for(tmp_path))
    assert published.manifest.family == "llama"
    with pytest.raises(SwarmError, match="local Hugging Face cache"):
        publish("acme/absent", "absent", settings_for(tmp_path))


def test_memory_stays_flat_with_a_large_tensor(tmp_path: Path) -> None:
    """Seeding a model whose embedding is 384 MB peaks far below that: tensors are copied, never loaded."""
    import subprocess
    import sys

    model = tmp_path / "big"
    model.mkdir()
    hidden, vocab = 1024, 96 * 1024
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2,
              "hidden_size": hidden, "vocab_size": vocab}  # fmt: skip
    (model / "config.json").write_text(json.dumps(config))
    tensors = {"model.embed_tokens.weight": np.ones((vocab, hidden), dtype=np.float32)}
    for layer in range(2):
        tensors[f"model.layers.{layer}.mlp.weight"] = np.ones((hidden, hidden), dtype=np.float32)
    tensors["model.norm.weight"] = np.ones((hidden,), dtype=np.float32)
    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})
    largest = tensors["model.embed_tokens.weight"].nbytes
    del tensors
    # VmHWM belongs to the process's own memory map, which exec starts afresh (ru_maxrss would carry
    # over the forking test process's size).
    script = (
        "import sys\n"
        "from swarm.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as stop:\n    code = stop.code\n"
        "status = open('/proc/self/status').read()\n"
        "print('PEAK', int(status.split('VmHWM:')[1].split()[0]) * 1024)\n"
        "sys.exit(code)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, "seed", str(model), "--name", "big", "--prepare-only", "--json"],
        env={"SWARM_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    peak = int(completed.stdout.split("PEAK")[-1])
    # The stated bound: the whole process stays under 200 MB, about half the largest tensor alone.
    assert peak < 200 * 1024 * 1024, f"peak RSS {peak / 2**20:.0f} MiB with a {largest / 2**20:.0f} MiB tensor"


BLOCK = 16 * 1024
FILE_SIZES = [1, 5, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, 3 * BLOCK + 7, 4 * BLOCK, 5 * BLOCK, 16 * BLOCK, 32 * BLOCK,
              33 * BLOCK, 100_000, 0]  # fmt: skip


@pytest.mark.parametrize("piece_length", [32 * 1024, 64 * 1024, 256 * 1024])
@pytest.mark.parametrize(("private", "trackers"), [(False, []), (True, ["http://a/announce", "udp://b:1/announce"])])
def test_a_v2_torrent_is_the_one_libtorrent_makes(
    tmp_path: Path, piece_length: int, private: bool, trackers: list[str]
) -> None:
    """Our v2 hashing (hashlib, while chunks are written) gives libtorrent's torrent, byte for byte but the date:
    every file's root and piece layer, empty files, one-piece files, trackers and the private flag."""
    content = tmp_path / "model"
    content.mkdir()
    generator = np.random.default_rng(piece_length)
    for index, size in enumerate(FILE_SIZES):
        (content / f"file-{index:02}.bin").write_bytes(generator.bytes(size))
    creator = lt.create_torrent(lt.list_files(str(content), flags=0), piece_length, lt.create_torrent.v2_only)
    creator.set_creator("swarm")
    creator.set_priv(private)
    for tier, url in enumerate(trackers):
        creator.add_tracker(url, tier)
    lt.set_piece_hashes(creator, str(tmp_path), lambda _piece: None)
    expected = creator.generate()
    pieces: list[int] = []
    made = make_torrent(content, "v2", piece_length, pieces.append, trackers, private)
    ours = lt.bdecode(made.data)
    assert {**ours, b"creation date": 0} == {**expected, b"creation date": 0}
    assert pieces == list(range(sum(-(-size // piece_length) for size in FILE_SIZES)))
    for index in range(len(FILE_SIZES)):
        root = file_root(content / f"file-{index:02}.bin")
        assert (
            root
            == (expected[b"info"][b"file tree"][f"file-{index:02}.bin".encode()][b""].get(b"pieces root", b"")).hex()
        )


def test_a_manifest_of_an_older_format_asks_to_publish_again(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    published = publish(str(model_dirs["llama"]), "old", settings_for(tmp_path))
    record = json.loads(published.manifest_path.read_text())
    record["format_version"] = 1
    with pytest.raises(SwarmError, match=r"manifest format 1 comes from an older swarm .* publish the model again"):
        manifest_from_dict(record)


def test_a_published_model_is_seeded_without_hashing_it_again(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Publishing leaves resume data that says every piece is here: seeding restores it (no seed mode, which would
    hash each piece again as peers first ask), and only while the files keep their sizes."""
    from swarm.address import Address
    from swarm.torrent.session import TorrentNode

    settings = settings_for(tmp_path)
    published = publish(str(model_dirs["llama"]), "resumed", settings)
    key = published.manifest.torrent.info_hash_v2
    assert key is not None
    params = lt.read_resume_data((settings.resume_dir / f"{key}.resume").read_bytes())
    assert list(params.have_pieces) == [True] * lt.torrent_info(published.torrent_data).num_pieces()
    node = TorrentNode(Address("127.0.0.1", 0), (), dht=False, resume_dir=settings.resume_dir)
    try:
        node.seed(published.torrent_data, published.content_dir.parent)
        status = node.status_of(key)
        assert status.is_seeding and status.progress == 1.0
        handle = node.session.find_torrent(lt.sha256_hash(bytes.fromhex(key)))
        assert not handle.flags() & lt.torrent_flags.seed_mode
    finally:
        node.close()
    # A chunk whose size changed since: the resume data is not trusted (libtorrent checks the files instead).
    chunk = published.manifest.chunks[-1]
    with (published.content_dir.parent / chunk.file).open("ab") as handle:
        handle.write(b"more")
    node = TorrentNode(Address("127.0.0.1", 0), (), dht=False, resume_dir=settings.resume_dir)
    try:
        node.seed(published.torrent_data, published.content_dir.parent)
        handle = node.session.find_torrent(lt.sha256_hash(bytes.fromhex(key)))
        assert handle.flags() & lt.torrent_flags.seed_mode
    finally:
        node.close()
