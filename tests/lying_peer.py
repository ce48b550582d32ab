"""A hostile compute peer for tests: `swarm join` whose span adds noise to every output it computes.

Usage: python tests/lying_peer.py join --model NAME --blocks A:B ... (the arguments of `swarm`).
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from swarm.cli import main
from swarm.peer.runner import SpanRunner

honest_run = SpanRunner.run


def lying_run(self: SpanRunner, *arguments: Any, **keywords: Any) -> torch.Tensor:
    output = honest_run(self, *arguments, **keywords)
    return output + 0.1 * float(output.float().std()) * torch.randn_like(output)


SpanRunner.run = lying_run  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
