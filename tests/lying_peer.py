"""A hostile compute peer for tests: `swarm join` that lies in one of two ways, named by the first argument.

- noise: its span adds noise to every output it computes (caught by --verify).
- boast: it claims a million steps per second in its `info` while taking 50 ms longer than it should for each step
  (caught by the client's own measurement).

Usage: python tests/lying_peer.py noise|boast join --model NAME --blocks A:B ... (the arguments of `swarm`).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from swarm.cli import main
from swarm.peer.runner import SpanRunner
from swarm.peer.server import PeerServer

honest_run = SpanRunner.run
BOAST_SECONDS = 0.05


def noisy_run(self: SpanRunner, *arguments: Any, **keywords: Any) -> torch.Tensor:
    output = honest_run(self, *arguments, **keywords)
    return output + 0.1 * float(output.float().std()) * torch.randn_like(output)


def slow_run(self: SpanRunner, *arguments: Any, **keywords: Any) -> torch.Tensor:
    time.sleep(BOAST_SECONDS)
    return honest_run(self, *arguments, **keywords)


if __name__ == "__main__":
    lie = sys.argv.pop(1)
    if lie == "noise":
        SpanRunner.run = noisy_run  # type: ignore[method-assign]
    elif lie == "boast":
        SpanRunner.run = slow_run  # type: ignore[method-assign]
        PeerServer.throughput = property(lambda _self: 1e6)  # type: ignore[method-assign, assignment]
    else:
        sys.exit(f"unknown lie {lie!r}: noise or boast")
    sys.exit(main())
