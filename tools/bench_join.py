"""Benchmark: how long `swarm join` takes to serve, and its peak RSS, against issue 15's goals.

The README's path on 127.0.0.1: a publisher prepares a generated Llama, `swarm seedbox` seeds it, and
`swarm join --model NAME --bootstrap SEEDBOX` (a fresh SWARM_HOME each run) finds it, fetches every chunk,
loads it and serves. Each JSON line of the join is stamped when read: process start -> "fetching" (imports,
DHT, model resolution), "fetching" -> "loading" (download), "loading" -> "serving" (weights loaded, throughput
measured, socket bound). Goal: serving within download + load + 5 s. Peak RSS against 1.2 x the weights it
holds + its KV budget (--kv-memory) + 300 MB: VmHWM at "serving" (no session open), then again once sessions
holding the whole KV budget ran their prompts (each step's hidden states in, so the cache fills as in use).

Usage: python tools/bench_join.py [--params 250M] [--repeat 3] [--kv-memory 256MB] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_distribution import MODEL_NAME, SWARM, generated_llama, wait_for_line
from bytecode import compile_package

from swarm.client.session import ComputeClient, InferenceSession
from swarm.peer.selection import parse_byte_size
from swarm.wire import Hop, Kind

MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stamped_events(
    process: subprocess.Popen[str], until: str, timeout: float, records: dict[str, dict[str, Any]] | None = None
) -> dict[str, float]:
    """Seconds since now at which each JSON event of `process` arrived, up to the event `until` (the events
    themselves into `records` when given)."""
    started = time.monotonic()
    stamps: dict[str, float] = {}

    def stamp(record: dict[str, Any]) -> bool:
        stamps.setdefault(str(record.get("event")), time.monotonic() - started)
        if records is not None:
            records.setdefault(str(record.get("event")), record)
        return record.get("event") == until

    wait_for_line(process, stamp, timeout)
    return stamps


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/PID/status")


def fill_kv_budget(address: str, blocks: tuple[int, int]) -> int:
    """Open sessions on the peer until its KV budget is taken and run a full-length prompt through each; the
    tokens cached."""
    with ComputeClient(timeout=300.0) as client:
        info = client.ask(address, Kind.INFO).header.body
        budget, length, hidden = info["max_cached_tokens"], info["max_length"], info["hidden_size"]
        sessions: list[InferenceSession] = []
        cached = 0
        while cached < budget:
            session = InferenceSession(client, [Hop(address, blocks)], min(length, budget - cached))
            session.open()
            sessions.append(session)
            # Prompts in pieces of 256 tokens: the cache grows as in use, not one giant activation.
            for start in range(0, session.max_length, 256):
                end = min(start + 256, session.max_length)
                session.step({"hidden": torch.randn(1, end - start, hidden)}, (start, end))
            cached += session.max_length
        for session in sessions:
            session.close()
    return cached


def join_once(work: Path, bootstrap: str, kv_memory: str, timeout: float) -> dict[str, float]:
    home = work / "joiner"
    shutil.rmtree(home, ignore_errors=True)
    environment = dict(os.environ, SWARM_HOME=str(home), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [SWARM, "join", "--model", MODEL_NAME, "--bootstrap", bootstrap, "--kv-memory", kv_memory, "--json",
               "--listen", "127.0.0.1:0"]  # fmt: skip
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    records: dict[str, dict[str, Any]] = {}
    try:
        stamps = stamped_events(process, "serving", timeout, records)
        rss = peak_rss(process.pid)
        serving = records["serving"]
        blocks = serving["blocks"]
        cached = fill_kv_budget(str(serving["address"]), (int(blocks[0]), int(blocks[1])))
        filled_rss = peak_rss(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)
    weights = sum(path.stat().st_size for path in (home / "data" / "models" / MODEL_NAME).glob("*.safetensors"))
    download = stamps["loading"] - stamps["fetching"]
    load = stamps["serving"] - stamps["loading"]
    return {
        "serving_s": round(stamps["serving"], 2),
        "to_fetching_s": round(stamps["fetching"], 2),
        "download_s": round(download, 2),
        "load_s": round(load, 2),
        "beyond_download_and_load_s": round(stamps["serving"] - download - load, 2),
        "peak_rss_mib": round(rss / MIB),
        "cached_tokens": cached,
        "filled_peak_rss_mib": round(filled_rss / MIB),
        "weights_mib": round(weights / MIB),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="250M", help="model size for tools/make_model.py")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kv-memory", default="256MB", help="the joiner's KV budget (its --kv-memory)")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    compile_package()
    work = arguments.work or Path(tempfile.mkdtemp(prefix="bench-join-"))
    work.mkdir(parents=True, exist_ok=True)
    model = generated_llama(work, arguments.params)
    publisher = dict(os.environ, SWARM_HOME=str(work / "publisher"))
    subprocess.run([SWARM, "seed", str(model), "--name", MODEL_NAME, "--prepare-only", "--force", "--json"],
                   env=publisher, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    bootstrap = f"127.0.0.1:{free_port()}"
    seedbox = subprocess.Popen([SWARM, "seedbox", "--listen", bootstrap, "--json"], env=publisher,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        stamped_events(seedbox, "seeding", arguments.timeout)
        runs = [join_once(work, bootstrap, arguments.kv_memory, arguments.timeout) for _ in range(arguments.repeat)]
    finally:
        seedbox.terminate()
        seedbox.wait(timeout=60)
    row = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    kv_mib = round(parse_byte_size(arguments.kv_memory) / MIB)
    bound_mib = round(1.2 * row["weights_mib"] + kv_mib + 300)
    if arguments.json:
        print(json.dumps({"runs": runs, "median": row, "kv_budget_mib": kv_mib, "rss_bound_mib": bound_mib}))
        return
    print(f"model {row['weights_mib']:.0f} MiB of weights, KV budget {kv_mib} MiB, medians of {arguments.repeat}")
    print("| start to fetching s | download s | load s | serving after s | beyond download + load s | peak RSS MiB "
          "| tokens cached | peak RSS, KV budget full, MiB | RSS bound MiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {row['to_fetching_s']} | {row['download_s']} | {row['load_s']} | {row['serving_s']} | "
          f"{row['beyond_download_and_load_s']} | {row['peak_rss_mib']:.0f} | {row['cached_tokens']:.0f} | "
          f"{row['filled_peak_rss_mib']:.0f} | {bound_mib} |")  # fmt: skip


if __name__ == "__main__":
    main()
