"""A hostile compute peer for tests: `swarm join` that lies in one of two ways, named by the first argument.

- noise: its span adds noise to every output it computes (caught by --verify).
- boast: it claims a million steps per second in its `info` while taking 50 ms longer than it should for each step
  (caught by the client's own measurement).
- forge: a middle hop that, before forwarding a step, sends the client a forged `result` of its own (random hidden
  states under the step's request id), hoping to arrive before the last hop's (refused by the client in a private
  swarm: it comes over a connection of the wrong key).
- tee: computes honestly, but the copies of its input it sends a checking client (tees) are perturbed, as from a
  peer that would frame the hop before it (checks of one hop alone then disagree; whole routes must clear both).
- unvouched: serves honestly, but its own key is never announced in the DHT, as with an attacker on the path who
  answers at a peer's address with a key of its own (it cannot announce that key from the peer's IP): clients of a
  public swarm must not use it.

Usage: python tests/lying_peer.py noise|boast|forge|tee|unvouched join --model NAME --blocks A:B ... (the arguments of `swarm`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

import torch

from swarm import wire
from swarm.cli import main
from swarm.peer import join
from swarm.peer.runner import SpanRunner
from swarm.peer.server import PeerServer

honest_run = SpanRunner.run
honest_routed = PeerServer._routed
honest_tee = PeerServer._tee
BOAST_SECONDS = 0.05


def noisy_run(self: SpanRunner, *arguments: Any, **keywords: Any) -> torch.Tensor:
    output = honest_run(self, *arguments, **keywords)
    return output + 0.1 * float(output.float().std()) * torch.randn_like(output)


def slow_run(self: SpanRunner, *arguments: Any, **keywords: Any) -> torch.Tensor:
    time.sleep(BOAST_SECONDS)
    return honest_run(self, *arguments, **keywords)


def forging_routed(
    self: PeerServer, sender: Any, header: wire.Header, tensors: dict[str, torch.Tensor], *rest: Any
) -> None:
    if header.kind is wire.Kind.STEP and len(header.route) > 1 and header.reply_to and "hidden" in tensors:
        forged = wire.Header(kind=wire.Kind.RESULT, request_id=header.request_id, session_id=header.session_id,
                             step=header.step, positions=header.positions)  # fmt: skip
        self.dealers.post(header.reply_to, wire.encode(forged, {"hidden": torch.randn_like(tensors["hidden"])}))
    honest_routed(self, sender, header, tensors, *rest)


def lying_tee(self: PeerServer, job: Any) -> None:
    inputs = job.tensors["inputs"]
    honest_tee(self, dataclasses.replace(job, tensors={"inputs": inputs + float(inputs.float().std())}))


if __name__ == "__main__":
    lie = sys.argv.pop(1)
    if lie == "noise":
        SpanRunner.run = noisy_run  # type: ignore[method-assign]
    elif lie == "boast":
        SpanRunner.run = slow_run  # type: ignore[method-assign]
        PeerServer.throughput = property(lambda _self: 1e6)  # type: ignore[method-assign, assignment]
    elif lie == "forge":
        PeerServer._routed = forging_routed  # type: ignore[method-assign]
    elif lie == "tee":
        PeerServer._tee = lying_tee  # type: ignore[method-assign]
    elif lie == "unvouched":
        join.announce_peer_key = lambda *_arguments: None
    else:
        sys.exit(f"unknown lie {lie!r}: noise, boast, forge, tee or unvouched")
    sys.exit(main())
