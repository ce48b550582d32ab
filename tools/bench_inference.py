#!/usr/bin/env python3
"""Benchmark: token generation through the swarm against local transformers `generate`, side by side.

One generated Llama (about 100M parameters by default), one fixed prompt of --prompt-tokens tokens, greedy,
--new-tokens new tokens with EOS banned on both sides (transformers: suppress_tokens; swarm: --ban-eos), in
one run: local `generate`, the swarm through 1 peer (all blocks) and through 2 peers (half each), all on
127.0.0.1, interleaved --repeat times. Every process computes on --threads threads, so the comparison is of
the same work on the same cores. Prints a markdown table of medians, the added latency per hop and per token,
and whether every run produced the same tokens.

`--cpus 0` pins this process and every peer it starts to CPU 0. A message to a process whose virtual CPU sits
idle waits for the hypervisor to wake that CPU; on the project's 2-vCPU VM that wait costs milliseconds per hop
(see the README). On one CPU the hand-offs between client and peers are context switches on a CPU that never
idles, so the figures leave those wake-ups out; local `generate` runs on the same CPU.

`--busy-poll SECONDS` adds the same two swarm setups with peers started with that setting (`swarm join
--busy-poll`), interleaved with the others: after each step such a peer checks for the next one without sleeping
for that long, so no hop waits for an idle CPU to wake.

Usage: python tools/bench_inference.py [--params 100M] [--repeat 3] [--threads 1] [--cpus LIST] [--busy-poll S]
                                       [--work DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SWARM = str(Path(sys.executable).with_name("swarm"))
PEER_START_SECONDS = 300.0
LOOPBACK_LISTEN = ("--listen", "127.0.0.1:0", "--torrent-listen", "127.0.0.1:0")


def load_make_model() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_model", ROOT / "tools" / "make_model.py")
    if spec is None or spec.loader is None:
        raise ImportError("tools/make_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def published_bench_model(work: Path | None, params: str, prefix: str) -> tuple[Path, Path, Any]:
    """The working directory (a temporary one when `work` is None), a generated Llama of `params` in it (reused
    when present), and Settings whose home's catalog holds it published as "bench"."""
    from swarm.config import Settings
    from swarm.publish import publish

    work = work or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / f"llama-{params}"
    if not (model_dir / "config.json").is_file():
        load_make_model().make_model("llama", model_dir, params=params, seed=0, force=True)
    settings = Settings(home=work / "home")
    publish(str(model_dir), "bench", settings, force=True)
    return work, model_dir, settings


@dataclass
class Measurement:
    """One generation: wall seconds in all, seconds to the first token, seconds between later tokens."""

    tokens: list[int]
    total_seconds: float
    first_token_seconds: float
    step_seconds: list[float]


@dataclass
class Setup:
    name: str
    hops: int
    runs: list[Measurement] = field(default_factory=list)

    def median(self, pick: Any) -> float:
        return statistics.median(pick(run) for run in self.runs)

    @property
    def tokens_per_second(self) -> float:
        return self.median(lambda run: len(run.tokens) / run.total_seconds)

    @property
    def ms_per_token(self) -> float:
        return 1000 * self.median(lambda run: statistics.median(run.step_seconds))

    @property
    def prefill_ms(self) -> float:
        return 1000 * self.median(lambda run: run.first_token_seconds)


