"""`make demo`: the main job on the embedded demo model, end to end on 127.0.0.1.

1. make the demo model when missing (a tiny Llama trained on the Zen of Python);
2. `swarm seed --prepare-only` publishes it into the repository's catalog (torrents/), signed with a
   publisher key kept in .demo/publisher across runs;
3. `swarm seedbox` seeds the publisher's chunk files and anchors discovery;
4. two `swarm join` peers, knowing only the seedbox's address, each host half the blocks, fetching their chunks
   over BitTorrent;
5. `swarm run --prompt "Beautiful is"`, knowing only the seedbox's address too, finds the peers and streams the
   continuation through both;
6. everything shuts down cleanly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
MODEL = DEMO / "model"
CATALOG = ROOT / "torrents"
SWARM = str(Path(sys.executable).with_name("swarm"))
NAME = "zen"
PROMPT = "Beautiful is"


def environment(home: str) -> dict[str, str]:
    return dict(os.environ, SWARM_HOME=str(DEMO / home), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def start(arguments: list[str], home: str) -> subprocess.Popen[str]:
    return subprocess.Popen(arguments, env=environment(home), stdout=subprocess.PIPE, text=True)


def wait_for_event(process: subprocess.Popen[str], event: str, timeout: float = 120.0) -> dict[str, Any]:
    """Read the process's JSON lines until the named event (the process keeps running)."""
    deadline = time.monotonic() + timeout
    assert process.stdout is not None  # created with stdout=PIPE just above
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise SystemExit(f"demo: {process.args[1]} exited with status {process.wait()} before '{event}'")
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            return dict(record)
    raise SystemExit(f"demo: no '{event}' from {process.args[1]} within {timeout:.0f} s")


def stop(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            status = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            status = process.wait()
        print(f"   {process.args[1]} exited with status {status}")


def main() -> int:
    started = time.monotonic()
    if not (MODEL / "config.json").exists():
        print("== making the demo model (a tiny Llama trained on the Zen of Python)", flush=True)
        subprocess.run(
            [sys.executable, str(ROOT / "tools" / "make_model.py"), "--demo", "--out", str(MODEL)], check=True
        )
    for home in ("seedbox", "peer-a", "peer-b", "client"):
        shutil.rmtree(DEMO / home, ignore_errors=True)
    print("== swarm seed --prepare-only", flush=True)
    subprocess.run(
        [SWARM, "seed", str(MODEL), "--name", NAME, "--catalog", str(CATALOG), "--prepare-only", "--force"],
        env=environment("publisher"),
        check=True,
    )
    processes: list[subprocess.Popen[str]] = []
    try:
        seedbox = start(
            [SWARM, "seedbox", "--catalog", str(CATALOG), "--data", str(DEMO / "publisher" / "data"),
             "--listen", "127.0.0.1:0", "--status", "127.0.0.1:0", "--json"],
            "seedbox",
        )  # fmt: skip
        processes.append(seedbox)
        bootstrap = f"127.0.0.1:{wait_for_event(seedbox, 'listening')['torrent_port']}"
        wait_for_event(seedbox, "seeding")
        print(f"== seedbox seeding {NAME}; the others know only its address, {bootstrap}", flush=True)
        manifest = json.loads((CATALOG / f"{NAME}.json").read_text())
        half = manifest["num_blocks"] // 2
        peers = []
        for home, blocks in (("peer-a", f"0:{half}"), ("peer-b", f"{half}:{manifest['num_blocks']}")):
            peer = start([SWARM, "join", "--model", NAME, "--blocks", blocks, "--bootstrap", bootstrap, "--json"], home)
            processes.append(peer)
            peers.append(peer)
        addresses = []
        for peer in peers:
            serving = wait_for_event(peer, "serving")
            addresses.append(serving["address"].removeprefix("tcp://"))
            print(f"== peer {serving['address']} serves blocks {serving['blocks']} (chunks fetched over BitTorrent)")
        print(f"== swarm run --prompt {PROMPT!r} --bootstrap {bootstrap}", flush=True)
        run = subprocess.run(
            [SWARM, "run", "--model", NAME, "--prompt", PROMPT, "--max-new-tokens", "24", "--bootstrap", bootstrap],
            env=environment("client"),
        )  # fmt: skip
        if run.returncode != 0:
            return run.returncode
        print(f"== peers: {', '.join(addresses)}")
    finally:
        print("== shutting down", flush=True)
        stop(list(reversed(processes)))
    print(f"== demo finished in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
