#!/usr/bin/env python3
"""Benchmark: `swarm serve` against direct swarm sessions, side by side, under 1, 4 and 16 concurrent clients.

One generated Llama (--params, default 24M) split over two `swarm join` peers on 127.0.0.1 (one torch thread
each). The same requests — a fixed prompt, --new-tokens greedy tokens with EOS ignored — go, at each level of
concurrency, (a) through `swarm serve` as streaming chat-less completions from OpenAI's Python client, one
thread per concurrent client, and (b) through a SwarmClient in this process (what `swarm run` does, without a
process start per request), interleaved level by level. Reported: requests/s and tokens/s of each, the ratio,
time to first token p50/p99, and the mean seconds one request takes in each (their difference is what the
server adds per request). Also the seconds one `swarm run` process takes for the same request, start to end.

Usage: python tools/bench_serve.py [--params 24M] [--new-tokens 32] [--requests-per-client 4] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import SWARM, load_make_model, start_peer

CONCURRENCY = (1, 4, 16)
PROMPT = "Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex."


@dataclass
class Request:
    seconds: float
    first_token_seconds: float
    tokens: int


@dataclass
class Level:
    """Every request of one setup at one level of concurrency, and the wall time they took together."""

    requests: list[Request] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def requests_per_second(self) -> float:
        return len(self.requests) / self.wall_seconds

    @property
    def tokens_per_second(self) -> float:
        return sum(request.tokens for request in self.requests) / self.wall_seconds

    def first_token(self, quantile: float) -> float:
        ordered = sorted(request.first_token_seconds for request in self.requests)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    @property
    def mean_seconds(self) -> float:
        return statistics.mean(request.seconds for request in self.requests)


def run_level(clients: int, per_client: int, one_request: Callable[[], Request]) -> Level:
    level = Level()
    lock = threading.Lock()

    def client() -> None:
        for _ in range(per_client):
            done = one_request()
            with lock:
                level.requests.append(done)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    level.wall_seconds = time.perf_counter() - started
    return level


def start_server(route: str, environment: dict[str, str], log: Path) -> tuple[subprocess.Popen[str], str]:
    command = [SWARM, "serve", "--model", "bench", "--route", route, "--listen", "127.0.0.1:0", "--json"]
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    assert process.stdout is not None
    for line in process.stdout:
        event = json.loads(line)
        if event.get("event") == "serving":
            return process, str(event["address"])
    raise SystemExit(f"swarm serve did not start; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="24M", help="model size for tools/make_model.py (default 24M)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--work", type=Path, help="working directory (kept; the model is reused when present)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import openai
    import torch
    from transformers.utils import logging as transformers_logging

    from swarm.client.generate import SamplingParams
    from swarm.client.run import SwarmClient
    from swarm.config import Settings
    from swarm.publish import publish

    torch.set_num_threads(1)
    transformers_logging.set_verbosity_error()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / f"llama-{args.params}"
    if not (model_dir / "config.json").is_file():
        load_make_model().make_model("llama", model_dir, params=args.params, seed=0, force=True)
    home = work / "home"
    settings = Settings(home=home)
    manifest = publish(str(model_dir), "bench", settings, force=True).manifest
    middle = manifest.num_blocks // 2
    environment = dict(os.environ, SWARM_HOME=str(home), SWARM_MAX_SESSIONS="32")
    started = [start_peer(blocks, environment, work / f"peer-{index}.log")
               for index, blocks in enumerate([f"0:{middle}", f"{middle}:{manifest.num_blocks}"])]  # fmt: skip
    processes = [process for process, _ in started]
    route = ",".join(address for _, address in started)
    direct = api = None
    try:
        server, url = start_server(route, environment, work / "serve.log")
        processes.append(server)
        direct = SwarmClient.connect("bench", settings, route.split(","))
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)
        prompt_ids = direct.encode(PROMPT)

        def direct_request() -> Request:
            begun = time.perf_counter()
            first: list[float] = []
            result = direct.generate(
                prompt_ids, args.new_tokens, SamplingParams(), ban_eos=True,
                on_text=lambda _piece: first.append(time.perf_counter()) if not first else None,
            )  # fmt: skip
            end = time.perf_counter()
            return Request(end - begun, (first[0] if first else end) - begun, len(result.generation.token_ids))

        def served_request() -> Request:
            begun = time.perf_counter()
            first = None
            tokens = 0
            stream = api.completions.create(
                model="bench", prompt=prompt_ids, max_tokens=args.new_tokens, temperature=0, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
            )  # fmt: skip
            for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].text:
                    first = time.perf_counter()
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            end = time.perf_counter()
            return Request(end - begun, (first or end) - begun, tokens)

        direct_request(), served_request()  # warm-up
        results: dict[int, tuple[Level, Level]] = {}
        for clients in CONCURRENCY:
            results[clients] = (
                run_level(clients, args.requests_per_client, direct_request),
                run_level(clients, args.requests_per_client, served_request),
            )
        run_seconds = time_swarm_run(route, args.new_tokens, environment)
    finally:
        if direct is not None:
            direct.close()
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
    report(results, run_seconds, manifest.num_blocks, args)


def time_swarm_run(route: str, new_tokens: int, environment: dict[str, str]) -> float:
    """Seconds one `swarm run` process takes for the same request, from start to exit."""
    begun = time.perf_counter()
    subprocess.run(
        [SWARM, "run", "--model", "bench", "--prompt", PROMPT, "--max-new-tokens", str(new_tokens), "--ban-eos",
         "--route", route, "--json"],
        env=environment, check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - begun


def report(results: dict[int, tuple[Level, Level]], run_seconds: float, blocks: int, args: argparse.Namespace) -> None:
    print(
        f"\nLlama {args.params} ({blocks} blocks) over 2 peers on 127.0.0.1, {args.new_tokens} new tokens per request "
        f"(EOS ignored), greedy, {args.requests_per_client} requests per client, CPUs "
        f"{','.join(map(str, sorted(os.sched_getaffinity(0))))}.\n"
    )
    print(
        "| clients | direct req/s | serve req/s | direct tokens/s | serve tokens/s | serve / direct | "
        "TTFT p50 direct / serve (ms) | TTFT p99 direct / serve (ms) | mean request direct / serve (ms) | added (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for clients, (direct, served) in results.items():
        print(
            f"| {clients} | {direct.requests_per_second:.2f} | {served.requests_per_second:.2f} | "
            f"{direct.tokens_per_second:.1f} | {served.tokens_per_second:.1f} | "
            f"{served.tokens_per_second / direct.tokens_per_second:.3f} | "
            f"{direct.first_token(0.5) * 1e3:.1f} / {served.first_token(0.5) * 1e3:.1f} | "
            f"{direct.first_token(0.99) * 1e3:.1f} / {served.first_token(0.99) * 1e3:.1f} | "
            f"{direct.mean_seconds * 1e3:.1f} / {served.mean_seconds * 1e3:.1f} | "
            f"{(served.mean_seconds - direct.mean_seconds) * 1e3:+.1f} |"
        )
    print(f"\nOne `swarm run` process for the same request, start to exit: {run_seconds:.2f} s.")


if __name__ == "__main__":
    main()
