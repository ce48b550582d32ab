#!/usr/bin/env python3
"""Benchmark: items per second of `swarm batch` over the same prompts with 1 replica and with 2, side by side.

One generated Llama (about --params parameters) is published and served by two `swarm join` peers on 127.0.0.1,
each holding the whole model and computing on one torch thread (as the tests' peers do: two cores, two peers). The
same --items prompts run through `swarm batch` (as a user types it, --json) with `--route` naming one replica, then
both, interleaved --repeat times, --new-tokens greedy tokens per item with EOS banned (every item the same work).
Items/s and tokens/s are the batch's own figures (from its first item to its last, after the model is loaded); the
speed-up is 2 replicas over 1. Every run must give the same tokens for every line (checked), and the table says
how many items each replica served and how many cores the peers got while the batch ran (from /proc): a speed-up
short of 2 with the peers short of 2 cores means other processes had the rest.

Usage: python tools/bench_batch.py [--params 30M] [--items 64] [--new-tokens 16] [--repeat 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the peer harness lives with the tests that use it too
SWARM = str(Path(sys.executable).with_name("swarm"))
WORDS = ["beautiful", "explicit", "simple", "complex", "flat", "sparse", "readability", "special", "errors", "silently"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="30M", help="model size for tools/make_model.py (default 30M)")
    parser.add_argument("--items", type=int, default=64, help="prompts per batch (default 64)")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens per item, EOS banned (default 16)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each setup, interleaved (default 3)")
    parser.add_argument("--work", type=Path, help="working directory (kept; the model is reused when present)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-batch-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows, model = run(work, args)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report(rows, model, args)


def run(work: Path, args: argparse.Namespace) -> tuple[dict[int, list[dict[str, Any]]], dict[str, Any]]:
    """Serve the model on two replicas and run the batch on 1 and 2 of them, --repeat times each."""
    from swarm.config import Settings
    from swarm.publish import publish
    from tests.conftest import load_tool
    from tests.peer_harness import peer_environment, start_peers

    model_dir = work / f"llama-{args.params}"
    if not (model_dir / "config.json").is_file():
        load_tool("make_model").make_model("llama", model_dir, params=args.params, seed=0, force=True)
    config = json.loads((model_dir / "config.json").read_text())
    home = work / "home"
    publish(str(model_dir), "bench", Settings(home=home), force=True)
    # One torch thread in every process, the batch's client too: two cores, two peers.
    environment = peer_environment(os.environ, home=home)
    input_path = work / "prompts.jsonl"
    input_path.write_text("".join(json.dumps({"prompt": prompt(index)}) + "\n" for index in range(args.items)))
    blocks = f"0:{config['num_hidden_layers']}"
    peers = start_peers([["--model", "bench", "--blocks", blocks]] * 2, environment, work / "logs")
    rows: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    tokens: list[list[int]] | None = None
    try:
        routes = [peer.address.removeprefix("tcp://") for peer in peers]
        for attempt in range(args.repeat):
            for replicas in (1, 2):
                output = work / f"out-{replicas}-{attempt}.jsonl"
                output.unlink(missing_ok=True)
                before = [cpu_seconds(peer.process.pid) for peer in peers]
                summary = batch(input_path, output, routes[:replicas], args.new_tokens, environment)
                used = sum(cpu_seconds(peer.process.pid) for peer in peers) - sum(before)
                # The peers' CPU while the batch ran (they idle while its process starts and loads the model).
                summary["peer_cores"] = used / summary["seconds"]
                summary["per_core"] = summary["items_per_second"] / summary["peer_cores"]
                lines = [json.loads(line) for line in output.read_text().splitlines()]
                tokens = tokens or [line["tokens"] for line in lines]
                summary["identical"] = [line["tokens"] for line in lines] == tokens
                rows[replicas].append(summary)
                print(
                    f"{replicas} replica(s), run {attempt + 1}: {summary['items_per_second']:.2f} items/s", flush=True
                )
    finally:
        for peer in peers:
            peer.stop()
    return rows, {"layers": config["num_hidden_layers"], "hidden": config["hidden_size"]}


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system) a process used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prompt(index: int) -> str:
    return f"{WORDS[index % len(WORDS)].capitalize()} is better than {WORDS[index * 7 % len(WORDS)]}, item {index}"


def batch(input_path: Path, output: Path, routes: list[str], new_tokens: int, env: dict[str, str]) -> dict[str, Any]:
    """One `swarm batch --json` run; its `done` event."""
    command = [SWARM, "batch", "--model", "bench", "--input", str(input_path), "--output", str(output)]
    command += ["--max-new-tokens", str(new_tokens), "--ban-eos", "--json"]
    for route in routes:
        command += ["--route", route]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"swarm batch failed ({done.returncode}): {done.stderr[-2000:]}")
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    started, summary = events[0], events[-1]
    return dict(summary, concurrency=started["concurrency"])


def report(rows: dict[int, list[dict[str, Any]]], model: dict[str, Any], args: argparse.Namespace) -> None:
    def median(replicas: int, key: str) -> float:
        return statistics.median(float(row[key]) for row in rows[replicas])

    print(
        f"\nLlama of about {args.params} parameters ({model['layers']} blocks, hidden {model['hidden']}), float32, "
        f"{args.items} prompts x {args.new_tokens} new tokens (greedy, EOS banned), peers holding the whole model on "
        f"one torch thread each, medians of {args.repeat} interleaved runs, all on 127.0.0.1, "
        f"{os.cpu_count()} CPUs.\n"
    )
    print(f"Command: python tools/bench_batch.py {' '.join(sys.argv[1:])}".rstrip() + "\n")
    print(
        "| replicas | concurrency | items/s | tokens/s | items per replica (last run) | peers' CPU (cores) "
        "| items/s per peer core | speed-up |"
    )
    print("|---:|---:|---:|---:|---|---:|---:|---:|")
    for replicas in (1, 2):
        shares = "/".join(str(count) for count in rows[replicas][-1]["per_peer"].values())
        speedup = median(replicas, "items_per_second") / median(1, "items_per_second")
        print(
            f"| {replicas} | {rows[replicas][-1]['concurrency']} | {median(replicas, 'items_per_second'):.2f} "
            f"| {median(replicas, 'tokens_per_second'):.1f} | {shares} | {median(replicas, 'peer_cores'):.2f} "
            f"| {median(replicas, 'per_core'):.2f} | {speedup:.2f}x |"
        )
    print(f"\nLoad average at the end: {os.getloadavg()[0]:.2f} (other processes on the machine share its cores).")
    identical = all(row["identical"] for runs in rows.values() for row in runs)
    print(f"\nTokens identical in every run: {'yes' if identical else 'NO'}")
    print(json.dumps({str(replicas): runs for replicas, runs in rows.items()}))
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
