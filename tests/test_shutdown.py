"""A long-running command told to stop always ends: past SHUTDOWN_SECONDS it prints its stacks and exits."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

STUCK = """
import time
import swarm.cli as cli
cli.SHUTDOWN_SECONDS = 0.5
stop = cli.stop_event()
print("ready", flush=True)
while True:  # a close that never returns
    time.sleep(0.05)
"""


def test_a_stuck_shutdown_prints_stacks_and_exits() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", STUCK], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )  # fmt: skip
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    process.send_signal(signal.SIGUSR1)  # stacks on demand; the process goes on
    time.sleep(0.3)
    assert process.poll() is None
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert time.monotonic() - started < 10
    # Once for SIGUSR1, once when the shutdown ran out of time; both name the stuck loop.
    assert stderr.count("most recent call first") == 2, stderr
    assert stderr.count('File "<string>", line 8') == 2, stderr
