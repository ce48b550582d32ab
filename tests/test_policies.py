"""Pure functions of the publish path, as tables of cases."""

from __future__ import annotations

from pathlib import Path

import pytest
from zmq.utils import z85

from swarm.address import Address
from swarm.config import Settings, load_settings
from swarm.errors import SwarmError
from swarm.model.chunker import plan_chunks
from swarm.model.families import family_for, family_named
from swarm.model.safetensors_stream import TensorEntry
from swarm.torrent.create import check_piece_length, choose_piece_length

KIB, MIB, GIB = 1024, 1024**2, 1024**3


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (0, 32 * KIB),
        (128 * MIB, 32 * KIB),
        (128 * MIB + 1, 64 * KIB),
        (1 * GIB, 256 * KIB),
        (100 * GIB, 16 * MIB),
    ],
)
def test_piece_length_choice(total: int, expected: int) -> None:
    assert choose_piece_length(total) == expected


@pytest.mark.parametrize(
    ("piece_length", "torrent_format", "accepted"),
    [
        (16 * KIB, "v1", True),
        (16 * KIB, "v2", False),  # one block per piece: libtorrent drops honest peers after a hash failure
        (16 * KIB, "hybrid", False),
        (32 * KIB, "v2", True),
        (32 * KIB, "hybrid", True),
        (48 * KIB, "v2", False),
        (8 * KIB, "v1", False),
        (16 * MIB, "v2", True),
    ],
)
def test_piece_length_check(piece_length: int, torrent_format: str, accepted: bool) -> None:
    if accepted:
        check_piece_length(piece_length, torrent_format)
    else:
        with pytest.raises(SwarmError, match="must be a power of two"):
            check_piece_length(piece_length, torrent_format)


@pytest.mark.parametrize(
    ("family", "tensor", "part", "block"),
    [
        ("llama", "model.embed_tokens.weight", "embed", None),
        ("llama", "model.layers.12.self_attn.q_proj.weight", "block", 12),
        ("llama", "layers.3.mlp.up_proj.weight", "block", 3),
        ("llama", "model.norm.weight", "head", None),
        ("llama", "lm_head.weight", "head", None),
        ("mixtral", "model.layers.1.block_sparse_moe.experts.3.w1.weight", "block", 1),
        ("gpt2", "transformer.wte.weight", "embed", None),
        ("gpt2", "wpe.weight", "embed", None),
        ("gpt2", "transformer.h.0.attn.c_attn.weight", "block", 0),
        ("gpt2", "h.11.mlp.c_fc.bias", "block", 11),
        ("gpt2", "transformer.ln_f.weight", "head", None),
        ("bert", "bert.embeddings.word_embeddings.weight", "embed", None),
        ("bert", "embeddings.LayerNorm.weight", "embed", None),
        ("bert", "bert.encoder.layer.5.attention.self.query.weight", "block", 5),
        ("bert", "bert.pooler.dense.weight", "head", None),
        ("bert", "cls.predictions.bias", "head", None),
    ],
)
def test_tensor_parts(family: str, tensor: str, part: str, block: int | None) -> None:
    adapter = family_named(family)
    assert adapter is not None
    assert adapter.part_of(tensor) == (part, block)


@pytest.mark.parametrize(
    ("model_type", "family"),
    [("llama", "llama"), ("mistral", "mistral"), ("mixtral", "mixtral"), ("qwen2", "qwen2"), ("gpt2", "gpt2"),
     ("bert", "bert"), ("t5", None), (None, None)],
)  # fmt: skip
def test_family_detection(model_type: str | None, family: str | None) -> None:
    adapter = family_for({"model_type": model_type})
    assert (adapter.name if adapter else None) == family


def entry(name: str) -> TensorEntry:
    return TensorEntry(name=name, dtype="F32", shape=(4,), source=Path("x"), offset=0, length=16)


LLAMA_TENSORS = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"] + [
    f"model.layers.{i}.mlp.weight" for i in range(5)
]


@pytest.mark.parametrize(
    ("per_chunk", "ranges"),
    [
        (1, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]),
        (2, [(0, 2), (2, 4), (4, 5)]),
        (5, [(0, 5)]),
        (9, [(0, 5)]),
    ],
)
def test_block_ranges(per_chunk: int, ranges: list[tuple[int, int]]) -> None:
    chunks = plan_chunks(map(entry, LLAMA_TENSORS), {"model_type": "llama", "num_hidden_layers": 5},
                         family_named("llama"), per_chunk)  # fmt: skip
    assert [c.blocks for c in chunks if c.kind == "blocks"] == ranges
    assert [c.kind for c in chunks][:2] == ["meta", "embed"] and chunks[-1].kind == "head"
    names = [e.name for c in chunks for e in c.entries]
    assert sorted(names) == sorted(LLAMA_TENSORS)


