"""What each hop of a generation's route received and gave, position by position, so that `--verify` can re-run one
hop alone on another peer and compare (see checker.py). Pure: tensors in, tensors out.

A boundary is a block index: boundary b holds the hidden states entering block b. Boundary 0 is the client's own
embedding, the model's block count is the last hop's output, and a boundary between hops is what the later hop
said it received (its tee). A hop running blocks [s, e) is checked on boundary s as input and e as output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch


@dataclass
class HopTrace:
    """Every boundary's hidden states for positions [0, n), float32, shape (batch, n, hidden_size)."""

    hidden_size: int
    boundaries: dict[int, torch.Tensor] = field(default_factory=dict)

    def record_step(self, start: int, count: int, hidden: Mapping[int, torch.Tensor]) -> None:
        """One step's hidden states at positions [start, start + count), by boundary. What a boundary held from `start` on is
        taken back first (a rollback, or a replay from 0 after a failover). A boundary the step leaves out, or gives
        in a shape that does not fit or with non-finite values, is forgotten: its positions are no longer all
        known, so no check relies on it until a replay from position 0 brings it back."""
        for boundary in set(self.boundaries) | set(hidden):
            held = self.boundaries.pop(boundary, None)
            new = hidden.get(boundary)
            if new is None or not self._fits(new, held, start, count):
                continue
            new = new.float()
            self.boundaries[boundary] = new if held is None or start == 0 else torch.cat([held[:, :start], new], 1)

    def _fits(self, new: torch.Tensor, held: torch.Tensor | None, start: int, count: int) -> bool:
        if new.dim() != 3 or tuple(new.shape[1:]) != (count, self.hidden_size) or not bool(torch.isfinite(new).all()):
            return False
        if start == 0:
            return True
        return held is not None and start <= held.shape[1] and held.shape[0] == new.shape[0]

    def positions(self, boundary: int, length: int) -> torch.Tensor | None:
        """Boundary's hidden states at positions [0, length), or None when they are not all known."""
        held = self.boundaries.get(boundary)
        if held is None or held.shape[1] < length:
            return None
        return held[:, :length]
