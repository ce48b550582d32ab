#!/usr/bin/env python3
"""Benchmark: the time a generation loses when a hop of its route is killed, for the first, the middle and the
last hop.

A generated Llama of --blocks blocks (tools/make_model.py) is served by real `swarm join` peers on 127.0.0.1, each
hosting one block, two per block to begin with; a killed peer is replaced by a fresh one in the background. Each
run generates --new-tokens greedy tokens along one peer per block and SIGKILLs the hop at one position from another
thread after 1 to 5 pieces of text, so the kill lands wherever the generation is at that moment. Runs go first,
middle, last, first, ... --kills times per position. The client knows a spare for the killed hop's block.

Per position the table gives the runs whose tokens equal an undisturbed run (itself checked against transformers'
`generate`), the runs whose one failover named the killed hop, and the seconds lost per failure: from the start of
the request the death broke until the step it belonged to came back from the new route (detection, re-planning,
a new session and the replay of every token so far), median and max; and the detection time alone. The request
timeout stays at its default (30 s): every failover here comes from liveness, not from it. The last line is JSON.

Usage: python tools/bench_failover.py [--kills 10] [--blocks 3] [--new-tokens 16] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from swarm.client.run import SwarmClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the kill-run harness lives with the tests that use it too

PROMPT = "Special cases aren't special enough to break the rules."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="kills per position (default 10)")
    parser.add_argument("--blocks", type=int, default=3, help="blocks of the generated model (default 3)")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens per generation (default 16)")
    parser.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    arguments = parser.parse_args()
    if arguments.blocks < 3 or arguments.kills < 1:
        parser.error("--blocks must be at least 3 (a first, a middle and a last hop) and --kills at least 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = arguments.work or Path(tempfile.mkdtemp(prefix="bench-failover-"))
    work.mkdir(parents=True, exist_ok=True)
    run(work, arguments.blocks, arguments.kills, arguments.new_tokens)


def run(work: Path, blocks: int, kills: int, new_tokens: int) -> None:
    from swarm.client.run import SwarmClient
    from swarm.config import Settings
    from swarm.publish import publish
    from tests.conftest import load_tool
    from tests.failover_harness import POSITIONS, ChainPool, kill_run, summarize, table
    from tests.peer_harness import peer_environment

    model_dir = Path(load_tool("make_model").make_model("llama", work / "model", layers=blocks, seed=1))
    home = work / "home"
    publish(str(model_dir), "bench", Settings(home=home), force=True)
    # Two peers per block, a replacement for each killed one but the last.
    replacements = dict.fromkeys(range(blocks), kills - 1)
    pool = ChainPool("bench", blocks, peer_environment(os.environ, home=home), home / "logs", replacements)
    for block in range(blocks):
        pool.start(block, count=2)
    started = time.monotonic()
    try:
        for block in range(blocks):
            pool.peers(block, 2)
        with SwarmClient.connect("bench", Settings(home=home), pool.addresses()) as client:
            reference = undisturbed_tokens(client, model_dir, new_tokens)
            runs = []
            for index in range(kills * len(POSITIONS)):
                position = POSITIONS[index % len(POSITIONS)]
                after = 1 + (index // len(POSITIONS)) % 5
                runs.append(kill_run(pool, client, PROMPT, new_tokens, position, after))
    finally:
        pool.close()
    rows = summarize(runs, reference)
    print(
        f"\nmodel: generated Llama, {blocks} blocks, one peer per block; {new_tokens} new tokens; {kills} kills per position"
    )
    print(table(rows))
    for row in rows:
        print(f"{row['position']}: seconds lost per failure {[round(value, 3) for value in row['lost_all']]}")
    print(f"wall seconds for the runs (peer restarts included): {time.monotonic() - started:.1f}")
    print(json.dumps({"blocks": blocks, "new_tokens": new_tokens, "kills_per_position": kills, "rows": rows}))


def undisturbed_tokens(client: SwarmClient, model_dir: Path, new_tokens: int) -> list[int]:
    """Tokens of a run nothing disturbs, checked against transformers' greedy `generate` on the same model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swarm.client.generate import SamplingParams

    tokens = client.generate(PROMPT, new_tokens, SamplingParams()).generation.token_ids
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = torch.tensor([AutoTokenizer.from_pretrained(model_dir).encode(PROMPT)])
    with torch.no_grad():
        expected = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=new_tokens
        )
    if tokens != expected[0, prompt.shape[1] :].tolist():
        raise SystemExit(f"the undisturbed swarm run {tokens} differs from transformers' generate")
    return tokens


if __name__ == "__main__":
    main()
