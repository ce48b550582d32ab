#!/usr/bin/env python3
"""Benchmark: what trust costs, side by side in one run: encryption (CurveZMQ, on by default; a private swarm's)
and checking peers' outputs (--verify), against the same generation in plaintext.

One generated Llama (about 100M parameters by default), a fixed prompt of --prompt-tokens token ids, greedy,
--new-tokens new tokens with EOS banned, all on 127.0.0.1, one torch thread per process. Peers: two chains of two
peers with the default settings (the second chain is what a check asks for its opinion), one chain of two peers
run with SWARM_ENCRYPT=0, and one of a private swarm (`--swarm-secret`). Setups, interleaved --repeat times:
- public swarm (the default, CurveZMQ): a client that knows the four default peers;
- plaintext: a client with encryption off through the plaintext chain;
- private: a member client through the private chain;
- verify F: the default client with --verify F (default 0.05).
For each: tokens/s and the CPU seconds all eight peers spent per generated token (user + system, from /proc), which
is the compute a setup costs the swarm whatever else runs on the machine. Prints a markdown table and whether every
run gave the tokens of local transformers `generate`.

Usage: python tools/bench_trust.py [--params 100M] [--repeat 5] [--verify 0.05] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.bench_inference import load_make_model, start_peer, stop_peers  # noqa: E402


@dataclass
class Setup:
    name: str
    peers: list[subprocess.Popen[str]]
    generate: Callable[[], Any]
    tokens_per_second: list[float] = field(default_factory=list)
    cpu_per_token: list[float] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)
    # Steps checked by other peers (--verify), over all runs.
    checked: int = 0


def cpu_seconds(pid: int) -> float:
    """User + system seconds of every thread of a process so far (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(setup: Setup, every_peer: list[subprocess.Popen[str]]) -> None:
    before = sum(cpu_seconds(process.pid) for process in every_peer)
    started = time.perf_counter()
    result = setup.generate()
    seconds = time.perf_counter() - started
    tokens = list(result.generation.token_ids)
    setup.checked += int((result.verification or {}).get("checked", 0))
    spent = sum(cpu_seconds(process.pid) for process in every_peer) - before
    setup.tokens.append(tokens)
    setup.tokens_per_second.append(len(tokens) / seconds)
    setup.cpu_per_token.append(spent / len(tokens))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="100M", help="model size for tools/make_model.py (default 100M)")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each setup, interleaved")
    parser.add_argument("--verify", type=float, default=0.05, help="the fraction of steps checked (default 0.05)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-trust"))
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run(args)


