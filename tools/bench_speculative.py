#!/usr/bin/env python3
"""Benchmark: speculative decoding (`swarm run --draft`) against plain decoding over links with latency, side by
side in one run.

Every peer is reached through a delaying TCP proxy run by this tool (this machine's kernel has no tc netem): bytes
are passed on --delay after they arrive, in both directions, so each message to a peer (client to the first peer,
first peer to the second) takes that much longer one way; the last peer's result travels to the client's reply
socket directly, so a step through a chain of two peers pays two delays, not three. One generated Llama (--params,
default 100M) is served by a chain of two `swarm join` peers (half the blocks each) on 127.0.0.1; `swarm run
--route A,B --json --ban-eos` (A and B: the proxies) is timed with its own decode timings (tokens/s after the first
token), greedy, interleaved --repeat times:
- plain: no draft;
- each draft of --drafts: `self` (the model itself: every drafted token is accepted, the upper bound), `early`
  (the model's first block with its embeddings and head, a 1-block early-exit draft) and `other` (an unrelated
  1-block model with the same tokenizer: nearly nothing accepted, the cost of a useless draft).
Random weights give no trained draft, so the model's blocks after the first are damped (their output projections
scaled by --damping) to make the early-exit draft agree often, as a trained small model does; the acceptance
rate of every setup is printed next to its speed. Every run's tokens must equal the plain run's.

Usage: python tools/bench_speculative.py [--params 100M] [--delay-ms 20] [--repeat 3] [--new-tokens 64]
                                         [--drafts self,early,other] [--work DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from swarm.address import Address  # noqa: E402
from tools.bench_inference import SWARM, load_make_model, start_peer, stop_peers  # noqa: E402

PROMPT = "The swarm moves weights over BitTorrent and activations over ZeroMQ, peer to peer, while"


@dataclass
class Setup:
    name: str
    draft: Path | None
    rates: list[float] = field(default_factory=list)
    acceptance: list[float] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)


def make_models(work: Path, params: str, damping: float) -> tuple[Path, dict[str, Path]]:
    """The damped target, and the drafts by name."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target_dir, early_dir, other_dir = work / f"llama-{params}-damped", work / "draft-early", work / "draft-other"
    if not (target_dir / "config.json").is_file():
        plain = load_make_model().make_model("llama", work / f"llama-{params}", params=params, seed=0, force=True)
        model = AutoModelForCausalLM.from_pretrained(plain, dtype=torch.float32)
        with torch.no_grad():
            for layer in model.model.layers[1:]:
                layer.self_attn.o_proj.weight.mul_(damping)
                layer.mlp.down_proj.weight.mul_(damping)
        model.save_pretrained(target_dir)
        AutoTokenizer.from_pretrained(plain).save_pretrained(target_dir)
        model.config.num_hidden_layers = 1
        model.model.layers = model.model.layers[:1]
        model.save_pretrained(early_dir)
        AutoTokenizer.from_pretrained(plain).save_pretrained(early_dir)
        load_make_model().make_model("llama", other_dir, layers=1, hidden=256, seed=9, force=True)
        AutoTokenizer.from_pretrained(plain).save_pretrained(other_dir)
    return target_dir, {"self": target_dir, "early": early_dir, "other": other_dir}


class DelayingProxy:
    """Listens on 127.0.0.1 and passes each connection's bytes to `upstream` and back, each chunk `delay` seconds
    after it arrived (order kept), on an event loop in a thread of its own."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.upstream, self.delay = upstream, delay
        self.loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        self.port = ready.result(timeout=10)

    def _serve(self, ready: concurrent.futures.Future[int]) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._connect, "127.0.0.1", 0))
        ready.set_result(server.sockets[0].getsockname()[1])
        self.loop.run_forever()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        while data := await reader.read(1 << 16):
            queue.put_nowait((time.monotonic() + self.delay, data))
        queue.put_nowait((time.monotonic() + self.delay, b""))
        await sender


def run_once(environment: dict[str, str], route: str, draft: Path | None, tokens: int) -> Any:
    command = [SWARM, "run", "--model", "bench", "--prompt", PROMPT, "--max-new-tokens", str(tokens), "--ban-eos",
               "--route", route, "--json"]  # fmt: skip
    if draft is not None:
        command += ["--draft", str(draft)]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"swarm run failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="100M", help="model size for tools/make_model.py (default 100M)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay of every message to a peer")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each setup, interleaved; medians reported")
    parser.add_argument("--drafts", default="self,early,other", help="drafts to compare (self, early, other)")
    parser.add_argument("--damping", type=float, default=0.05, help="scale of blocks 1.. output projections")
    parser.add_argument("--work", type=Path, help="working directory (kept; models are reused when present)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from swarm.config import Settings
    from swarm.publish import publish

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-speculative-"))
    work.mkdir(parents=True, exist_ok=True)
    target, drafts = make_models(work, args.params, args.damping)
    home = work / "home"
    publish(str(target), "bench", Settings(home=home), force=True)
    environment = dict(os.environ, SWARM_HOME=str(home))
    setups = [Setup("plain", None)] + [Setup(f"--draft {name}", drafts[name]) for name in args.drafts.split(",")]
    layers = json.loads((target / "config.json").read_text())["num_hidden_layers"]
    peers = []
    try:
        for index, blocks in enumerate([f"0:{layers // 2}", f"{layers // 2}:{layers}"]):
            peers.append(start_peer(blocks, environment, work / f"peer-{index}.log"))
        proxies = [DelayingProxy(Address.parse(address).pair, args.delay_ms / 1000) for _, address in peers]
        route = ",".join(f"127.0.0.1:{proxy.port}" for proxy in proxies)
        for _ in range(args.repeat):
            for setup in setups:
                record = run_once(environment, route, setup.draft, args.new_tokens)
                setup.rates.append(record["timings"]["tokens_per_second"])
                setup.tokens.append(record["tokens"])
                setup.acceptance.append((record.get("speculation") or {}).get("acceptance") or 0.0)
    finally:
        stop_peers([process for process, _ in peers])
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    report(args, setups, layers)


def report(args: argparse.Namespace, setups: list[Setup], layers: int) -> None:
    plain = statistics.median(setups[0].rates)
    reference = setups[0].tokens[0]
    identical = all(tokens == reference for setup in setups for tokens in setup.tokens)
    print(
        f"\nLlama {args.params} ({layers} blocks; blocks 1.. damped x{args.damping}), a chain of 2 peers, {args.delay_ms:g} "
        f"ms one way on each link to a peer (2 per step), {args.new_tokens} new tokens (EOS banned), greedy, one torch "
        f"thread per process, medians of {args.repeat} runs.\n"
    )
    print(f"Command: python tools/bench_speculative.py {' '.join(sys.argv[1:])}".rstrip() + "\n")
    print("| setup | decode tokens/s | vs plain | drafted tokens accepted |")
    print("|---|---:|---:|---:|")
    for setup in setups:
        rate = statistics.median(setup.rates)
        accepted = f"{statistics.median(setup.acceptance):.0%}" if setup.draft is not None else "-"
        print(f"| {setup.name} | {rate:.1f} | {rate / plain:.2f} | {accepted} |")
    print(f"\nTokens identical across all {sum(len(s.tokens) for s in setups)} runs: {'yes' if identical else 'NO'}")
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
