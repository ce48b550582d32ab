#!/usr/bin/env python3
"""Benchmark: speculative decoding (`swarm run --draft`) against plain decoding over links with latency, side by
side in one run.

Everything runs inside one network namespace of its own whose loopback delays every packet by --delay (tc netem),
so each message between two processes (client to first peer, peer to peer, last peer to client) takes that long
one way: a chain of two peers costs three such trips per step. One generated Llama (--params, default 100M) is
served by a chain of two `swarm join` peers (half the blocks each); `swarm run --route A,B --json --ban-eos` is
timed with its own decode timings (tokens/s after the first token), greedy, interleaved --repeat times:
- plain: no draft;
- each draft of --drafts: `self` (the model itself: every drafted token is accepted, the upper bound), `early`
  (the model's first block with its embeddings and head, a 1-block early-exit draft) and `other` (an unrelated
  1-block model with the same tokenizer: nearly nothing accepted, the cost of a useless draft).
Random weights give no trained draft, so the model's blocks after the first are damped (their output projections
scaled by --damping) to make the early-exit draft agree often, as a trained small model does; the acceptance
rate of every setup is printed next to its speed. Every run's tokens must equal the plain run's.

Needs root (ip netns, tc). Usage: python tools/bench_speculative.py [--params 100M] [--delay 20ms] [--repeat 3]
                                  [--new-tokens 64] [--drafts self,early,other] [--work DIR]
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
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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


def namespace_with_delay(delay: str) -> str:
    name = f"swarm-spec-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    inside = ["ip", "netns", "exec", name]
    subprocess.run([*inside, "ip", "link", "set", "lo", "up"], check=True)
    subprocess.run([*inside, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", delay], check=True)
    return name


def run_once(namespace: str, environment: dict[str, str], route: str, draft: Path | None, tokens: int) -> Any:
    command = ["ip", "netns", "exec", namespace, SWARM, "run", "--model", "bench", "--prompt", PROMPT,
               "--max-new-tokens", str(tokens), "--ban-eos", "--route", route, "--json"]  # fmt: skip
    if draft is not None:
        command += ["--draft", str(draft)]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"swarm run failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="100M", help="model size for tools/make_model.py (default 100M)")
    parser.add_argument("--delay", default="20ms", help="one-way delay of every message (tc netem; default 20ms)")
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
    namespace = namespace_with_delay(args.delay)
    prefix = ("ip", "netns", "exec", namespace)
    layers = json.loads((target / "config.json").read_text())["num_hidden_layers"]
    peers = []
    try:
        for index, blocks in enumerate([f"0:{layers // 2}", f"{layers // 2}:{layers}"]):
            peers.append(start_peer(blocks, environment, work / f"peer-{index}.log", prefix))
        route = ",".join(address for _, address in peers)
        for _ in range(args.repeat):
            for setup in setups:
                record = run_once(namespace, environment, route, setup.draft, args.new_tokens)
                setup.rates.append(record["timings"]["tokens_per_second"])
                setup.tokens.append(record["tokens"])
                setup.acceptance.append((record.get("speculation") or {}).get("acceptance") or 0.0)
    finally:
        stop_peers([process for process, _ in peers])
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    report(args, setups, layers)


def report(args: argparse.Namespace, setups: list[Setup], layers: int) -> None:
    plain = statistics.median(setups[0].rates)
    reference = setups[0].tokens[0]
    identical = all(tokens == reference for setup in setups for tokens in setup.tokens)
    print(
        f"\nLlama {args.params} ({layers} blocks; blocks 1.. damped x{args.damping}), a chain of 2 peers, one-way delay "
        f"{args.delay} per message (3 per step), {args.new_tokens} new tokens (EOS banned), greedy, one torch thread "
        f"per process, medians of {args.repeat} runs.\n"
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
