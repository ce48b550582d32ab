"""Tests of the compute protocol's wire schema (swarm.wire): round trips, zero copy, validation, fuzz."""

from __future__ import annotations

import copy
import gc
import json
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import torch

from swarm.errors import SwarmError
from swarm.wire import (
    MAX_HEADER_BYTES,
    MAX_ROUTE_HOPS,
    PROTOCOL_VERSION,
    UNKNOWN_REQUEST_ID,
    ErrorCode,
    Header,
    Hop,
    Kind,
    TensorSpec,
    WireError,
    decode,
    encode,
    error_reply,
    expect_tensor,
    format_address,
    parse_address,
)

ROUTE = (Hop("tcp://10.0.0.2:5555", (0, 12)), Hop("tcp://peer-b.example:5556", (12, 24)))


def full_header(kind: Kind) -> Header:
    return Header(
        kind=kind,
        request_id="req-1",
        session_id="sess-1",
        step=3,
        route=ROUTE,
        reply_to="tcp://client.local:6000",
        positions=(7, 8),
        body={"model": "tiny", "temperature": 0.7, "nested": {"a": [1, 2, None, True]}},
    )


def as_bytearrays(frames: list[bytes | memoryview]) -> list[bytearray]:
    return [bytearray(frame) for frame in frames]


# ------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("kind", [kind for kind in Kind if kind is not Kind.ERROR])
def test_round_trip_each_kind(kind: Kind) -> None:
    header = full_header(kind)
    hidden = torch.randn(1, 2, 8)
    frames = encode(header, {"hidden": hidden})
    assert len(frames) == 2
    decoded, tensors = decode(frames)
    assert decoded == replace(header, tensors=(TensorSpec("hidden", "float32", (1, 2, 8), 64),))
    assert list(tensors) == ["hidden"]
    assert torch.equal(tensors["hidden"], hidden)


def test_round_trip_minimal_header_without_tensors() -> None:
    header = Header(kind=Kind.PING, request_id="p")
    frames = encode(header)
    assert len(frames) == 1
    decoded, tensors = decode(frames)
    assert decoded == header
    assert tensors == {}


def test_error_reply_round_trip() -> None:
    request = full_header(Kind.STEP)
    decoded, tensors = decode(error_reply(request, "unknown_session", "session sess-1 expired"))
    assert decoded.kind is Kind.ERROR
    assert (decoded.request_id, decoded.session_id, decoded.step) == ("req-1", "sess-1", 3)
    assert decoded.body == {"code": "unknown_session", "message": "session sess-1 expired"}
    assert decoded.route == () and tensors == {}

    decoded, _ = decode(error_reply(None, ErrorCode.BAD_HEADER, "x" * 10_000))
    assert decoded.request_id == UNKNOWN_REQUEST_ID
    assert decoded.body["code"] == "bad_header"
    assert 0 < len(decoded.body["message"]) < 10_000


def test_error_reply_rejects_bad_code() -> None:
    with pytest.raises(ValueError):
        error_reply(None, "Not A Code", "m")


@pytest.mark.parametrize(
    "tensor",
    [
        torch.randn(2, 3, 5).to(torch.bfloat16),
        torch.randn(4, 7).to(torch.float16),
        torch.tensor([[-(2**62), 2**62 + 1, 0]], dtype=torch.int64),
        torch.tensor([1, -2, 2**31 - 1], dtype=torch.int32),
        torch.tensor([[True, False], [False, True]]),
        torch.randn(3),
        torch.tensor(2.5),  # rank 0
        torch.zeros(0, 4, dtype=torch.bfloat16),  # empty
    ],
    ids=lambda tensor: f"{tensor.dtype}-{list(tensor.shape)}",
)
def test_tensor_round_trip_is_exact(tensor: torch.Tensor) -> None:
    frames = encode(Header(kind=Kind.RESULT, request_id="r"), {"t": tensor})
    for frame_list in (frames, as_bytearrays(frames), [bytes(frame) for frame in frames]):
        _, tensors = decode(frame_list)
        out = tensors["t"]
        assert out.dtype == tensor.dtype and out.shape == tensor.shape
        # Bitwise comparison: equal() would accept -0.0 == 0.0 and is not defined for NaN payloads.
        assert out.reshape(-1).view(torch.uint8).tolist() == tensor.reshape(-1).view(torch.uint8).tolist()


