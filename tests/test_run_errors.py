"""`swarm run` on bad input: one clear line on stderr naming the problem, exit status 1, never a traceback.

Real processes throughout: a real `swarm join` peer that hosts only part of the model, a ZeroMQ ROUTER bound by
the test that never answers (a peer that hangs), and an address nothing listens on (a peer that died). A --route
candidate that does not answer is skipped; when the others do not cover the model, the error names it.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from swarm import transport
from swarm.client.session import ComputeClient, InferenceSession
from swarm.config import Settings
from swarm.errors import SwarmError
from swarm.publish import publish
from swarm.wire import Hop, Kind
from tests.conftest import SWARM
from tests.peer_harness import PeerProcess, peer_environment, start_peers

TIMEOUT = 2.0


@dataclass
class Setup:
    home: Path
    environment: dict[str, str]
    partial_peer: PeerProcess  # hosts blocks 0..1 of the 3-block llama
    silent_address: str  # a bound ROUTER that reads nothing and answers nothing


@pytest.fixture(scope="module")
def setup(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    home = tmp_path_factory.mktemp("run-errors") / "home"
    publish(str(model_dirs["llama"]), "llama", Settings(home=home))
    publish(str(model_dirs["bert"]), "bert", Settings(home=home))
    environment = peer_environment(os.environ, home=home)
    (peer,) = start_peers([["--model", "llama", "--blocks", "0:2"]], environment, home / "logs")
    with transport.Context() as context:
        _, silent_address = context.bind_router("tcp://127.0.0.1:0")
        try:
            yield Setup(home, environment, peer, silent_address)
        finally:
            peer.stop()


def address_of(tcp: str) -> str:
    return tcp.removeprefix("tcp://")


def test_bad_input_gives_one_line_errors(setup: Setup) -> None:
    """Each bad run in its own process, all at once (each spends seconds importing torch)."""
    peer, silent = address_of(setup.partial_peer.address), address_of(setup.silent_address)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    long_prompt = "Beautiful is better than ugly. " * 200
    cases = {
        "unknown model": (["--model", "no-such-model", "--prompt", "hi", "--route", peer], r"no-such-model"),
        "uncovered blocks": (["--model", "llama", "--prompt", "hi", "--route", peer], r"no peer serves blocks 2 "),
        "silent peer": (
            ["--model", "llama", "--prompt", "hi", "--route", silent, "--timeout", str(TIMEOUT)],
            rf"no peer serves blocks 0\.\.2 .*; not reachable: peer {setup.silent_address} did not answer ping within 2 s$",
        ),
        "dead candidate, the rest uncovered": (
            ["--model", "llama", "--prompt", "hi", "--route", f"{dead},{peer}"],
            rf"no peer serves blocks 2 .*; not reachable: cannot reach peer tcp://{dead}: the connection was refused",
        ),
        "prompt too long": (
            ["--model", "llama", "--prompt", long_prompt, "--route", peer],
            r"the prompt has \d+ tokens, but llama takes at most 512 positions",
        ),
        "embed on a causal model": (
            ["--model", "llama", "--embed", "hi", "--route", peer],
            r"llama is a causal language model: use --prompt",
        ),
        "prompt for an encoder": (
            ["--model", "bert", "--prompt", "hi", "--route", peer],
            r"bert is an encoder: use --embed",
        ),
        "malformed route": (
            ["--model", "llama", "--prompt", "hi", "--route", "nohost"],
            r"--route: expected HOST:PORT",
        ),
    }
    runs = {
        name: subprocess.Popen(
            [SWARM, "run", *arguments],
            env=setup.environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (arguments, _) in cases.items()
    }
    for name, run in runs.items():
        output, errors = run.communicate(timeout=120)
        assert run.returncode == 1, f"{name}: exit {run.returncode}, stderr {errors!r}"
        assert "Traceback" not in errors, name
        lines = [line for line in errors.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{name}: {errors!r}"
        assert output == "", name
        assert re.search(cases[name][1], lines[0]), f"{name}: {lines[0]!r}"


def test_hop_that_stops_answering_mid_route_is_named(setup: Setup) -> None:
    """The real peer runs its blocks and forwards to a hop that never answers: the timeout names that hop."""
    route = [Hop(setup.partial_peer.address, (0, 2)), Hop(setup.silent_address, (2, 3))]
    with ComputeClient(timeout=TIMEOUT) as client:
        session = InferenceSession(client, route, max_length=8)
        with pytest.raises(
            SwarmError, match=rf"peer {setup.silent_address} \(blocks 2\.\.2\) did not answer open_session"
        ):
            session.open()
        # The live peer still serves: it answers a ping right away.
        assert client.ask(setup.partial_peer.address, Kind.PING, timeout=TIMEOUT).header.kind.value == "pong"


def test_peer_error_reply_names_the_peer(setup: Setup) -> None:
    """A step for a session the peer never opened comes back as an error naming the peer and the code."""
    route = [Hop(setup.partial_peer.address, (0, 2))]
    with ComputeClient(timeout=10.0) as client:
        session = InferenceSession(client, route, max_length=8)
        session.is_open = True  # skip open_session on purpose
        hidden = torch.zeros(1, 1, 64)
        with pytest.raises(
            SwarmError, match=rf"peer {setup.partial_peer.address} refused the request \(unknown_session\)"
        ):
            session.step({"hidden": hidden}, (0, 1))
