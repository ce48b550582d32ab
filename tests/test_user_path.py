"""The README's path, typed as a user types it, on one machine with every default: a publisher prepares the
catalog, a seedbox seeds it on a port of its own, a peer joins knowing only the seedbox's address, and a client
runs a prompt knowing only that address too, as do `swarm batch` and `swarm serve` (asked with OpenAI's client). No --listen, no --peer, no --route, no dedicated DHT node: the
commands are the README's, apart from the seedbox's port and each command's SWARM_HOME.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import time
from pathlib import Path
from types import ModuleType

import openai
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import SWARM
from tests.peer_harness import peer_environment
from tests.test_dht import LineProcess
from tests.test_interop import free_port

PROMPT = "hi"
# `swarm run`'s default --max-new-tokens.
NEW_TOKENS = 64


def test_seed_seedbox_join_run_as_the_readme_shows(make_model_tool: ModuleType, tmp_path: Path) -> None:
    model_dir = make_model_tool.make_model("llama", tmp_path / "m", layers=4, seed=5, log=lambda _line: None)
    publisher = peer_environment(os.environ, home=tmp_path / "publisher")
    seeded = subprocess.run(
        [SWARM, "seed", str(model_dir), "--name", "demo", "--prepare-only"],
        env=publisher, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert seeded.returncode == 0, seeded.stderr
    assert (tmp_path / "publisher" / "torrents" / "demo.record").is_file()

    bootstrap = f"127.0.0.1:{free_port()}"
    seedbox = LineProcess([SWARM, "seedbox", "--listen", bootstrap], publisher)
    joiner = server = None
    try:
        # The seedbox prints one line per event; it seeds once it has checked the publisher's files.
        wait_line(seedbox, "seeding demo", refuse=("refused", "not findable"))
        joiner = LineProcess([SWARM, "join", "--model", "demo", "--bootstrap", bootstrap], home(tmp_path, "joiner"))
        assert wait_line(joiner, "serving ", timeout=120).startswith("serving blocks 0:4 of demo on tcp://")
        run = run_prompt(tmp_path, bootstrap)
        draft = make_model_tool.make_model("llama", tmp_path / "draft", layers=1, seed=6, log=lambda _line: None)
        drafted = run_prompt(tmp_path, bootstrap, "--draft", str(draft))
        # `--verify` as a user types it; with one peer no other can check it, and the answer is the same.
        verified = run_prompt(tmp_path, bootstrap, "--verify", "0.5")
        batch = run_batch(tmp_path, bootstrap)
        server = LineProcess([SWARM, "serve", "--model", "demo", "--bootstrap", bootstrap], home(tmp_path, "server"))
        assert wait_line(server, "serving ", timeout=120) == (
            "serving demo (1 peers) at http://127.0.0.1:8000/v1; chat page at http://127.0.0.1:8000/\n"
        )
        api = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none", max_retries=0, timeout=120)
        served = api.completions.create(model="demo", prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0)
    finally:
        for process in (server, joiner, seedbox):
            if process is not None:
                process.stop()
    assert run.returncode == 0, run.stderr + "".join(joiner.stderr_lines)
    assert run.stdout == expected_text(model_dir) + "\n"
    assert drafted.returncode == 0, drafted.stderr
    assert drafted.stdout == run.stdout
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout == run.stdout
    assert served.choices[0].text == expected_text(model_dir)
    assert batch.returncode == 0, batch.stderr
    records = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [(record["line"], record["text"]) for record in records] == [
        (1, expected_text(model_dir)),
        (2, expected_text(model_dir)),
    ]


def test_a_seeding_publisher_and_a_peer_are_bootstrap_nodes_too(make_model_tool: ModuleType, tmp_path: Path) -> None:
    """Any running node is enough: the joiner knows only the seeding publisher, the client only the joiner."""
    model_dir = make_model_tool.make_model("llama", tmp_path / "m", layers=4, seed=6, log=lambda _line: None)
    publisher = LineProcess([SWARM, "seed", str(model_dir), "--name", "demo"], home(tmp_path, "publisher"))
    joiner = None
    try:
        seeding = wait_line(publisher, "seeding demo on port ", timeout=120)
        publisher_port = int(seeding.removeprefix("seeding demo on port ").partition(";")[0])
        joiner = LineProcess(
            [SWARM, "join", "--model", "demo", "--bootstrap", f"127.0.0.1:{publisher_port}"], home(tmp_path, "joiner")
        )
        serving = wait_line(joiner, "serving ", timeout=120, context=publisher)
        joiner_port = int(serving.partition("BitTorrent and DHT on port ")[2].partition(" ")[0])
        run = run_prompt(tmp_path, f"127.0.0.1:{joiner_port}")
    finally:
        for process in (joiner, publisher):
            if process is not None:
                process.stop()
    assert run.returncode == 0, run.stderr + "".join(joiner.stderr_lines)
    assert run.stdout == expected_text(model_dir) + "\n"


def home(tmp_path: Path, label: str) -> dict[str, str]:
    return peer_environment(os.environ, home=tmp_path / label)


def wait_line(
    process: LineProcess,
    prefix: str,
    timeout: float = 60.0,
    refuse: tuple[str, ...] = (),
    context: LineProcess | None = None,
) -> str:
    """The first line the process prints that starts with `prefix` (none of the earlier ones may hold `refuse`).
    On failure the process's stderr is shown, and the `context` process's too."""
    deadline = time.monotonic() + timeout

    def logs() -> str:
        return "".join(process.stderr_lines) + ("\n--- and:\n" + "".join(context.stderr_lines) if context else "")

    while True:
        try:
            line = process.lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no line starting {prefix!r} within {timeout} s: {logs()}") from None
        assert line is not None, logs()
        assert not any(word in line for word in refuse), line
        if line.startswith(prefix):
            return line


def run_prompt(tmp_path: Path, bootstrap: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`swarm run` as the README shows it, from a home of its own."""
    return subprocess.run(
        [SWARM, "run", "--model", "demo", "--prompt", PROMPT, "--bootstrap", bootstrap, *extra],
        env=home(tmp_path, "client"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def run_batch(tmp_path: Path, bootstrap: str) -> subprocess.CompletedProcess[str]:
    """`swarm batch` as the README shows it, over two lines of PROMPT, from a home of its own."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": PROMPT}) + "\n" + json.dumps({"prompt": PROMPT, "id": "again"}) + "\n")
    arguments = ["--model", "demo", "--input", str(prompts), "--output", str(tmp_path / "answers.jsonl")]
    return subprocess.run(
        [SWARM, "batch", *arguments, "--bootstrap", bootstrap],
        env=home(tmp_path, "batch"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def expected_text(model_dir: Path) -> str:
    """What local transformers `generate` continues PROMPT with, greedy, as `swarm run` prints it."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    expected = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=NEW_TOKENS
    )
    return str(tokenizer.decode(expected[0, prompt.shape[1] :].tolist(), skip_special_tokens=True))