def test_several_tensors_keep_order_and_names() -> None:
    tensors = {
        "hidden": torch.randn(1, 3, 4),
        "ids": torch.arange(3).view(1, 3),
        "mask": torch.ones(3).bool(),
    }
    header, decoded = decode(encode(Header(kind=Kind.STEP, request_id="r"), tensors))
    assert [spec.name for spec in header.tensors] == ["hidden", "ids", "mask"]
    assert list(decoded) == ["hidden", "ids", "mask"]
    for name, tensor in tensors.items():
        assert torch.equal(decoded[name], tensor)


def test_non_contiguous_tensor_is_sent_correctly() -> None:
    base = torch.randn(4, 6)
    transposed = base.t()
    assert not transposed.is_contiguous()
    _, tensors = decode(encode(Header(kind=Kind.RESULT, request_id="r"), {"t": transposed}))
    assert torch.equal(tensors["t"], transposed)


def test_requires_grad_tensor_is_sent() -> None:
    weight = torch.randn(3, requires_grad=True)
    _, tensors = decode(encode(Header(kind=Kind.RESULT, request_id="r"), {"t": weight * 2}))
    assert torch.equal(tensors["t"], (weight * 2).detach())


def test_unknown_fields_are_ignored() -> None:
    frames = encode(full_header(Kind.STEP), {"hidden": torch.zeros(1, 1, 2)})
    obj = json.loads(bytes(frames[0]))
    obj["future_field"] = {"x": 1}
    obj["route"][0]["future_hop_field"] = 5
    obj["tensors"][0]["compression"] = None
    header, tensors = decode([json.dumps(obj).encode(), frames[1]])
    assert header.route == ROUTE
    assert tensors["hidden"].shape == (1, 1, 2)


# ------------------------------------------------------------------------------------------------
# Zero copy


def test_decode_shares_memory_with_writable_frame() -> None:
    tensor = torch.arange(6, dtype=torch.float32)
    frames = as_bytearrays(encode(Header(kind=Kind.RESULT, request_id="r"), {"t": tensor}))
    _, tensors = decode(frames)
    frames[1][0:4] = torch.tensor([42.0]).numpy().tobytes()
    assert tensors["t"][0].item() == 42.0


def test_decode_copies_read_only_frame_so_bytes_stay_immutable() -> None:
    payload = torch.arange(4, dtype=torch.int32).numpy().tobytes()
    frames = [encode(Header(kind=Kind.RESULT, request_id="r"), {"t": torch.arange(4, dtype=torch.int32)})[0]]
    _, tensors = decode([*frames, payload])
    tensors["t"].fill_(7)
    assert payload == torch.arange(4, dtype=torch.int32).numpy().tobytes()


def test_encode_shares_memory_with_contiguous_tensor() -> None:
    tensor = torch.zeros(4, dtype=torch.float32)
    frames = encode(Header(kind=Kind.RESULT, request_id="r"), {"t": tensor})
    assert isinstance(frames[1], memoryview)
    tensor[0] = 1.0
    assert bytes(frames[1][:4]) == torch.tensor([1.0]).numpy().tobytes()


def test_encoded_frame_keeps_tensor_memory_alive() -> None:
    frames = encode(Header(kind=Kind.RESULT, request_id="r"), {"t": torch.arange(1000, dtype=torch.int64)})
    gc.collect()
    _, tensors = decode(frames)
    assert torch.equal(tensors["t"], torch.arange(1000, dtype=torch.int64))


def test_misaligned_frame_is_decoded_correctly() -> None:
    tensor = torch.randn(5, dtype=torch.float32)
    frames = encode(Header(kind=Kind.RESULT, request_id="r"), {"t": tensor})
    backing = bytearray(1) + bytearray(frames[1])
    _, tensors = decode([frames[0], memoryview(backing)[1:]])
    assert torch.equal(tensors["t"], tensor)


# ------------------------------------------------------------------------------------------------
# Malformed messages

GOOD_TENSOR = {"name": "hidden", "dtype": "float32", "shape": [1, 2], "nbytes": 8}


def good_obj() -> dict[str, Any]:
    return {
        "v": 1,
        "kind": "step",
        "request_id": "req-1",
        "session_id": "s",
        "step": 0,
        "route": [{"address": "tcp://127.0.0.1:5555", "blocks": [0, 4]}],
        "reply_to": "tcp://127.0.0.1:6000",
        "positions": [0, 2],
        "tensors": [copy.deepcopy(GOOD_TENSOR)],
        "body": {},
    }


