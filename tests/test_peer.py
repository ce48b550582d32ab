"""Two real `swarm join` processes serve a tiny Llama as a two-span pipeline over real ZeroMQ sockets.

The test client sends every request to the first peer only; the first peer forwards its output to the
second, and only the second answers the client. Greedy tokens must equal transformers' `generate`.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig, OPTConfig, OPTForCausalLM

from swarm import wire
from swarm.catalog import resolve
from swarm.model.span import Span, load_tensors
from swarm.wire import Kind
from tests.conftest import SWARM
from tests.peer_harness import ComputeClient, PeerProcess, peer_environment, request, route, start_peers

LAYERS = 4
SPLIT = 2
MAX_SESSIONS = 2
IDLE_TIMEOUT = 4.0
NEW_TOKENS = 6


class Swarm:
    def __init__(
        self,
        model_dir: Path,
        replica_dir: Path,
        home: Path,
        first: PeerProcess,
        second: PeerProcess,
        replica: PeerProcess,
    ) -> None:
        self.model_dir = model_dir
        self.replica_dir = replica_dir
        self.home = home
        self.first = first
        self.second = second
        self.replica = replica
        manifest, _ = resolve("tiny", home / "torrents")
        self.manifest = manifest
        models = home / "data" / "models"
        chunk_paths = [models / chunk.file for chunk in manifest.chunks if chunk.kind in ("embed", "head")]
        # The client's local parts: embeddings and head, no blocks.
        self.ends = Span(
            manifest.config, "llama", 0, 0, has_embed=True, has_head=True, tensors=load_tensors(chunk_paths)
        )

    def full_route(self) -> tuple[wire.Hop, ...]:
        return route((self.first.address, 0, SPLIT), (self.second.address, SPLIT, LAYERS))


def make_replica_model(directory: Path) -> Path:
    """A tiny OPT: an architecture without a block adapter, so it is published as one `full` chunk."""
    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
    )
    OPTForCausalLM(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def pipeline(make_model_tool: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    root = tmp_path_factory.mktemp("peer")
    model_dir = make_model_tool.make_model("llama", root / "llama", layers=LAYERS, seed=3, log=lambda _line: None)
    replica_dir = make_replica_model(root / "opt")
    environment = peer_environment(
        os.environ,
        home=root / "home",
        max_sessions=MAX_SESSIONS,
        session_idle_timeout=IDLE_TIMEOUT,
    )
    for directory, name in ((model_dir, "tiny"), (replica_dir, "opt")):
        subprocess.run(
            [SWARM, "seed", str(directory), "--name", name, "--prepare-only", "--json"],
            env=environment,
            check=True,
            capture_output=True,
        )
    manifest, _ = resolve("tiny", root / "home" / "torrents")
    block_bytes = max(chunk.size for chunk in manifest.chunks if chunk.kind == "blocks")
    # The first peer picks its span itself: a budget of two and a half blocks, nobody else serving yet.
    budget = block_bytes * SPLIT + block_bytes // 2
    peers = start_peers(
        [
            ["--model", "tiny", "--memory", str(budget)],
            # The second peer checks for steps without sleeping, so every test below covers that loop too.
            ["--model", "tiny", "--blocks", f"{SPLIT}:{LAYERS}", "--busy-poll", "0.5"],
            ["--model", "opt"],
        ],
        environment,
        root / "logs",
    )
    try:
        yield Swarm(model_dir, replica_dir, root / "home", *peers)
    finally:
        for peer in peers:
            if peer.process.poll() is None:
                peer.stop()


@pytest.fixture
def client() -> Iterator[ComputeClient]:
    made = ComputeClient()
    try:
        yield made
    finally:
        made.close()


def open_session(
    client: ComputeClient, swarm: Swarm, session_id: str, max_length: int = 32, batch: int = 1
) -> wire.Header:
    client.send(
        swarm.first.address,
        request(
            Kind.OPEN_SESSION,
            session_id=session_id,
            route=swarm.full_route(),
            reply_to=client.address,
            body={"max_length": max_length, "batch": batch},
        ),
    )
    return client.receive().header


def test_serving_line_and_info(pipeline: Swarm, client: ComputeClient) -> None:
    assert pipeline.first.serving["blocks"] == [0, SPLIT]
    assert pipeline.second.serving["blocks"] == [SPLIT, LAYERS]
    client.send(pipeline.first.address, request(Kind.INFO))
    info = client.receive_direct(pipeline.first.address).header
    assert info.kind is Kind.INFO
    assert info.body["model"] == "tiny"
    assert info.body["blocks"] == [0, SPLIT]
    assert info.body["family"] == "llama"
    assert info.body["info_hash"] == pipeline.manifest.torrent.info_hash_v2
    assert info.body["address"] == pipeline.first.address
    assert info.body["max_sessions"] == MAX_SESSIONS
    assert info.body["throughput"] > 0
    assert info.body["replica"] is False
    client.send(pipeline.second.address, request(Kind.PING, request_id="ping-1"))
    pong = client.receive_direct(pipeline.second.address).header
    assert (pong.kind, pong.request_id) == (Kind.PONG, "ping-1")


def test_greedy_tokens_match_generate_through_forwarding(pipeline: Swarm, client: ComputeClient) -> None:
    prompt = torch.tensor([[5, 17, 42, 9, 100, 3]])
    reference_model = AutoModelForCausalLM.from_pretrained(pipeline.model_dir).eval()
    # No EOS: the random model must not stop early, and the swarm loop below never stops either.
    config = GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=0)
    expected = reference_model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config)
    expected_new = expected[0, prompt.shape[1] :].tolist()

    opened = open_session(client, pipeline, "greedy")
    assert opened.kind is Kind.RESULT and opened.body == {"opened": True}

    senders: list[bytes | None] = []
    tokens: list[int] = []
    hidden = pipeline.ends.embed(prompt)
    position = 0
    for step in range(NEW_TOKENS):
        length = hidden.shape[1]
        client.send(
            pipeline.first.address,
            request(
                Kind.STEP,
                session_id="greedy",
                step=step,
                route=pipeline.full_route(),
                reply_to=client.address,
                positions=(position, position + length),
            ),
            {"hidden": hidden},
        )
        reply = client.receive()
        assert reply.header.kind is Kind.RESULT, reply.header.body
        assert (reply.header.session_id, reply.header.step) == ("greedy", step)
        senders.append(reply.identity)
        output = reply.tensors["hidden"]
        assert output.shape == (1, length, pipeline.manifest.config["hidden_size"])
        token = int(pipeline.ends.head(output)[0, -1].argmax())
        tokens.append(token)
        position += length
        hidden = pipeline.ends.embed(torch.tensor([[token]]))
    assert tokens == expected_new
    # Every result came from the last peer's DEALER (it names itself after its address)...
    assert all(sender is not None and sender.startswith(pipeline.second.address.encode()) for sender in senders)
    # ...and nothing came back on the connection to the first peer.
    assert client.pending_direct(pipeline.first.address) == 0

    client.send(
        pipeline.first.address,
        request(Kind.CLOSE_SESSION, session_id="greedy", route=pipeline.full_route(), reply_to=client.address),
    )
    closed = client.receive()
    assert closed.header.kind is Kind.RESULT and closed.header.body == {"closed": True}
    assert closed.identity is not None and closed.identity.startswith(pipeline.second.address.encode())
    # The session is gone on the first hop: the next step is refused there.
    client.send(
        pipeline.first.address,
        request(
            Kind.STEP,
            session_id="greedy",
            step=NEW_TOKENS,
            route=pipeline.full_route(),
            reply_to=client.address,
            positions=(position, position + 1),
        ),
        {"hidden": hidden},
    )
    refused = client.receive()
    assert refused.header.kind is Kind.ERROR
    assert refused.header.body["code"] == "unknown_session"
    assert refused.header.body["peer"] == pipeline.first.address


def test_batch_of_two_matches_single_sequences(pipeline: Swarm, client: ComputeClient) -> None:
    prompts = torch.tensor([[5, 17, 42, 9], [7, 7, 300, 1]])
    outputs = {}
    for name, batch in (("pair", prompts), ("one", prompts[:1]), ("two", prompts[1:])):
        assert open_session(client, pipeline, name, batch=batch.shape[0]).kind is Kind.RESULT
        client.send(
            pipeline.first.address,
            request(
                Kind.STEP,
                session_id=name,
                route=pipeline.full_route(),
                reply_to=client.address,
                positions=(0, prompts.shape[1]),
            ),
            {"hidden": pipeline.ends.embed(batch)},
        )
        reply = client.receive()
        assert reply.header.kind is Kind.RESULT, reply.header.body
        outputs[name] = reply.tensors["hidden"]
        client.send(
            pipeline.first.address,
            request(Kind.CLOSE_SESSION, session_id=name, route=pipeline.full_route(), reply_to=client.address),
        )
        assert client.receive().header.body == {"closed": True}
    torch.testing.assert_close(outputs["pair"], torch.cat([outputs["one"], outputs["two"]]), atol=1e-5, rtol=1e-5)


def test_a_route_visits_each_peer_once(pipeline: Swarm, client: ComputeClient) -> None:
    """A route through the same peer twice (here: the first peer's span as two hops) would make it run a message
    twice: it is refused before anything runs; the same request along a plain route runs."""
    hidden = pipeline.ends.embed(torch.tensor([[8, 30, 2, 99, 14]]))
    looping = route(
        (pipeline.first.address, 0, 1), (pipeline.first.address, 1, SPLIT), (pipeline.second.address, SPLIT, LAYERS)
    )

    def stateless_step(hops: tuple[wire.Hop, ...]) -> None:
        header = request(Kind.STEP, route=hops, reply_to=client.address, positions=(0, hidden.shape[1]))
        # Unchecked: this client's own encoder refuses a looping route too.
        client.send_raw(pipeline.first.address, wire.encode(header, {"hidden": hidden}, validate=False))

    stateless_step(looping)
    refused = client.receive_direct(pipeline.first.address).header
    assert refused.kind is Kind.ERROR and refused.body["code"] == "bad_route", refused.body
    assert "more than once" in refused.body["message"]
    stateless_step(pipeline.full_route())
    reply = client.receive()
    assert reply.header.kind is Kind.RESULT, reply.header.body


def test_admission_refuses_when_sessions_are_full(pipeline: Swarm, client: ComputeClient) -> None:
    only_first = route((pipeline.first.address, 0, SPLIT))
    hidden = torch.zeros(1, 1, pipeline.manifest.config["hidden_size"])
    for index in range(MAX_SESSIONS):
        for kind, fields in [
            (Kind.OPEN_SESSION, {"body": {"max_length": 8}}),
            # A session in use (one that never ran a step gives its place to a newcomer after a grace period).
            (Kind.STEP, {"positions": (0, 1)}),
        ]:
            header = request(kind, session_id=f"full-{index}", route=only_first, reply_to=client.address, **fields)
            client.send(pipeline.first.address, header, {"hidden": hidden} if kind is Kind.STEP else None)
            reply = client.receive()
            assert reply.header.kind is Kind.RESULT, reply.header.body
    client.send(
        pipeline.first.address,
        request(
            Kind.OPEN_SESSION,
            session_id="one-too-many",
            route=only_first,
            reply_to=client.address,
            body={"max_length": 8},
        ),
    )
    refused = client.receive()
    assert refused.header.kind is Kind.ERROR
    assert refused.header.body["code"] == "busy"
    assert refused.header.body["peer"] == pipeline.first.address
    client.send(pipeline.first.address, request(Kind.INFO))
    assert client.receive_direct(pipeline.first.address).header.body["free_sessions"] == 0
    for index in range(MAX_SESSIONS):
        client.send(
            pipeline.first.address,
            request(Kind.CLOSE_SESSION, session_id=f"full-{index}", route=only_first, reply_to=client.address),
        )
        assert client.receive().header.body == {"closed": True}
    client.send(pipeline.first.address, request(Kind.INFO))
    assert client.receive_direct(pipeline.first.address).header.body["free_sessions"] == MAX_SESSIONS


def test_idle_session_expires(pipeline: Swarm, client: ComputeClient) -> None:
    assert open_session(client, pipeline, "sleepy").kind is Kind.RESULT
    time.sleep(IDLE_TIMEOUT + 1.5)
    client.send(
        pipeline.first.address,
        request(
            Kind.STEP,
            session_id="sleepy",
            route=pipeline.full_route(),
            reply_to=client.address,
            positions=(0, 1),
        ),
        {"hidden": pipeline.ends.embed(torch.tensor([[4]]))},
    )
    expired = client.receive()
    assert expired.header.kind is Kind.ERROR
    assert expired.header.body["code"] == "unknown_session"


def test_full_replica_returns_logits_equal_to_the_model(pipeline: Swarm, client: ComputeClient) -> None:
    assert pipeline.replica.serving["replica"] is True
    client.send(pipeline.replica.address, request(Kind.INFO))
    info = client.receive_direct(pipeline.replica.address).header.body
    assert info["replica"] is True and info["serves_embed_head"] is True and info["family"] is None
    reference = OPTForCausalLM.from_pretrained(pipeline.replica_dir).eval()
    hop = route((pipeline.replica.address, 0, 1))
    client.send(
        pipeline.replica.address,
        request(Kind.OPEN_SESSION, session_id="whole", route=hop, reply_to=client.address, body={"max_length": 16}),
    )
    assert client.receive().header.body == {"opened": True}
    tokens = [5, 9, 17, 3]
    position = 0
    new = tokens
    for step in range(4):
        client.send(
            pipeline.replica.address,
            request(
                Kind.STEP,
                session_id="whole",
                step=step,
                route=hop,
                reply_to=client.address,
                positions=(position, position + len(new)),
            ),
            {"input_ids": torch.tensor([new])},
        )
        reply = client.receive()
        assert reply.header.kind is Kind.RESULT, reply.header.body
        logits = reply.tensors["logits"]
        assert logits.dtype == torch.float32 and logits.shape == (1, 128)
        with torch.no_grad():
            expected = reference(torch.tensor([tokens])).logits[:, -1]
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
        position += len(new)
        # Feed a varied token (a random OPT's argmax tends to repeat one id).
        new = [(int(logits.argmax()) + step * 31) % 128]
        tokens = tokens + new
    # Hidden states are not what a replica takes.
    client.send(
        pipeline.replica.address,
        request(
            Kind.STEP,
            session_id="whole",
            step=4,
            route=hop,
            reply_to=client.address,
            positions=(position, position + 1),
        ),
        {"hidden": torch.zeros(1, 1, 32)},
    )
    refused = client.receive()
    assert refused.header.kind is Kind.ERROR and refused.header.body["code"] == "bad_tensor"


def test_sigterm_fails_open_sessions_and_exits_cleanly(pipeline: Swarm, client: ComputeClient) -> None:
    # Runs last in this module: it stops the second peer.
    assert open_session(client, pipeline, "doomed").kind is Kind.RESULT
    returncode = pipeline.second.stop()
    assert returncode == 0, pipeline.second.log()
    notices = [client.receive(timeout=5)]
    assert notices[0].header.kind is Kind.ERROR
    assert notices[0].header.body["code"] == "shutting_down"
    assert notices[0].header.session_id == "doomed"
    assert notices[0].header.body["peer"] == pipeline.second.address