@pytest.mark.parametrize(
    ("tensors", "config", "message"),
    [
        (["model.layers.0.w", "model.layers.0.w"], {"num_hidden_layers": 1}, "more than one weight file"),
        (["model.layers.0.w", "model.layers.7.w"], {"num_hidden_layers": 2}, "names block 7"),
        (["model.layers.0.w"], {"num_hidden_layers": 3}, "no tensors for blocks 1, 2"),
        (["model.layers.0.w"], {}, "missing its layer count"),
    ],
)
def test_plan_errors(tensors: list[str], config: dict[str, int], message: str) -> None:
    with pytest.raises(SwarmError, match=message):
        plan_chunks(map(entry, tensors), config, family_named("llama"), 1)


def test_tied_head_requires_embed_and_untied_does_not() -> None:
    tied = plan_chunks(map(entry, LLAMA_TENSORS[:2] + LLAMA_TENSORS[3:]), {"num_hidden_layers": 5},
                       family_named("llama"), 1)  # fmt: skip
    untied = plan_chunks(map(entry, LLAMA_TENSORS), {"num_hidden_layers": 5}, family_named("llama"), 1)
    assert tied[-1].requires == ("embed",)
    assert untied[-1].requires == ()


def test_unknown_family_is_one_full_chunk() -> None:
    chunks = plan_chunks(map(entry, ["a.weight", "b.weight"]), {}, None, 1)
    assert [(c.kind, len(c.entries)) for c in chunks] == [("meta", 0), ("full", 2)]


def test_settings_from_environment_and_flags(tmp_path: Path) -> None:
    settings = load_settings({"SWARM_HOME": str(tmp_path), "SWARM_BOOTSTRAP": "a:1, b:2"})
    assert settings.catalog == tmp_path / "torrents"
    assert settings.models_dir() == tmp_path / "data" / "models"
    assert settings.bootstrap == (Address("a", 1), Address("b", 2))
    overridden = settings.with_overrides(catalog_dir=str(tmp_path / "c"), torrent_format=None)
    assert overridden.catalog == tmp_path / "c" and overridden.torrent_format == Settings().torrent_format


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("[::1]:6881", ("::1", 6881)),
        ("host:0", ("host", 0)),
        ("tcp://peer.example:5555", ("peer.example", 5555)),
        ("tcp://10.0.0.1:7/" + "ab" * 32, ("10.0.0.1", 7)),
        ("[::1]:7/" + "0f" * 32, ("::1", 7)),
    ],
)
def test_host_port(text: str, expected: tuple[str, int]) -> None:
    address = Address.parse(text)
    assert address.pair == expected
    assert Address.parse(str(address)) == address == Address.parse(address.tcp)
    # A key after the port (its bytes in hex) is the peer's CURVE key in Z85; ZeroMQ is given the address without it.
    key_hex = text.removeprefix("tcp://").partition("/")[2]
    assert address.key == (z85.encode(bytes.fromhex(key_hex)).decode() if key_hex else "")
    assert Address.parse(address.endpoint) == Address(*expected)


@pytest.mark.parametrize(
    "text",
    ["h:1/" + "ab" * 31, "h:1/" + "AB" * 32, "h:1/" + "ab" * 32 + "/", "h:1/"],
)
def test_a_key_in_an_address_is_64_lowercase_hex_digits(text: str) -> None:
    with pytest.raises(SwarmError, match=r"^bad flag: the key after '/' must be 64 hex digits"):
        Address.parse(text, "flag")


@pytest.mark.parametrize(
    "text", ["nohost", ":80", "h:x", "h:70000", "::1:80", "bad host:1", "", " h:1", "h:1\n", "a" * 300 + ":1"]
)
def test_bad_host_port(text: str) -> None:
    with pytest.raises(SwarmError, match=r"^bad flag: (expected HOST:PORT|port|longer)"):
        Address.parse(text, "flag")


def test_address_flags_are_parsed_once_with_their_name() -> None:
    settings = Settings().with_overrides(bootstrap=("a:1",), torrent_listen="0.0.0.0:0", compute_listen="[::]:7")
    assert settings.bootstrap == (Address("a", 1),)
    assert settings.torrent_listen == Address("0.0.0.0", 0) and settings.torrent_listen.is_wildcard
    assert settings.compute_listen == Address("::", 7) and settings.compute_listen.is_wildcard
    with pytest.raises(SwarmError, match="bad bootstrap node: expected HOST:PORT, got 'nope'"):
        Settings().with_overrides(bootstrap=("a:1", "nope"))
    with pytest.raises(SwarmError, match="bad SWARM_BOOTSTRAP"):
        load_settings({"SWARM_BOOTSTRAP": "a:1,b"})