def frames_of(obj: object, tensor_frames: list[bytes] | None = None) -> list[bytes]:
    return [json.dumps(obj).encode(), *(tensor_frames if tensor_frames is not None else [bytes(8)])]


def mutated(change: Callable[[dict[str, Any]], None]) -> list[bytes]:
    obj = good_obj()
    change(obj)
    return frames_of(obj)


def set_key(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda obj: obj.__setitem__(key, value)


def set_tensor(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda obj: obj["tensors"][0].__setitem__(key, value)


def set_hop(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda obj: obj["route"][0].__setitem__(key, value)


MALFORMED: list[tuple[str, list[Any], str]] = [
    ("no frames", [], "bad_frames"),
    ("frame not a buffer", ["text"], "bad_frames"),
    ("not json", [b"{not json"], "bad_header"),
    ("not utf8", [b"\xff\xfe{}"], "bad_header"),
    ("json not object", [b"[1, 2]"], "bad_header"),
    ("json NaN", [b'{"v": NaN}'], "bad_header"),
    ("duplicate key", [b'{"v": 1, "v": 1, "kind": "ping", "request_id": "r"}'], "bad_header"),
    ("deeply nested", [b"[" * 5000 + b"]" * 5000], "bad_header"),
    ("missing version", mutated(lambda obj: obj.pop("v")), "bad_header"),
    ("version not int", mutated(set_key("v", "1")), "bad_header"),
    ("version bool", mutated(set_key("v", True)), "bad_header"),
    ("wrong version", mutated(set_key("v", 2)), "bad_version"),
    ("unknown kind", mutated(set_key("kind", "reboot")), "bad_kind"),
    ("kind not string", mutated(set_key("kind", 3)), "bad_kind"),
    ("missing request_id", mutated(lambda obj: obj.pop("request_id")), "bad_header"),
    ("request_id int", mutated(set_key("request_id", 5)), "bad_header"),
    ("request_id empty", mutated(set_key("request_id", "")), "bad_header"),
    ("request_id too long", mutated(set_key("request_id", "x" * 65)), "bad_header"),
    ("request_id with space", mutated(set_key("request_id", "a b")), "bad_header"),
    ("session_id list", mutated(set_key("session_id", ["s"])), "bad_header"),
    ("step negative", mutated(set_key("step", -1)), "bad_header"),
    ("step float", mutated(set_key("step", 1.5)), "bad_header"),
    ("step huge", mutated(set_key("step", 2**80)), "bad_header"),
    ("positions reversed", mutated(set_key("positions", [5, 2])), "bad_header"),
    ("positions wrong length", mutated(set_key("positions", [1, 2, 3])), "bad_header"),
    ("body not object", mutated(set_key("body", [1])), "bad_header"),
    (
        "error without code",
        mutated(lambda obj: obj.update(kind="error", body={"message": "m"})),
        "bad_header",
    ),
    ("route not list", mutated(set_key("route", {"a": 1})), "bad_route"),
    (
        "route too long",
        mutated(set_key("route", [good_obj()["route"][0]] * (MAX_ROUTE_HOPS + 1))),
        "bad_route",
    ),
    ("hop not object", mutated(set_key("route", ["tcp://127.0.0.1:1"])), "bad_route"),
    ("hop end equals start", mutated(set_hop("blocks", [4, 4])), "bad_route"),
    ("hop end before start", mutated(set_hop("blocks", [4, 2])), "bad_route"),
    ("hop negative start", mutated(set_hop("blocks", [-1, 2])), "bad_route"),
    ("hop end too large", mutated(set_hop("blocks", [0, 100_001])), "bad_route"),
    ("hop blocks not ints", mutated(set_hop("blocks", ["0", "4"])), "bad_route"),
    ("hop missing blocks", mutated(lambda obj: obj["route"][0].pop("blocks")), "bad_route"),
    ("hop address not tcp", mutated(set_hop("address", "http://127.0.0.1:5555")), "bad_route"),
    ("hop address no port", mutated(set_hop("address", "tcp://127.0.0.1")), "bad_route"),
    ("hop address port 0", mutated(set_hop("address", "tcp://127.0.0.1:0")), "bad_route"),
    ("hop address port too big", mutated(set_hop("address", "tcp://h:70000")), "bad_route"),
    ("hop address wildcard", mutated(set_hop("address", "tcp://*:5555")), "bad_route"),
    ("hop address newline", mutated(set_hop("address", "tcp://h:1\n")), "bad_route"),
    ("hop address too long", mutated(set_hop("address", "tcp://" + "a." * 130 + "b:1")), "bad_route"),
    ("hop address not string", mutated(set_hop("address", 5555)), "bad_route"),
    ("reply_to bad", mutated(set_key("reply_to", "127.0.0.1:6000")), "bad_route"),
    ("tensors not list", mutated(set_key("tensors", {})), "bad_tensor"),
    ("negative shape", mutated(set_tensor("shape", [-1, 2])), "bad_tensor"),
    ("shape not list", mutated(set_tensor("shape", 2)), "bad_tensor"),
    ("shape rank too high", mutated(set_tensor("shape", [1, 1, 1, 1, 2])), "bad_tensor"),
    ("shape float dim", mutated(set_tensor("shape", [1.0, 2])), "bad_tensor"),
    ("unknown dtype", mutated(set_tensor("dtype", "float64")), "bad_tensor"),
    ("tensor name missing", mutated(lambda obj: obj["tensors"][0].pop("name")), "bad_tensor"),
    ("nbytes mismatch", mutated(set_tensor("nbytes", 9)), "bad_tensor"),
    ("nbytes negative", mutated(set_tensor("nbytes", -8)), "bad_tensor"),
    ("nbytes string", mutated(set_tensor("nbytes", "8")), "bad_tensor"),
    ("huge declared size", mutated(set_tensor("shape", [2**20, 2**20])), "too_large"),
    ("huge nbytes", mutated(lambda obj: obj["tensors"][0].update(shape=[2**30], nbytes=2**33)), "too_large"),
    (
        "total too large",
        mutated(
            set_key(
                "tensors",
                [{"name": f"t{i}", "dtype": "float32", "shape": [2**26], "nbytes": 2**28} for i in range(3)],
            )
        ),
        "too_large",
    ),
    ("duplicate tensor names", mutated(set_key("tensors", [GOOD_TENSOR, GOOD_TENSOR])), "bad_tensor"),
    ("frame count too few", frames_of(good_obj(), []), "bad_frames"),
    ("frame count too many", frames_of(good_obj(), [bytes(8), bytes(8)]), "bad_frames"),
    ("frame length short", frames_of(good_obj(), [bytes(7)]), "bad_tensor"),
    ("frame length long", frames_of(good_obj(), [bytes(9)]), "bad_tensor"),
    ("tensor frame not a buffer", [frames_of(good_obj())[0], 12345], "bad_frames"),
    (
        "bool byte out of range",
        frames_of({**good_obj(), "tensors": [{**GOOD_TENSOR, "dtype": "bool"}]}, [bytes(7) + b"\x02"]),
        "bad_tensor",
    ),
    ("header too large", [b" " * (MAX_HEADER_BYTES + 1)], "too_large"),
    (
        "header too large with valid json",
        mutated(set_key("body", {"pad": "x" * MAX_HEADER_BYTES})),
        "too_large",
    ),
]


@pytest.mark.parametrize(("frames", "code"), [(f, c) for _, f, c in MALFORMED], ids=[n for n, _, _ in MALFORMED])
def test_malformed_message_raises_wire_error(frames: list[Any], code: str) -> None:
    with pytest.raises(WireError) as caught:
        decode(frames)
    assert caught.value.code == code, caught.value.message


def test_good_obj_is_valid() -> None:
    # The malformed table mutates this message; it must itself be accepted.
    header, tensors = decode(frames_of(good_obj()))
    assert header.kind is Kind.STEP and tensors["hidden"].shape == (1, 2)


def test_wire_error_is_a_swarm_error_with_code() -> None:
    error = WireError(ErrorCode.TOO_LARGE, "too big")
    assert isinstance(error, SwarmError)
    assert error.code == "too_large" and error.message == "too big"
    assert str(error) == "too_large: too big"


def test_caps_are_configurable() -> None:
    frames = encode(Header(kind=Kind.RESULT, request_id="r"), {"t": torch.zeros(16)})
    with pytest.raises(WireError) as caught:
        decode(frames, max_tensor_bytes=32)
    assert caught.value.code == "too_large"
    with pytest.raises(WireError) as caught:
        decode(frames, max_total_bytes=63)
    assert caught.value.code == "too_large"
    with pytest.raises(WireError) as caught:
        decode(frames, max_header_bytes=10)
    assert caught.value.code == "too_large"
    decode(frames, max_tensor_bytes=64, max_total_bytes=64)


def test_unvalidated_encode_of_a_decoded_header_gives_the_same_frames() -> None:
    """The forwarding fast path (validate=False) writes exactly what the checked path writes, and keeps caps."""
    header, _ = decode(encode(full_header(Kind.STEP), {"hidden": torch.ones(1, 2, 4)}))
    forwarded = replace(header, route=header.route[1:])
    outputs = {"hidden": torch.full((1, 2, 4), 0.5)}
    fast = encode(forwarded, outputs, validate=False)
    assert [bytes(frame) for frame in fast] == [bytes(frame) for frame in encode(forwarded, outputs)]
    assert decode(fast)[0].route == header.route[1:]
    for caps in ({"max_tensor_bytes": 16}, {"max_total_bytes": 16}, {"max_header_bytes": 10}):
        with pytest.raises(WireError) as caught:
            encode(forwarded, outputs, validate=False, **caps)  # type: ignore[arg-type]
        assert caught.value.code == "too_large"


# ------------------------------------------------------------------------------------------------
# encode refuses what decode would refuse


@pytest.mark.parametrize(
    ("header", "tensors", "code"),
    [
        (Header(kind=Kind.STEP, request_id=""), {}, "bad_header"),
        (Header(kind="nope", request_id="r"), {}, "bad_kind"),  # type: ignore[arg-type]
        (Header(kind=Kind.STEP, request_id="r", version=2), {}, "bad_version"),
        (Header(kind=Kind.STEP, request_id="r", route=(Hop("tcp://h:1", (3, 3)),)), {}, "bad_route"),
        (Header(kind=Kind.STEP, request_id="r", reply_to="h:1"), {}, "bad_route"),
        (Header(kind=Kind.STEP, request_id="r", body={"x": float("nan")}), {}, "bad_header"),
        (Header(kind=Kind.STEP, request_id="r", body={"x": object()}), {}, "bad_header"),
        (Header(kind=Kind.STEP, request_id="r", body={"x": "y" * MAX_HEADER_BYTES}), {}, "too_large"),
        (Header(kind=Kind.STEP, request_id="r"), {"t": torch.zeros(2, dtype=torch.float64)}, "bad_tensor"),
        (Header(kind=Kind.STEP, request_id="r"), {"t": torch.zeros(1, 1, 1, 1, 1)}, "bad_tensor"),
        (Header(kind=Kind.STEP, request_id="r"), {"bad name": torch.zeros(1)}, "bad_tensor"),
        (Header(kind=Kind.STEP, request_id="r"), {"t": [1.0, 2.0]}, "bad_tensor"),
    ],
)
def test_encode_validates(header: Header, tensors: dict[str, Any], code: str) -> None:
    with pytest.raises(WireError) as caught:
        encode(header, tensors)
    assert caught.value.code == code


def test_encode_replaces_caller_tensor_specs() -> None:
    stale = Header(kind=Kind.RESULT, request_id="r", tensors=(TensorSpec("old", "int64", (9,), 72),))
    header, tensors = decode(encode(stale, {"new": torch.zeros(2)}))
    assert header.tensors == (TensorSpec("new", "float32", (2,), 8),)
    assert list(tensors) == ["new"]


# ------------------------------------------------------------------------------------------------
# Helpers


def test_expect_tensor() -> None:
    tensors = {"hidden": torch.zeros(1, 3, 8, dtype=torch.bfloat16)}
    assert expect_tensor(tensors, "hidden", dtype=torch.bfloat16, rank=3, last_dim=8) is tensors["hidden"]
    assert expect_tensor(tensors, "hidden", dtype="bfloat16") is tensors["hidden"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "ids"}, "no tensor 'ids'"),
        ({"name": "hidden", "dtype": torch.float32}, "dtype"),
        ({"name": "hidden", "rank": 2}, "rank 2"),
        ({"name": "hidden", "last_dim": 16}, "last dim 16"),
    ]
    for kwargs, fragment in cases:
        with pytest.raises(WireError) as caught:
            expect_tensor(tensors, **kwargs)
        assert caught.value.code == "bad_tensor"
        assert fragment in caught.value.message


def test_addresses() -> None:
    assert parse_address("tcp://127.0.0.1:5555").pair == ("127.0.0.1", 5555)
    assert parse_address("tcp://[::1]:80").pair == ("::1", 80)
    assert format_address("::1", 80) == "tcp://[::1]:80"
    assert format_address("peer.example", 1) == "tcp://peer.example:1"
    with pytest.raises(WireError):
        format_address("bad host", 1)


def test_protocol_constants() -> None:
    assert PROTOCOL_VERSION == 1
    assert {kind.value for kind in Kind} == {
        "hello",
        "info",
        "open_session",
        "step",
        "close_session",
        "result",
        "error",
        "ping",
        "pong",
        "task",
        "tee",
    }


# ------------------------------------------------------------------------------------------------
# Fuzz: decode either succeeds or raises WireError, nothing else.


def random_json_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(9 if depth < 3 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, 1, -1, 2, 7, 64, 2**31, -(2**63), 2**70, 100_000, 100_001])
    if choice == 3:
        return rng.choice([0.5, -1.0, 1e300])
    if choice == 4:
        return rng.choice(["", "x", "step", "tcp://h:1", "float32", "bool", "\u00e9", "a" * 300])
    if choice == 5:
        return rng.choice([[], [0, 1], [1, 0], [-1, 2], [2, 3, 4]])
    if choice == 6:
        return [random_json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice([*good_obj(), "x"]): random_json_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def mutate(rng: random.Random, obj: Any) -> Any:
    """Replace or delete one randomly chosen value somewhere inside obj."""
    if isinstance(obj, dict) and obj and rng.random() < 0.7:
        key = rng.choice(list(obj))
        roll = rng.random()
        if roll < 0.2:
            del obj[key]
        elif roll < 0.6:
            obj[key] = mutate(rng, obj[key])
        else:
            obj[key] = random_json_value(rng)
        return obj
    if isinstance(obj, list) and obj and rng.random() < 0.7:
        index = rng.randrange(len(obj))
        obj[index] = mutate(rng, obj[index])
        return obj
    return random_json_value(rng)


def random_frames(rng: random.Random) -> list[Any]:
    roll = rng.random()
    if roll < 0.2:
        return [rng.randbytes(rng.randrange(64)) for _ in range(rng.randrange(4))]
    if roll < 0.3:
        valid = frames_of(good_obj())
        header = bytearray(valid[0])
        for _ in range(rng.randrange(1, 4)):
            header[rng.randrange(len(header))] = rng.randrange(256)
        return [bytes(header), *valid[1:]]
    obj = good_obj()
    if roll < 0.45:
        # Changes a receiver must accept: unknown keys anywhere, any JSON object as body.
        obj[f"x{rng.randrange(9)}"] = random_json_value(rng)
        obj["route"][0]["extra"] = random_json_value(rng)
        obj["body"] = {"k": random_json_value(rng)}
        return frames_of(obj, [rng.randbytes(8)])
    for _ in range(rng.randrange(1, 4)):
        obj = mutate(rng, obj)
    tensor_frames = [rng.randbytes(rng.choice([0, 1, 7, 8, 9])) for _ in range(rng.choice([0, 1, 1, 1, 2]))]
    frame_type: Callable[[bytes], Any] = rng.choice([bytes, bytearray, memoryview])
    return [frame_type(frame) for frame in frames_of(obj, tensor_frames)]


def test_fuzz_decode_raises_only_wire_error() -> None:
    rng = random.Random(1234)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(1000):
        frames = random_frames(rng)
        try:
            decode(frames)
        except WireError as error:
            assert error.code in set(ErrorCode), error
            outcomes["error"] += 1
        else:
            outcomes["ok"] += 1
    # The generator must exercise both paths, or it tests nothing.
    assert outcomes["ok"] > 10 and outcomes["error"] > 100, outcomes


def test_decode_accepts_zmq_frames_without_copy() -> None:
    zmq = pytest.importorskip("zmq")
    tensor = torch.arange(8, dtype=torch.float16)
    frames = [zmq.Frame(bytes(frame)) for frame in encode(Header(kind=Kind.RESULT, request_id="r"), {"t": tensor})]
    _, tensors = decode(frames)
    assert torch.equal(tensors["t"], tensor)
    assert tensors["t"].data_ptr() == torch.frombuffer(frames[1], dtype=torch.uint8).data_ptr()