def run(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from swarm import transport
    from swarm.client.generate import SamplingParams
    from swarm.client.run import SwarmClient
    from swarm.config import Settings
    from swarm.publish import publish
    from swarm.transport.keys import SwarmKeys, secret_from_file

    torch.set_num_threads(1)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / f"llama-{args.params}"
    if not (model_dir / "config.json").is_file():
        load_make_model().make_model("llama", model_dir, params=args.params, seed=0, force=True)
    settings = Settings(home=work / "home")
    publish(str(model_dir), "bench", settings, force=True)
    secret = work / "swarm.secret"
    secret.write_text("a benchmark's private swarm secret, long enough\n")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    layers = int(model.config.num_hidden_layers)
    prompt = torch.randint(
        0, int(model.config.vocab_size), (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0)
    )
    eos = model.generation_config.eos_token_id
    with torch.no_grad():
        local = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                               max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                               suppress_tokens=[eos] if isinstance(eos, int) else list(eos or []))  # fmt: skip
    expected = local[0, args.prompt_tokens :].tolist()
    del model

    plain_env = dict(os.environ, SWARM_HOME=str(settings.home))
    private_env = dict(plain_env, SWARM_SECRET_FILE=str(secret))
    clear_env = dict(plain_env, SWARM_ENCRYPT="0")
    half = layers // 2
    spans = [f"0:{half}", f"{half}:{layers}"]
    started: list[tuple[subprocess.Popen[str], str]] = []
    clients: list[Any] = []
    try:
        chains = (("a", plain_env), ("b", plain_env), ("plaintext", clear_env), ("private", private_env))
        for chain, environment in chains:
            for span in spans:
                started.append(start_peer(span, environment, work / f"peer-{chain}-{span.replace(':', '-')}.log"))
        addresses = [address for _, address in started]
        plain = SwarmClient.connect("bench", settings, addresses[:4])
        verifying = SwarmClient.connect("bench", Settings(home=settings.home, verify_fraction=args.verify),
                                        addresses[:4])  # fmt: skip
        transport.use_swarm_keys(None)
        clear = SwarmClient.connect("bench", settings, addresses[4:6])
        transport.use_swarm_keys(secret_from_file(str(secret)))
        member = SwarmClient.connect("bench", settings, addresses[6:])
        transport.use_swarm_keys(SwarmKeys.public())
        clients = [plain, verifying, clear, member]

        def generator(client: Any) -> Callable[[], Any]:
            return lambda: client.generate(prompt[0].tolist(), args.new_tokens, SamplingParams(), ban_eos=True)

        every_peer = [process for process, _ in started]
        setups = [
            # Every setup counts every peer: those a setup leaves idle still spend a little (heartbeats, their loop),
            # and counting only some would charge that to the setups that use more peers.
            Setup("public swarm (default: CurveZMQ)", every_peer, generator(plain)),
            Setup("plaintext (SWARM_ENCRYPT=0)", every_peer, generator(clear)),
            Setup("private swarm (CurveZMQ)", every_peer, generator(member)),
            Setup(f"public swarm, --verify {args.verify:g}", every_peer, generator(verifying)),
        ]
        for setup in setups:
            setup.generate()  # warm-up
        for _ in range(args.repeat):
            for setup in setups:
                measure(setup, setup.peers)
    finally:
        for client in clients:
            client.close()
        stop_peers([process for process, _ in started])
    report(args, setups, expected)


def report(args: argparse.Namespace, setups: list[Setup], expected: list[int]) -> None:
    plain = setups[0]
    base_rate = statistics.median(plain.tokens_per_second)
    base_cpu = sum(plain.cpu_per_token) / len(plain.cpu_per_token)
    print(f"\nLlama {args.params}, prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens (EOS banned), greedy, "
          f"2 peers per chain on 127.0.0.1, one torch thread each, {args.repeat} interleaved runs per setup\n")  # fmt: skip
    print("| setup | tokens/s (median) | vs default | peers' CPU ms per token (mean) | vs default | steps checked |")
    print("|---|---:|---:|---:|---:|---:|")
    for setup in setups:
        rate = statistics.median(setup.tokens_per_second)
        cpu = sum(setup.cpu_per_token) / len(setup.cpu_per_token)
        print(f"| {setup.name} | {rate:.1f} | {rate / base_rate - 1:+.1%} | {1000 * cpu:.1f} | {cpu / base_cpu - 1:+.1%} "
              f"| {setup.checked} of {len(setup.tokens) * args.new_tokens} |")  # fmt: skip
    checking = setups[-1]
    if checking.checked:
        # How many steps a run checks is random: the cost per check, scaled to exactly the asked fraction, is the
        # figure that does not depend on the draw.
        steps = len(checking.tokens) * args.new_tokens
        extra = (sum(checking.cpu_per_token) / len(checking.cpu_per_token) - base_cpu) * steps / checking.checked
        print(f"\n--verify {args.verify:g}: {1000 * extra:.0f} peer CPU ms per check; at exactly {args.verify:g} of the steps "
              f"checked, {extra * args.verify / base_cpu:+.1%} compute against the default")  # fmt: skip
    identical = all(tokens == expected for setup in setups for tokens in setup.tokens)
    print(f"\nTokens equal local transformers generate in every run: {'yes' if identical else 'NO'}")
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