def parse_cpus(text: str) -> set[int]:
    """CPU numbers from a list such as `0`, `0,1` or `0-3`."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a CPU list such as 0 or 0,1 or 0-3") from None
    available = os.sched_getaffinity(0)
    if not cpus or not cpus <= available:
        raise argparse.ArgumentTypeError(f"CPUs {sorted(cpus)} are not all among this machine's {sorted(available)}")
    return cpus


def start_peer(
    blocks: str | None, environment: dict[str, str], log: Path, prefix: tuple[str, ...] = (), model: str = "bench"
) -> tuple[subprocess.Popen[str], str]:
    """A `swarm join` process serving `blocks` of `model` (None: what it chooses; run after `prefix`, e.g. `ip netns
    exec NS`), and its compute address once it says it is serving."""
    chosen = ["--blocks", blocks] if blocks is not None else []
    process = subprocess.Popen(
        [*prefix, SWARM, "join", "--model", model, *chosen, *LOOPBACK_LISTEN, "--json"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + PEER_START_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        if selector.select(timeout=0.5):
            line = process.stdout.readline()
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == "serving":
                    return process, str(event["address"])
    process.kill()
    raise SystemExit(f"peer for blocks {blocks} did not start; see {log}:\n{log.read_text()[-2000:]}")


def stop_peers(processes: list[subprocess.Popen[str]]) -> None:
    """SIGTERM every peer, then wait for each (they save resume data and close their sessions)."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="100M", help="model size for tools/make_model.py (default 100M)")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each setup; medians are reported")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every process (default 1)")
    parser.add_argument("--work", type=Path, help="working directory (kept; the model is reused when present)")
    parser.add_argument(
        "--cpus", type=parse_cpus, help="pin this process and the peers it starts to these CPUs, e.g. 0 or 0,1 or 0-3"
    )
    parser.add_argument(
        "--busy-poll", type=float, default=0.0, help="also run peers with this --busy-poll, side by side (default: no)"
    )
    args = parser.parse_args()
    if args.cpus is not None:
        # Child processes inherit the affinity, so the peers started below run on the same CPUs.
        os.sched_setaffinity(0, args.cpus)

    # Every process, this one included, computes on the same number of threads.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList
    from transformers.utils import logging as transformers_logging

    from swarm.client.generate import SamplingParams
    from swarm.client.run import SwarmClient

    torch.set_num_threads(args.threads)
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()

    work, model_dir, settings = published_bench_model(args.work, args.params, "bench-inference-")
    home = settings.home

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    config = model.config
    layers = int(config.num_hidden_layers)
    parameters = model.num_parameters()
    eos = model.generation_config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    # A fixed prompt of exactly --prompt-tokens ids (no tokenizer involved, so its length cannot drift).
    prompt = torch.randint(
        0, int(config.vocab_size), (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0)
    )

    class StepClock(LogitsProcessor):
        """Records when each new token's logits are ready (called once per generated token)."""

        def __init__(self) -> None:
            self.stamps: list[float] = []

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            self.stamps.append(time.perf_counter())
            return scores

    def run_local() -> Measurement:
        clock = StepClock()
        started = time.perf_counter()
        with torch.no_grad():
            output = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=False,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                suppress_tokens=eos_ids,
                logits_processor=LogitsProcessorList([clock]),
            )
        total = time.perf_counter() - started
        steps = [later - earlier for earlier, later in zip(clock.stamps, clock.stamps[1:], strict=False)]
        return Measurement(output[0, args.prompt_tokens :].tolist(), total, clock.stamps[0] - started, steps)

    def run_swarm(client: SwarmClient) -> Measurement:
        started = time.perf_counter()
        result = client.generate(prompt[0].tolist(), args.new_tokens, SamplingParams(), ban_eos=True)
        total = time.perf_counter() - started
        generation = result.generation
        return Measurement(generation.token_ids, total, generation.prefill_seconds, generation.token_seconds)

    middle = layers // 2
    # Peer sets by busy-poll seconds: plain peers always, busy-polling ones too when asked for, run side by side.
    busy_polls = [0.0] + ([args.busy_poll] if args.busy_poll > 0 else [])
    peers: list[subprocess.Popen[str]] = []
    setups = {"local": Setup("local transformers generate", 0)}
    routes: dict[str, SwarmClient] = {}
    try:
        for busy_poll in busy_polls:
            environment = dict(os.environ, SWARM_HOME=str(home), SWARM_BUSY_POLL=str(busy_poll))
            suffix = f", busy poll {busy_poll:g} s" if busy_poll else ""
            started = [start_peer(blocks, environment, work / f"peer-{len(peers) + index}.log") for index, blocks in
                       enumerate([f"0:{layers}", f"0:{middle}", f"{middle}:{layers}"])]  # fmt: skip
            peers += [process for process, _ in started]
            addresses = [address for _, address in started]
            for key, hops, chosen in (("one", 1, addresses[:1]), ("two", 2, addresses[1:])):
                name = f"{key}{suffix}"
                setups[name] = Setup(f"swarm, {hops} peer{'s' if hops > 1 else ''}{suffix}", hops)
                routes[name] = SwarmClient.connect("bench", settings, chosen)
        run_local()  # warm-up: first calls allocate and tune kernels
        for client in routes.values():
            run_swarm(client)
        for _ in range(args.repeat):
            setups["local"].runs.append(run_local())
            for name, client in routes.items():
                setups[name].runs.append(run_swarm(client))
    finally:
        for client in routes.values():
            client.close()
        stop_peers(peers)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)

    reference = setups["local"].runs[0].tokens
    identical = all(run.tokens == reference for setup in setups.values() for run in setup.runs)
    local = setups["local"]
    print(
        f"\nLlama, {parameters / 1e6:.0f}M parameters ({layers} blocks, hidden {config.hidden_size}), float32, "
        f"prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens (EOS banned), greedy, "
        f"{args.threads} torch thread(s) per process, medians of {args.repeat} runs, all on 127.0.0.1, "
        f"CPUs {','.join(map(str, sorted(os.sched_getaffinity(0))))}.\n"
    )
    print(f"Command: python tools/bench_inference.py {' '.join(sys.argv[1:])}".rstrip() + "\n")
    print("| setup | tokens/s (end to end) | vs local | ms per token (decode, median) | first token ms |")
    print("|---|---:|---:|---:|---:|")
    for setup in setups.values():
        print(
            f"| {setup.name} | {setup.tokens_per_second:.1f} | {setup.tokens_per_second / local.tokens_per_second:.2f} "
            f"| {setup.ms_per_token:.1f} | {setup.prefill_ms:.1f} |"
        )
    print()
    for busy_poll in busy_polls:
        suffix = f", busy poll {busy_poll:g} s" if busy_poll else ""
        one, two = setups[f"one{suffix}"], setups[f"two{suffix}"]
        print(
            f"Peers{suffix or ' sleeping between steps'}: added per token, local -> swarm with 1 peer: "
            f"{one.ms_per_token - local.ms_per_token:+.1f} ms (client embed/head, two socket trips, serialisation); "
            f"added per extra hop (1 -> 2 peers): {two.ms_per_token - one.ms_per_token:+.1f} ms."
        )
    print(
        f"Tokens identical across all {sum(len(s.runs) for s in setups.values())} runs: {'yes' if identical else 'NO'}"
    )
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
