#!/usr/bin/env python3
"""Benchmark: concurrent sessions through a chain of two peers, with cross-session batching (the default) and
without it (peers started with SWARM_MAX_STEP_BATCH=1), side by side in one run.

One generated Llama (--params, default 100M), two chains of two `swarm join` peers (half the blocks each) on
127.0.0.1, one torch thread per process. For each count of --sessions (default 1,4,8,16), that many generations
start at once from one client process (threads), each with its own prompt of 8 to 8 + count tokens and
--new-tokens new tokens with EOS banned, greedy; interleaved --repeat times, medians reported: the aggregate
tokens/s (all generated tokens over the wall time of the whole set) and each session's median ms per token
(its latency), against one session alone on the same chain. Every session's tokens must equal the ones it gets
alone.

Then, in this process, what one peer's batched decode step costs: the first peer's blocks loaded as that peer
loads them, --sessions sessions of ~30 cached tokens each stepping one token together (Span.forward_together),
CPU time of this thread, median of 10 steps: the cost per batch size that bounds per-session latency.

Usage: python tools/bench_batching.py [--params 100M] [--sessions 1,4,8,16] [--new-tokens 32] [--repeat 3]
                                      [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.bench_inference import published_bench_model, start_peer, stop_peers  # noqa: E402


@dataclass
class Cell:
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


def run_set(client: Any, prompts: list[list[int]], tokens: int) -> tuple[float, float, list[list[int]]]:
    """Aggregate tokens/s, median of the sessions' median seconds per token, and each session's tokens."""
    from swarm.client.generate import SamplingParams

    results: list[Any] = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def run(index: int) -> None:
        barrier.wait()
        results[index] = client.generate(prompts[index], tokens, SamplingParams(), ban_eos=True)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(prompts))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if any(result is None for result in results):
        raise SystemExit("a session failed; see the peers' logs")
    latency = statistics.median(result.generation.median_token_seconds for result in results)
    return len(prompts) * tokens / wall, latency, [result.generation.token_ids for result in results]


def step_costs(settings: Any, layers: int, counts: list[int]) -> dict[int, float]:
    """Seconds of this thread's CPU per batched decode step of the first peer's blocks, per session count."""
    import torch

    from swarm.catalog import manifest_path
    from swarm.distribute import chunks_for_blocks
    from swarm.manifest import load_manifest
    from swarm.peer.runner import SpanRunner

    manifest = load_manifest(manifest_path(settings.catalog, "bench"))
    blocks = (0, layers // 2)
    chosen = chunks_for_blocks(manifest, blocks[0], blocks[1])  # as the joining peer picks them
    files = [settings.models_dir() / chunk.file for chunk in chosen if chunk.kind == "blocks"]
    runner = SpanRunner(manifest, blocks[0], blocks[1], files, "cpu", torch.float32)
    costs = {}
    for count in counts:
        lengths = [30 + index for index in range(count)]
        caches = [runner.new_cache() for _ in lengths]
        for cache, length in zip(caches, lengths, strict=True):
            runner.run(blocks, torch.randn(1, length, runner.hidden_size), cache, (0, length))
        seconds = []
        for _ in range(12):  # the first two warm up
            hidden = [torch.randn(1, 1, runner.hidden_size) for _ in lengths]
            started = time.thread_time()
            runner.run_together(blocks, hidden, caches, lengths)
            seconds.append(time.thread_time() - started)
            lengths = [length + 1 for length in lengths]
        costs[count] = statistics.median(seconds[2:])
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="100M", help="model size for tools/make_model.py (default 100M)")
    parser.add_argument("--sessions", default="1,4,8,16", help="concurrent session counts (default 1,4,8,16)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, help="working directory (kept; the model is reused when present)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from swarm.client.run import SwarmClient

    torch.set_num_threads(1)
    work, model_dir, settings = published_bench_model(args.work, args.params, "bench-batching-")
    home = settings.home
    config = (model_dir / "config.json").read_text()
    layers = int(__import__("json").loads(config)["num_hidden_layers"])
    counts = [int(item) for item in args.sessions.split(",")]
    vocab = int(__import__("json").loads(config)["vocab_size"])
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, vocab, (8 + index,), generator=generator).tolist() for index in range(max(counts))]
    setups = {"batched": "16", "one step at a time": "1"}
    peers: list[Any] = []
    clients: dict[str, Any] = {}
    cells: dict[tuple[str, int], Cell] = {}
    try:
        for name, batch in setups.items():
            environment = dict(os.environ, SWARM_HOME=str(home), SWARM_MAX_STEP_BATCH=batch,
                               SWARM_MAX_SESSIONS=str(max(counts)))  # fmt: skip
            started = [start_peer(blocks, environment, work / f"peer-{name[:3]}-{index}.log")
                       for index, blocks in enumerate([f"0:{layers // 2}", f"{layers // 2}:{layers}"])]  # fmt: skip
            peers += [process for process, _ in started]
            clients[name] = SwarmClient.connect("bench", settings, [address for _, address in started])
        alone = {name: [run_set(client, [prompt], args.new_tokens)[2][0] for prompt in prompts]
                 for name, client in clients.items()}  # fmt: skip
        identical = alone["batched"] == alone["one step at a time"]
        for _ in range(args.repeat):
            for count in counts:
                for name, client in clients.items():
                    rate, latency, tokens = run_set(client, prompts[:count], args.new_tokens)
                    identical = identical and tokens == alone[name][:count]
                    cell = cells.setdefault((name, count), Cell())
                    cell.rates.append(rate)
                    cell.latencies.append(latency)
    finally:
        for client in clients.values():
            client.close()
        stop_peers(peers)
    report(args, counts, setups, cells, identical, step_costs(settings, layers, counts))


def report(
    args: argparse.Namespace,
    counts: list[int],
    setups: dict[str, str],
    cells: dict[Any, Cell],
    same: bool,
    costs: dict[int, float],
) -> None:
    print(
        f"\nLlama {args.params}, a chain of 2 peers on 127.0.0.1, {args.new_tokens} new tokens per session (EOS banned), "
        f"greedy, one torch thread per process, medians of {args.repeat} runs.\n"
    )
    print(f"Command: python tools/bench_batching.py {' '.join(sys.argv[1:])}".rstrip() + "\n")
    print("| peers | sessions | aggregate tokens/s | vs 1 session | ms per token per session | vs 1 session |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in setups:
        one = cells[(name, counts[0])]
        base_rate, base_latency = statistics.median(one.rates), statistics.median(one.latencies)
        for count in counts:
            cell = cells[(name, count)]
            rate, latency = statistics.median(cell.rates), statistics.median(cell.latencies)
            print(f"| {name} | {count} | {rate:.1f} | {rate / base_rate:.2f} | {1000 * latency:.1f} | "
                  f"{latency / base_latency:.2f} |")  # fmt: skip
    print("\n| sessions in one batched step | first peer's step ms (CPU) | vs 1 session |\n|---:|---:|---:|")
    for count, seconds in costs.items():
        print(f"| {count} | {1000 * seconds:.1f} | {seconds / costs[counts[0]]:.2f} |")
    print(f"\nEvery session's tokens equal its tokens alone, on both chains: {'yes' if same else 'NO'}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
