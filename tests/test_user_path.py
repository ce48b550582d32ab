"""The README's path, typed as a user types it, on one machine with every default: a publisher prepares the
catalog, a seedbox seeds it on a port of its own, a peer joins knowing only the seedbox's address, and a client
runs a prompt knowing only that address too. No --listen, no --peer, no --route, no dedicated DHT node: the
commands are the README's, apart from the seedbox's port and each command's SWARM_HOME.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import ModuleType

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import SWARM
from tests.peer_harness import PeerProcess, peer_environment, wait_for_event
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
    joiner = None
    try:
        # The seedbox prints one line per event; it seeds once it has checked the publisher's files.
        while "seeding demo" not in (line := seedbox_line(seedbox)):
            assert "refused" not in line and "not findable" not in line, line
        join_log = tmp_path / "join.log"
        process = subprocess.Popen(
            [SWARM, "join", "--model", "demo", "--bootstrap", bootstrap, "--json"],
            env=peer_environment(os.environ, home=tmp_path / "joiner"),
            stdout=subprocess.PIPE, stderr=join_log.open("w"), text=True,
        )  # fmt: skip
        joiner = PeerProcess(process, wait_for_event(process, "serving", join_log), join_log)
        assert joiner.serving["blocks"] == [0, 4], joiner.log()

        run = subprocess.run(
            [SWARM, "run", "--model", "demo", "--prompt", PROMPT, "--bootstrap", bootstrap],
            env=peer_environment(os.environ, home=tmp_path / "client"),
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr + joiner.log()
    finally:
        if joiner is not None:
            joiner.stop()
        seedbox.stop()

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    expected = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=NEW_TOKENS
    )
    text = tokenizer.decode(expected[0, prompt.shape[1] :].tolist(), skip_special_tokens=True)
    assert run.stdout == text + "\n"


def seedbox_line(seedbox: LineProcess, timeout: float = 60.0) -> str:
    line = seedbox.lines.get(timeout=timeout)
    assert line is not None, "".join(seedbox.stderr_lines)
    return line


def test_a_seeding_publisher_and_a_peer_are_bootstrap_nodes_too(make_model_tool: ModuleType, tmp_path: Path) -> None:
    """Any running node is enough: the joiner knows only the seeding publisher, the client only the joiner."""
    model_dir = make_model_tool.make_model("llama", tmp_path / "m", layers=4, seed=6, log=lambda _line: None)
    publisher = LineProcess(
        [SWARM, "seed", str(model_dir), "--name", "demo"], peer_environment(os.environ, home=tmp_path / "publisher")
    )
    joiner = None
    try:
        while not (line := seedbox_line(publisher, 120)).startswith("seeding demo on port "):
            pass
        publisher_port = int(line.removeprefix("seeding demo on port ").partition(";")[0])
        join_log = tmp_path / "join.log"
        process = subprocess.Popen(
            [SWARM, "join", "--model", "demo", "--bootstrap", f"127.0.0.1:{publisher_port}", "--json"],
            env=peer_environment(os.environ, home=tmp_path / "joiner"),
            stdout=subprocess.PIPE, stderr=join_log.open("w"), text=True,
        )  # fmt: skip
        joiner = PeerProcess(process, wait_for_event(process, "serving", join_log), join_log)
        peer_bootstrap = f"127.0.0.1:{joiner.serving['torrent_port']}"
        run = subprocess.run(
            [SWARM, "run", "--model", "demo", "--prompt", PROMPT, "--bootstrap", peer_bootstrap],
            env=peer_environment(os.environ, home=tmp_path / "client"),
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr + joiner.log()
    finally:
        if joiner is not None:
            joiner.stop()
        publisher.stop()
    assert run.stdout == expected_text(model_dir) + "\n"


def expected_text(model_dir: Path) -> str:
    """What local transformers `generate` continues PROMPT with, greedy, as `swarm run` prints it."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    expected = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=NEW_TOKENS
    )
    return str(tokenizer.decode(expected[0, prompt.shape[1] :].tolist(), skip_special_tokens=True))
