"""Hundreds of malformed messages against a real `swarm join` process: each gets an error, none stops it.

The peer hosts blocks 0:2 of a tiny 4-block Llama. Crafted messages must get the specific error code;
randomly mutated ones must get an error or (when the mutation happened to keep them valid) a result.
Afterwards a valid session still runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from swarm import wire
from swarm.wire import Kind
from tests.conftest import SWARM
from tests.peer_harness import (
    SESSION_SECRET,
    ComputeClient,
    PeerProcess,
    new_id,
    peer_environment,
    request,
    route,
    start_peers,
)

LAYERS = 4
HOSTED = (0, 2)
MAX_BATCH = 4
MAX_SESSION_TOKENS = 64
RANDOM_MESSAGES = 200


@pytest.fixture(scope="module")
def home(make_model_tool: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SWARM_HOME with the model published in it (chunks on disk, catalog entry)."""
    root = tmp_path_factory.mktemp("robust")
    model_dir = make_model_tool.make_model("llama", root / "llama", layers=LAYERS, seed=5, log=lambda _line: None)
    subprocess.run(
        [SWARM, "seed", str(model_dir), "--name", "robust", "--prepare-only", "--json"],
        env=peer_environment(os.environ, home=root / "home"),
        check=True,
        capture_output=True,
    )
    return root / "home"


@pytest.fixture(scope="module")
def peer(home: Path) -> Iterator[PeerProcess]:
    environment = peer_environment(os.environ, home=home, max_batch=MAX_BATCH, max_session_tokens=MAX_SESSION_TOKENS)
    (started,) = start_peers(
        [["--model", "robust", "--blocks", f"{HOSTED[0]}:{HOSTED[1]}"]], environment, home.parent / "logs"
    )
    try:
        yield started
    finally:
        if started.process.poll() is None:
            started.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[ComputeClient]:
    made = ComputeClient()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def hidden_size(peer: PeerProcess, client: ComputeClient) -> int:
    client.send(peer.address, request(Kind.INFO))
    return int(client.receive_direct(peer.address).header.body["hidden_size"])


