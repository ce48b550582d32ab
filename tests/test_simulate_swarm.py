"""tools/simulate_swarm.py still runs the project's own policies end to end (a small swarm, one simulated hour)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_a_small_swarm_simulation_meets_its_goals() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "simulate_swarm.py"), "--peers", "40", "--blocks", "12", "--hours", "1",
         "--requests-per-minute", "10", "--runs", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 runs: served mean 100.00 %" in done.stdout and "goals met in 2 of 2" in done.stdout, done.stdout
