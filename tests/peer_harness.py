"""Helpers for tests that run real `swarm join` processes and talk to them over real ZeroMQ sockets."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from swarm import transport, wire
from tests.conftest import SWARM

PEER_START_TIMEOUT = 90.0


@dataclass
class PeerProcess:
    process: subprocess.Popen[str]
    serving: dict[str, Any]
    log_path: Path

    @property
    def address(self) -> str:
        return str(self.serving["address"])

    def log(self, characters: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit status; a peer still running after `timeout` has its stacks printed to its log
        (SIGUSR1), is killed, and fails the caller with its log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"peer did not stop within {timeout:g} s; its log:\n{self.log(12000)}") from None


def peer_environment(base: Mapping[str, str], **settings: Any) -> dict[str, str]:
    """A peer's environment: one torch thread (the test machine is small and shared), SWARM_* settings."""
    environment = {key: value for key, value in base.items() if not key.startswith("SWARM_")}
    environment.setdefault("OMP_NUM_THREADS", "1")
    environment["HF_HUB_OFFLINE"] = "1"
    for key, value in settings.items():
        environment[f"SWARM_{key.upper()}"] = str(value)
    return environment


def published_llama(
    make_model_tool: ModuleType, root: Path, name: str, seed: int, family: str = "llama"
) -> tuple[Path, dict[str, str]]:
    """A generated 4-block Llama (or another `family` of tools/make_model.py) under `root`, published as `name` into
    the catalog of SWARM_HOME=root/home, and the peer environment that uses that home."""
    model_dir = make_model_tool.make_model(family, root / family, layers=4, seed=seed, log=lambda _line: None)
    environment = peer_environment(os.environ, home=root / "home")
    subprocess.run(
        [SWARM, "seed", str(model_dir), "--name", name, "--prepare-only"], env=environment, check=True,
        capture_output=True,
    )  # fmt: skip
    return model_dir, environment


def local_greedy_tokens(model_dir: Path, prompt: str, new_tokens: int) -> list[int]:
    """The tokens local transformers `generate` gives greedily after `prompt`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    output = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens)
    return [int(token) for token in output[0, ids.shape[1] :]]


def start_peers(commands: list[list[str]], environment: Mapping[str, str], log_dir: Path) -> list[PeerProcess]:
    """Start `swarm join` processes at once and wait for each one's "serving" line."""
    log_dir.mkdir(parents=True, exist_ok=True)
    started = []
    for index, arguments in enumerate(commands):
        log_path = log_dir / f"peer{index}-{uuid.uuid4().hex[:6]}.log"
        process = subprocess.Popen(
            [SWARM, "join", *arguments, "--listen", "127.0.0.1:0", "--torrent-listen", "127.0.0.1:0", "--json"],
            env=dict(environment),
            stdout=subprocess.PIPE,
            stderr=log_path.open("w"),
            text=True,
        )
        started.append((process, log_path))
    peers = []
    try:
        for process, log_path in started:
            peers.append(PeerProcess(process, wait_for_event(process, "serving", log_path), log_path))
    except BaseException:
        for process, _ in started:
            if process.poll() is None:
                process.kill()
                process.wait()
        raise
    return peers


def start_liar(lie: str, arguments: list[str], environment: Mapping[str, str], log: Path) -> PeerProcess:
    """A `swarm join` that lies (`noise` or `boast`: see tests/lying_peer.py), once it serves."""
    command = [sys.executable, str(Path(__file__).with_name("lying_peer.py")), lie, "join", *arguments]
    command += ["--listen", "127.0.0.1:0", "--torrent-listen", "127.0.0.1:0", "--json"]
    process = subprocess.Popen(command, env=dict(environment), stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    return PeerProcess(process, wait_for_event(process, "serving", log), log)


def wait_for_event(process: subprocess.Popen[str], event: str, log_path: Path) -> dict[str, Any]:
    """The first JSON line on the process's stdout whose "event" is `event`."""
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()

    def read_lines() -> None:
        # A thread, because a selector on a buffered text pipe misses lines already in Python's buffer.
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
            if json.loads(line).get("event") == event:
                return
        lines.put("")

    threading.Thread(target=read_lines, daemon=True).start()
    deadline = time.monotonic() + PEER_START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if not line:
            break
        record = json.loads(line)
        if record.get("event") == event:
            return dict(record)
    raise AssertionError(f"peer did not report {event!r}; its log:\n{log_path.read_text(errors='replace')[-4000:]}")


@dataclass
class Received:
    identity: bytes | None
    header: wire.Header
    tensors: dict[str, torch.Tensor]


@dataclass
class ComputeClient:
    """A minimal compute client: a ROUTER for routed results, DEALERs for requests."""

    context: transport.Context = field(default_factory=transport.Context)

    def __post_init__(self) -> None:
        self.router, self.address = self.context.bind_router("tcp://127.0.0.1:0")
        self.dealers = transport.DealerPool(self.context)

    def send(self, address: str, header: wire.Header, tensors: Mapping[str, torch.Tensor] | None = None) -> None:
        self.dealers.send(address, wire.encode(header, tensors))

    def send_raw(self, address: str, frames: list[Any]) -> None:
        self.dealers.send(address, frames)

    def receive(self, timeout: float = 15.0) -> Received:
        """The next message on the client's ROUTER (routed results and errors)."""
        received = transport.recv_frames(self.router, timeout)
        assert received is not None, "no reply reached the client's ROUTER"
        identity, frames = received
        header, tensors = wire.decode(frames)
        return Received(identity, header, tensors)

    def receive_direct(self, address: str, timeout: float = 15.0) -> Received:
        """The next message on the DEALER connected to `address` (direct replies)."""
        received = transport.recv_frames(self.dealers.get(address), timeout)
        assert received is not None, f"no direct reply from {address}"
        header, tensors = wire.decode(received[1])
        return Received(None, header, tensors)

    def pending_direct(self, address: str) -> int:
        """Messages waiting on the DEALER to `address` (drained)."""
        count = 0
        while transport.recv_frames(self.dealers.get(address), 0) is not None:
            count += 1
        return count

    def close(self) -> None:
        self.context.close(linger_ms=0)


def new_id() -> str:
    return uuid.uuid4().hex[:16]


# The secret the tests' sessions are opened with (peers let only messages carrying it touch the session).
SESSION_SECRET = "testsecret0123456789"


def request(kind: wire.Kind, **fields: Any) -> wire.Header:
    """A header; messages of a session carry SESSION_SECRET in their body unless told otherwise."""
    if fields.get("session_id") is not None and kind in (
        wire.Kind.OPEN_SESSION,
        wire.Kind.STEP,
        wire.Kind.CLOSE_SESSION,
    ):
        fields["body"] = {"secret": SESSION_SECRET} | dict(fields.get("body", {}))
    return wire.Header(kind=kind, request_id=fields.pop("request_id", new_id()), **fields)


def route(*hops: tuple[str, int, int]) -> tuple[wire.Hop, ...]:
    return tuple(wire.Hop(address=address, blocks=(start, end)) for address, start, end in hops)