def header_frame(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def exchange(client: ComputeClient, peer: PeerProcess, frames: list[Any]) -> wire.Header:
    """Send raw frames; the peer must answer on the same connection."""
    client.send_raw(peer.address, frames)
    return client.receive_direct(peer.address, timeout=10).header


def assert_error(reply: wire.Header, code: str | tuple[str, ...], case: str) -> None:
    codes = (code,) if isinstance(code, str) else code
    assert reply.kind is Kind.ERROR, f"{case}: expected an error, got {reply.kind}"
    assert reply.body["code"] in codes, f"{case}: {reply.body}"


def step_obj(hidden_size: int, **changes: Any) -> tuple[dict[str, Any], list[bytes]]:
    """A valid stateless step (prompt of 2 tokens) as a JSON object and its tensor frame; `changes` override."""
    tensor = torch.zeros(1, 2, hidden_size)
    obj: dict[str, Any] = {
        "v": 1,
        "kind": "step",
        "request_id": new_id(),
        "step": 0,
        "route": [{"address": "tcp://127.0.0.1:1", "blocks": list(HOSTED)}],
        "positions": [0, 2],
        "tensors": [{"name": "hidden", "dtype": "float32", "shape": [1, 2, hidden_size], "nbytes": tensor.nbytes}],
        "body": {},
    }
    obj.update(changes)
    return obj, [tensor.numpy().tobytes()]


def crafted_cases(hidden_size: int) -> list[tuple[str, list[Any], str | tuple[str, ...]]]:
    """(name, frames, expected error code(s)) for each kind of malformed message."""
    cases: list[tuple[str, list[Any], str | tuple[str, ...]]] = []

    def add_step(
        name: str, code: str | tuple[str, ...], tensor_frames: list[Any] | None = None, **changes: Any
    ) -> None:
        obj, frames = step_obj(hidden_size, **changes)
        cases.append((name, [header_frame(obj), *(frames if tensor_frames is None else tensor_frames)], code))

    # Header bytes that are not a header.
    for index, raw in enumerate([b"", b"\xff\xfe", b"not json", b"[]", b"null", b"42", b'"step"', b"{", b"{}"]):
        cases.append((f"raw-{index}", [raw], ("bad_header", "bad_kind")))
    cases.append(("nan-constant", [b'{"v": 1, "kind": "ping", "request_id": "a", "step": NaN}'], "bad_header"))
    cases.append(("duplicate-keys", [b'{"v": 1, "v": 1, "kind": "ping", "request_id": "a"}'], "bad_header"))
    cases.append(
        (
            "deep-nesting",
            [b'{"v": 1, "kind": "ping", "request_id": "a", "body": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"],
            ("bad_header", "too_large"),
        )
    )
    cases.append(
        ("huge-integer", [b'{"v": 1, "kind": "ping", "request_id": "a", "step": 1' + b"0" * 5000 + b"}"], "bad_header")
    )
    cases.append(
        (
            "header-over-cap",
            [header_frame({"v": 1, "kind": "ping", "request_id": "a", "body": {"x": "y" * 70_000}})],
            "too_large",
        )
    )
    # Versions.
    for version in (0, 2, -1, 10**6, "1", True, None, 1.0):
        cases.append(
            (
                f"version-{version!r}",
                [header_frame({"v": version, "kind": "ping", "request_id": "a"})],
                ("bad_version", "bad_header"),
            )
        )
    cases.append(("no-version", [header_frame({"kind": "ping", "request_id": "a"})], "bad_header"))
    # Kinds.
    for kind in ("", "PING", "stepp", 7, None, "result", "error", "pong"):
        obj = {"v": 1, "kind": kind, "request_id": "a"}
        if kind == "error":
            obj["body"] = {"code": "x", "message": "y"}
        cases.append((f"kind-{kind!r}", [header_frame(obj)], "bad_kind"))
    # Identifiers.
    for value in ("", "with space", "x" * 65, 5, None, "é"):
        cases.append(
            (f"request-id-{value!r}", [header_frame({"v": 1, "kind": "ping", "request_id": value})], "bad_header")
        )
    add_step("session-id-int", "bad_header", session_id=5)
    add_step("step-negative", "bad_header", step=-1)
    add_step("step-float", "bad_header", step=1.5)
    add_step("step-bool", "bad_header", step=True)
    # Huge declared sizes: refused before any allocation.
    add_step(
        "huge-shape",
        "too_large",
        tensors=[{"name": "hidden", "dtype": "float32", "shape": [2**31 - 1, 2**31 - 1, 2**31 - 1], "nbytes": 8}],
    )
    add_step(
        "huge-nbytes",
        "too_large",
        tensors=[{"name": "hidden", "dtype": "float32", "shape": [1, 2, hidden_size], "nbytes": 2**62}],
    )
    add_step(
        "too-many-tensors",
        ("bad_tensor", "bad_frames"),
        tensors=[{"name": f"t{i}", "dtype": "float32", "shape": [1], "nbytes": 4} for i in range(65)],
    )
    # Frames that disagree with the header.
    add_step("missing-frame", "bad_frames", tensor_frames=[])
    add_step("extra-frame", "bad_frames", tensor_frames=[torch.zeros(1, 2, hidden_size).numpy().tobytes(), b"x"])
    add_step("short-frame", "bad_tensor", tensor_frames=[b"\x00" * 8])
    add_step(
        "nbytes-mismatch",
        "bad_tensor",
        tensors=[{"name": "hidden", "dtype": "float32", "shape": [1, 2, hidden_size], "nbytes": 12}],
    )
    cases.append(
        ("too-many-frames", [header_frame({"v": 1, "kind": "ping", "request_id": "a"}), *([b"x"] * 70)], "bad_frames")
    )
    # Tensor descriptors.
    for name, spec in [
        (
            "dtype-unknown",
            {"name": "hidden", "dtype": "float64", "shape": [1, 2, hidden_size], "nbytes": 16 * hidden_size},
        ),
        ("dtype-missing", {"name": "hidden", "shape": [1, 2, hidden_size], "nbytes": 8 * hidden_size}),
        (
            "shape-negative",
            {"name": "hidden", "dtype": "float32", "shape": [1, -2, hidden_size], "nbytes": 8 * hidden_size},
        ),
        (
            "shape-rank-5",
            {"name": "hidden", "dtype": "float32", "shape": [1, 1, 1, 2, hidden_size], "nbytes": 8 * hidden_size},
        ),
        ("name-bad", {"name": "hid den", "dtype": "float32", "shape": [1, 2, hidden_size], "nbytes": 8 * hidden_size}),
    ]:
        add_step(name, "bad_tensor", tensors=[spec])

    # Tensors that decode but do not fit this span.
    def add_tensor_step(
        name: str, tensor: torch.Tensor, code: str, tensor_name: str = "hidden", **changes: Any
    ) -> None:
        spec = {
            "name": tensor_name,
            "dtype": str(tensor.dtype).removeprefix("torch."),
            "shape": list(tensor.shape),
            "nbytes": tensor.nbytes,
        }
        add_step(
            name,
            code,
            tensor_frames=[tensor.contiguous().view(torch.uint8).numpy().tobytes()],
            tensors=[spec],
            **changes,
        )

    add_tensor_step("wrong-hidden-size", torch.zeros(1, 2, hidden_size - 1), "bad_tensor")
    add_tensor_step("rank-2", torch.zeros(2, hidden_size), "bad_tensor")
    add_tensor_step("rank-4", torch.zeros(1, 1, 2, hidden_size), "bad_tensor")
    add_tensor_step("int-hidden", torch.zeros(1, 2, hidden_size, dtype=torch.int64), "bad_tensor")
    add_tensor_step("bool-hidden", torch.zeros(1, 2, hidden_size, dtype=torch.bool), "bad_tensor")
    add_tensor_step("nan-hidden", torch.full((1, 2, hidden_size), float("nan")), "bad_tensor")
    add_tensor_step("inf-hidden", torch.full((1, 2, hidden_size), float("inf")), "bad_tensor")
    add_tensor_step("empty-batch", torch.zeros(0, 2, hidden_size), "bad_tensor", positions=[0, 2])
    add_tensor_step("batch-over-cap", torch.zeros(MAX_BATCH + 1, 2, hidden_size), "bad_tensor")
    add_tensor_step("wrong-tensor-name", torch.zeros(1, 2, hidden_size), "bad_tensor", tensor_name="hiddne")
    add_tensor_step("tokens-vs-positions", torch.zeros(1, 3, hidden_size), "bad_tensor")
    add_tensor_step(
        "past-max-length", torch.zeros(1, 2, hidden_size), "too_large", positions=[0, MAX_SESSION_TOKENS + 1]
    )
    # Positions.
    add_step("no-positions", "bad_header", positions=None)
    add_step("positions-reversed", "bad_header", positions=[2, 0])
    add_step("positions-not-from-zero", "bad_step", positions=[3, 5])
    add_step("positions-three", "bad_header", positions=[0, 1, 2])
    # Routes.
    add_step("no-route", "bad_route", route=[])
    add_step("route-not-list", "bad_route", route="tcp://127.0.0.1:1")
    add_step("route-bad-address", "bad_route", route=[{"address": "127.0.0.1:5", "blocks": [0, 2]}])
    add_step("route-port-zero", "bad_route", route=[{"address": "tcp://127.0.0.1:0", "blocks": [0, 2]}])
    add_step("route-blocks-empty", "bad_route", route=[{"address": "tcp://127.0.0.1:1", "blocks": [1, 1]}])
    add_step("route-blocks-outside", "wrong_blocks", route=[{"address": "tcp://127.0.0.1:1", "blocks": [2, 4]}])
    add_step("route-blocks-overlap", "wrong_blocks", route=[{"address": "tcp://127.0.0.1:1", "blocks": [1, 3]}])
    add_step("route-too-long", "bad_route", route=[{"address": "tcp://127.0.0.1:1", "blocks": [0, 2]}] * 65)
    add_step(
        "multi-hop-without-reply-to",
        "bad_route",
        route=[{"address": "tcp://127.0.0.1:1", "blocks": [0, 2]}, {"address": "tcp://127.0.0.1:2", "blocks": [2, 4]}],
    )
    add_step("reply-to-malformed", "bad_route", reply_to="udp://x:1")
    # Sessions and steps.
    add_step("unknown-session", "unknown_session", session_id="never-opened")
    cases.append(
        (
            "open-without-session",
            [
                header_frame(
                    {
                        "v": 1,
                        "kind": "open_session",
                        "request_id": "a",
                        "route": [{"address": "tcp://127.0.0.1:1", "blocks": [0, 2]}],
                        "body": {"max_length": 8},
                    }
                )
            ],
            "bad_header",
        )
    )
    for value in (None, "8", 8.5, True, [8]):
        body = {"secret": SESSION_SECRET} | ({} if value is None else {"max_length": value})
        cases.append(
            (
                f"open-max-length-{value!r}",
                [
                    header_frame(
                        {
                            "v": 1,
                            "kind": "open_session",
                            "request_id": "a",
                            "session_id": "s",
                            "route": [{"address": "tcp://127.0.0.1:1", "blocks": [0, 2]}],
                            "body": body,
                        }
                    )
                ],
                "bad_header",
            )
        )
    cases.append(
        (
            "open-too-long",
            [
                header_frame(
                    {
                        "v": 1,
                        "kind": "open_session",
                        "request_id": "a",
                        "session_id": "s",
                        "route": [{"address": "tcp://127.0.0.1:1", "blocks": [0, 2]}],
                        "body": {"max_length": MAX_SESSION_TOKENS + 1, "secret": SESSION_SECRET},
                    }
                )
            ],
            "busy",
        )
    )
    cases.append(
        (
            "close-without-session",
            [
                header_frame(
                    {
                        "v": 1,
                        "kind": "close_session",
                        "request_id": "a",
                        "route": [{"address": "tcp://127.0.0.1:1", "blocks": [0, 2]}],
                    }
                )
            ],
            "bad_header",
        )
    )
    cases.append(
        (
            "error-body-bad",
            [header_frame({"v": 1, "kind": "error", "request_id": "a", "body": {"code": "Bad Code", "message": 1}})],
            "bad_header",
        )
    )
    return cases


def test_crafted_malformed_messages_get_errors(peer: PeerProcess, client: ComputeClient, hidden_size: int) -> None:
    cases = crafted_cases(hidden_size)
    assert len(cases) >= 90
    for name, frames, code in cases:
        assert_error(exchange(client, peer, frames), code, name)
    assert peer.process.poll() is None, peer.log()


def test_session_step_order_is_enforced(peer: PeerProcess, client: ComputeClient, hidden_size: int) -> None:
    hop = route((peer.address, *HOSTED))

    def step(
        step_number: int, positions: tuple[int, int], blocks: tuple[int, int] = HOSTED, batch: int = 1
    ) -> wire.Header:
        header = request(
            Kind.STEP, session_id="ordered", step=step_number, route=route((peer.address, *blocks)), positions=positions
        )
        client.send(peer.address, header, {"hidden": torch.randn(batch, positions[1] - positions[0], hidden_size)})
        return client.receive_direct(peer.address).header

    client.send(peer.address, request(Kind.OPEN_SESSION, session_id="ordered", route=hop, body={"max_length": 16}))
    assert client.receive_direct(peer.address).header.body == {"opened": True}
    assert_error(step(1, (0, 3)), "bad_step", "step 1 before step 0")
    assert step(0, (0, 3)).kind is Kind.RESULT
    assert_error(step(0, (3, 4)), "bad_step", "step 0 repeated")
    assert_error(step(2, (3, 4)), "bad_step", "step 2 skips step 1")
    assert_error(step(1, (4, 5)), "bad_step", "positions skip a token")
    assert_error(step(1, (3, 4), blocks=(0, 1)), "wrong_blocks", "other blocks than at open")
    assert_error(step(1, (3, 4), batch=2), "bad_tensor", "batch changes")
    assert_error(step(1, (3, 20)), "too_large", "past max_length")
    # None of the refusals touched the cache: the right next step still runs.
    reply = step(1, (3, 4))
    assert reply.kind is Kind.RESULT, reply.body
    # A step may start before the cache's end (speculative decoding): the later tokens are taken back first.
    reply = step(2, (1, 3))
    assert reply.kind is Kind.RESULT, reply.body
    assert_error(step(3, (4, 5)), "bad_step", "positions skip a token after taking some back")
    assert step(3, (3, 4)).kind is Kind.RESULT
    # Errors of routed messages with a valid reply_to go there, not back to the sender.
    client.send(
        peer.address,
        request(Kind.STEP, session_id="ordered", step=9, route=hop, reply_to=client.address, positions=(4, 5)),
        {"hidden": torch.randn(1, 1, hidden_size)},
    )
    routed = client.receive()
    assert_error(routed.header, "bad_step", "error to reply_to")
    assert routed.header.body["peer"] == peer.address
    assert client.pending_direct(peer.address) == 0


def test_a_session_belongs_to_whoever_opened_it(peer: PeerProcess, client: ComputeClient, hidden_size: int) -> None:
    """Another client that knows the session id (not its secret) can neither step, close nor re-open it; the owner's
    steps go on as if nothing happened."""
    hop = route((peer.address, *HOSTED))
    owner, thief = {"secret": "owner0123456789abcdef"}, {"secret": "thief0123456789abcdef"}

    def send(kind: Kind, body: dict[str, Any], step: int = 0, positions: tuple[int, int] | None = None) -> wire.Header:
        tensors = {"hidden": torch.randn(1, positions[1] - positions[0], hidden_size)} if positions else None
        header = request(kind, session_id="owned", route=hop, step=step, positions=positions, body=body)
        client.send(peer.address, header, tensors)
        return client.receive_direct(peer.address).header

    assert send(Kind.OPEN_SESSION, owner | {"max_length": 16}).body == {"opened": True}
    assert send(Kind.STEP, owner, 0, (0, 3)).kind is Kind.RESULT
    assert_error(send(Kind.STEP, thief, 1, (3, 4)), "not_owner", "a step with another secret")
    assert_error(send(Kind.STEP, {}, 1, (3, 4)), "not_owner", "a step with no secret")
    assert_error(send(Kind.CLOSE_SESSION, thief), "not_owner", "a close with another secret")
    assert_error(send(Kind.OPEN_SESSION, thief | {"max_length": 16}), "session_exists", "a re-open of the id")
    assert_error(send(Kind.OPEN_SESSION, {"max_length": 16, "secret": "short"}), "bad_header", "a weak secret")
    # The owner's session is untouched: its next step runs where the cache left off, and the owner can close it.
    assert send(Kind.STEP, owner, 1, (3, 4)).kind is Kind.RESULT
    assert send(Kind.CLOSE_SESSION, owner).body == {"closed": True}
    assert_error(send(Kind.STEP, owner, 2, (4, 5)), "unknown_session", "a step after the close")


def test_the_kv_budget_counts_the_batch(peer: PeerProcess, client: ComputeClient, hidden_size: int) -> None:
    """MAX_BATCH sequences of MAX_SESSION_TOKENS each are more cache than one session of that length: a session
    declares its batch, and steps of another batch are refused; stateless requests are capped by batch x tokens."""
    hop = route((peer.address, *HOSTED))
    body = {"max_length": 8, "batch": 2}
    client.send(peer.address, request(Kind.OPEN_SESSION, session_id="batched", route=hop, body=body))
    assert client.receive_direct(peer.address).header.body == {"opened": True}
    step = request(Kind.STEP, session_id="batched", route=hop, positions=(0, 2))
    client.send(peer.address, step, {"hidden": torch.randn(3, 2, hidden_size)})
    assert_error(client.receive_direct(peer.address).header, "bad_tensor", "a batch other than declared")
    client.send(peer.address, step, {"hidden": torch.randn(2, 2, hidden_size)})
    assert client.receive_direct(peer.address).header.kind is Kind.RESULT
    tokens = MAX_SESSION_TOKENS // MAX_BATCH + 1
    obj, _ = step_obj(hidden_size)
    tensor = torch.zeros(MAX_BATCH, tokens, hidden_size)
    obj.update(
        positions=[0, tokens],
        tensors=[{"name": "hidden", "dtype": "float32", "shape": list(tensor.shape), "nbytes": tensor.nbytes}],
    )
    reply = exchange(client, peer, [header_frame(obj), tensor.numpy().tobytes()])
    assert_error(reply, "too_large", "a stateless batch x tokens past one session's length")


def mutate(obj: Any, rng: random.Random, depth: int = 0) -> Any:
    """A random structural change somewhere in a JSON value."""
    replacements: list[Any] = [None, True, -1, 0, 2**40, 1.5, "", "x" * 300, [], {}, [0, 1, 2], {"a": 1}, "tcp://h:1"]
    if isinstance(obj, dict) and obj and depth < 4:
        key = rng.choice(sorted(obj))
        changed = dict(obj)
        roll = rng.random()
        if roll < 0.2:
            del changed[key]
        elif roll < 0.6:
            changed[key] = rng.choice(replacements)
        else:
            changed[key] = mutate(obj[key], rng, depth + 1)
        return changed
    if isinstance(obj, list) and obj and depth < 4:
        changed_list = list(obj)
        index = rng.randrange(len(changed_list))
        changed_list[index] = (
            mutate(changed_list[index], rng, depth + 1) if rng.random() < 0.5 else rng.choice(replacements)
        )
        return changed_list
    return rng.choice(replacements)


def test_random_messages_never_stop_the_peer(peer: PeerProcess, client: ComputeClient, hidden_size: int) -> None:
    rng = random.Random(1234)
    outcomes: dict[str, int] = {}
    for index in range(RANDOM_MESSAGES):
        if index % 4 == 0:
            # Random bytes in random frames.
            frames: list[Any] = [rng.randbytes(rng.randrange(0, 200)) for _ in range(rng.randrange(1, 5))]
        else:
            obj, tensor_frames = step_obj(hidden_size)
            mutated = mutate(obj, rng)
            frames = [header_frame(mutated), *tensor_frames[: rng.randrange(0, 3)]]
        reply = exchange(client, peer, frames)
        assert reply.kind in (Kind.ERROR, Kind.RESULT), reply
        key = reply.body["code"] if reply.kind is Kind.ERROR else "result"
        outcomes[key] = outcomes.get(key, 0) + 1
    assert peer.process.poll() is None, peer.log()
    # Nothing crashed the handler: no "internal" errors, and most messages were refused.
    assert "internal" not in outcomes, outcomes
    assert sum(count for code, count in outcomes.items() if code != "result") > RANDOM_MESSAGES // 2


def test_valid_session_still_served_afterwards(peer: PeerProcess, client: ComputeClient, hidden_size: int) -> None:
    hop = route((peer.address, *HOSTED))
    client.send(
        peer.address,
        request(Kind.OPEN_SESSION, session_id="after", route=hop, reply_to=client.address, body={"max_length": 8}),
    )
    assert client.receive().header.body == {"opened": True}
    client.send(
        peer.address,
        request(Kind.STEP, session_id="after", route=hop, reply_to=client.address, positions=(0, 3)),
        {"hidden": torch.randn(1, 3, hidden_size)},
    )
    reply = client.receive()
    assert reply.header.kind is Kind.RESULT, reply.header.body
    assert reply.tensors["hidden"].shape == (1, 3, hidden_size)
    assert torch.isfinite(reply.tensors["hidden"]).all()
    client.send(peer.address, request(Kind.PING))
    assert client.receive_direct(peer.address).header.kind is Kind.PONG


def test_unreachable_next_hop_is_reported_to_the_client(
    peer: PeerProcess, client: ComputeClient, hidden_size: int
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    # Nobody listens on `dead` now: the peer runs its blocks, cannot forward, and says so to reply_to.
    hops = route((peer.address, *HOSTED), (dead, HOSTED[1], LAYERS))
    client.send(
        peer.address,
        request(Kind.STEP, route=hops, reply_to=client.address, positions=(0, 2)),
        {"hidden": torch.randn(1, 2, hidden_size)},
    )
    reply = client.receive()
    assert_error(reply.header, "unreachable", "dead next hop")
    assert dead in reply.header.body["message"]
    client.send(peer.address, request(Kind.PING))
    assert client.receive_direct(peer.address).header.kind is Kind.PONG


@contextlib.contextmanager
def silent_listener() -> Iterator[str]:
    """An address whose kernel accepts TCP connections that nobody ever answers (a frozen process)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"


def ping_seconds(peer: PeerProcess, client: ComputeClient) -> float:
    """Seconds until the peer answers a ping (errors it sent back directly before the pong are skipped: a reply
    that cannot wait for its reply_to's connection goes to the sender)."""
    started = time.monotonic()
    client.send(peer.address, request(Kind.PING))
    while (received := client.receive_direct(peer.address, timeout=30).header).kind is not Kind.PONG:
        assert received.kind is Kind.ERROR, received
    return time.monotonic() - started


def test_a_silent_next_hop_never_stalls_the_peer(peer: PeerProcess, client: ComputeClient, hidden_size: int) -> None:
    with silent_listener() as silent:
        hops = route((peer.address, *HOSTED), (silent, HOSTED[1], LAYERS))
        client.send(
            peer.address,
            request(Kind.STEP, route=hops, reply_to=client.address, positions=(0, 2)),
            {"hidden": torch.randn(1, 2, hidden_size)},
        )
        # The step waits for its connection in a queue, not in the peer's loop: pings are answered meanwhile.
        assert ping_seconds(peer, client) < 0.5
        reply = client.receive(timeout=30)
    assert_error(reply.header, "unreachable", "silent next hop")
    assert reply.header.body["peer"] == silent


def test_a_burst_of_replies_to_a_silent_address_never_stalls_the_peer(peer: PeerProcess, client: ComputeClient) -> None:
    """The issue's attack: close_session for sessions that do not exist, routed on, replying to a frozen address.
    Each error reply waited up to 2 s in the loop (a burst of 2,000 stalled a peer for 156 s)."""
    with silent_listener() as silent, silent_listener() as silent_next:
        hops = route((peer.address, *HOSTED), (silent_next, HOSTED[1], LAYERS))
        for _ in range(300):
            message = request(Kind.CLOSE_SESSION, session_id=new_id(), route=hops, reply_to=silent)
            client.send(peer.address, message)
        worst = max(ping_seconds(peer, client) for _ in range(5))
    assert worst < 0.5, f"a ping took {worst:.2f} s during the burst"


def test_a_source_opening_sessions_too_fast_is_rate_limited(home: Path, hidden_size: int) -> None:
    environment = peer_environment(os.environ, home=home, sessions_per_minute=6, session_burst=3)
    (limited,) = start_peers([["--model", "robust", "--blocks", "0:2"]], environment, home.parent / "logs-limited")
    client = ComputeClient()
    try:
        codes = []
        for _ in range(5):
            message = request(
                Kind.OPEN_SESSION, session_id=new_id(), route=route((limited.address, *HOSTED)),
                reply_to=client.address, body={"max_length": 8},
            )  # fmt: skip
            client.send(limited.address, message)
            reply = client.receive().header
            codes.append("opened" if reply.kind is Kind.RESULT else reply.body["code"])
        # The burst of three, then refusals: the bucket refills at one every ten seconds.
        assert codes == ["opened"] * 3 + ["rate_limited"] * 2
        assert ping_seconds(limited, client) < 0.5
    finally:
        client.close()
        limited.stop()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--blocks", "3:9"], "error: blocks 3:9 are outside the model's 4 blocks (0:4)"),
        (["--peer", "nowhere"], "error: bad --peer: expected HOST:PORT, got 'nowhere'"),
        (["--bootstrap", "h:99999"], "error: bad bootstrap node: port 99999 is out of range in 'h:99999'"),
        (["--memory", "1KB"], "error: the memory budget (1,000 bytes) does not fit even one block"),
    ],
)
def test_bad_join_options_are_one_line_errors(home: Path, arguments: list[str], message: str) -> None:
    result = subprocess.run(
        [SWARM, "join", "--model", "robust", "--listen", "127.0.0.1:0", "--torrent-listen", "127.0.0.1:0", *arguments],
        env=peer_environment(os.environ, home=home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr
    assert "Traceback" not in result.stderr
