"""`swarm batch` as a user types it, over real `swarm join` peers: two replicas of a small Llama (each peer holds the
whole model) and one BERT peer for embeddings.

200 lines (prompts, and chats every tenth line) come out in input order with exactly the greedy tokens transformers'
`generate` gives each alone, and both replicas serve a share; a Ctrl-C midway leaves a file a re-run completes doing
only what was left; a replica SIGKILLed midway loses no line. Seeded sampling equals one-at-a-time swarm runs, texts
to embed equal one-at-a-time embeddings, and a malformed input fails at once with one line naming the line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from swarm.batch.output import read_records
from swarm.batch.policy import line_seed
from swarm.client.generate import SamplingParams
from swarm.client.run import SwarmClient
from swarm.config import Settings
from tests.conftest import SWARM
from tests.peer_harness import PeerProcess, peer_environment, start_peers

ITEMS = 200
NEW_TOKENS = 4
# Lines the output must hold before a test interrupts the batch or kills a replica ("midway").
MIDWAY_LINES = 40
BATCH_TIMEOUT = 120.0
WORDS = [
    "beautiful",
    "explicit",
    "simple",
    "complex",
    "flat",
    "sparse",
    "readability",
    "special",
    "errors",
    "silently",
    "ambiguity",
]


@dataclass
class Swarm:
    root: Path
    model_dir: Path
    environment: dict[str, str]
    replicas: list[PeerProcess]
    encoder: PeerProcess

    def routes(self) -> list[str]:
        """--route flags naming each replica, as a user writes them (HOST:PORT)."""
        flags = []
        for peer in self.replicas:
            flags += ["--route", peer.address.removeprefix("tcp://")]
        return flags

    def batch(self, input_path: Path, output: Path, *flags: str, model: str = "tiny") -> list[str]:
        arguments = ["--model", model, "--input", str(input_path), "--output", str(output)]
        return [SWARM, "batch", *arguments, "--max-new-tokens", str(NEW_TOKENS), *flags]


@pytest.fixture(scope="module")
def swarm(make_model_tool: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    root = tmp_path_factory.mktemp("batch")
    model_dir = make_model_tool.make_model("llama", root / "llama", layers=2, seed=3, log=lambda _line: None)
    bert_dir = make_model_tool.make_model("bert", root / "bert", layers=2, seed=3, log=lambda _line: None)
    environment = peer_environment(os.environ, home=root / "home")
    for directory, name in ((model_dir, "tiny"), (bert_dir, "bert")):
        subprocess.run(
            [SWARM, "seed", str(directory), "--name", name, "--prepare-only", "--json"],
            env=environment,
            check=True,
            capture_output=True,
        )
    # Each replica hosts every block (given, so that it never moves); the BERT peer too.
    peers = start_peers(
        [["--model", "tiny", "--blocks", "0:2"], ["--model", "tiny", "--blocks", "0:2"], ["--model", "bert"]],
        environment,
        root / "logs",
    )
    try:
        yield Swarm(root, model_dir, environment, peers[:2], peers[2])
    finally:
        for peer in peers:
            if peer.process.poll() is None:
                peer.process.kill()
                peer.process.wait()


def prompt(index: int) -> str:
    return f"{WORDS[index % len(WORDS)].capitalize()} is better than {WORDS[index * 7 % len(WORDS)]} {index}"


def line(index: int) -> dict[str, Any]:
    """Input line `index` + 1: a prompt, or every tenth a chat."""
    if index % 10 == 5:
        return {"messages": [{"role": "user", "content": prompt(index)}], "id": f"p{index}"}
    return {"prompt": prompt(index), "id": f"p{index}"}


@pytest.fixture(scope="module")
def prompts_file(swarm: Swarm) -> Path:
    path = swarm.root / "prompts.jsonl"
    path.write_text("".join(json.dumps(line(index)) + "\n" for index in range(ITEMS)))
    return path


@dataclass(frozen=True)
class Expected:
    tokens: list[int]
    text: str
    finish_reason: str
    prompt_tokens: int


@pytest.fixture(scope="module")
def expected(swarm: Swarm) -> list[Expected]:
    """Each line alone through transformers' own greedy `generate` (a chat in the tokenizer's chat template)."""
    model = AutoModelForCausalLM.from_pretrained(swarm.model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(swarm.model_dir)
    threads = torch.get_num_threads()
    # One thread, as the peers: a tiny model's many small steps take ten times as long on threads that contend.
    torch.set_num_threads(1)
    try:
        return [alone(model, tokenizer, line(index)) for index in range(ITEMS)]
    finally:
        torch.set_num_threads(threads)


def alone(model: Any, tokenizer: Any, item: dict[str, Any]) -> Expected:
    if "messages" in item:
        text = tokenizer.apply_chat_template(item["messages"], add_generation_prompt=True, tokenize=False)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    else:
        ids = torch.tensor([tokenizer.encode(item["prompt"])])
    with torch.no_grad():
        output = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW_TOKENS)
    tokens = output[0, ids.shape[1] :].tolist()
    stopped = tokens[-1] == model.generation_config.eos_token_id
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    return Expected(tokens, text, "stop" if stopped else "length", ids.shape[1])


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def check_output(path: Path, expected: Sequence[Expected], lines: int = ITEMS) -> list[dict[str, Any]]:
    """The output holds the first `lines` lines, in input order, once each, each exactly as expected."""
    written = records(path)
    assert [record["line"] for record in written] == list(range(1, lines + 1))
    for record in written:
        index = record["line"] - 1
        want = expected[index]
        assert record["id"] == f"p{index}"
        assert (record["tokens"], record["text"], record["finish_reason"]) == (
            want.tokens,
            want.text,
            want.finish_reason,
        ), f"line {record['line']}"
        assert record["usage"] == {
            "prompt_tokens": want.prompt_tokens,
            "completion_tokens": len(want.tokens),
            "total_tokens": want.prompt_tokens + len(want.tokens),
        }
    return written


def start_batch(command: list[str], environment: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_lines(path: Path, count: int, process: subprocess.Popen[str]) -> None:
    """Until the output holds `count` lines (the batch is midway)."""
    deadline = time.monotonic() + BATCH_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.01)
    _, stderr = process.communicate(timeout=BATCH_TIMEOUT)
    raise AssertionError(f"the batch did not write {count} lines (exit {process.returncode}): {stderr[-2000:]}")


def test_a_batch_equals_one_at_a_time_runs_and_both_replicas_serve(
    swarm: Swarm, prompts_file: Path, expected: list[Expected]
) -> None:
    output = swarm.root / "greedy.jsonl"
    done = subprocess.run(
        swarm.batch(prompts_file, output, *swarm.routes(), "--json"),
        env=swarm.environment,
        capture_output=True,
        text=True,
        timeout=BATCH_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    started, *_, summary = events(done.stdout)
    # Four sessions per replica by default.
    assert (started["event"], started["routes"], started["concurrency"], started["todo"]) == ("started", 2, 8, ITEMS)
    assert (summary["event"], summary["ran"], summary["errors_total"], summary["complete"]) == ("done", ITEMS, 0, True)
    written = check_output(output, expected)
    served = {peer.address: 0 for peer in swarm.replicas}
    for record in written:
        (hop,) = record["route"]
        served[hop["address"]] += 1
    assert summary["per_peer"] == served
    # Equal replicas take turns: each served a fair share of the items.
    assert all(count >= ITEMS // 4 for count in served.values()), served
    assert not output.with_name(output.name + ".partial").exists()


def done_in_files(output: Path, expected: Sequence[Expected]) -> int:
    """Lines an interrupted or killed batch finished, each right: the output's (in order, from the first line on)
    and those held in the side file (finished after a line that was still running). A line cut short by a kill is
    not finished."""
    written, _ = read_records(output)
    assert [record["line"] for record in written] == list(range(1, len(written) + 1))
    side, _ = read_records(output.with_name(output.name + ".partial"))
    finished = {record["line"]: record for record in [*side, *written]}
    for line, record in finished.items():
        assert (record["tokens"], record["text"]) == (expected[line - 1].tokens, expected[line - 1].text)
    return len(finished)


def test_a_rerun_after_ctrl_c_or_a_crash_does_only_what_is_left(
    swarm: Swarm, prompts_file: Path, expected: list[Expected]
) -> None:
    """Ctrl-C midway: the items in flight finish, the output holds every finished line in order. A re-run SIGKILLed
    midway: what it finished is in the output or the side file. The next re-run does the rest, nothing twice."""
    output = swarm.root / "interrupted.jsonl"
    command = swarm.batch(prompts_file, output, *swarm.routes(), "--json")
    process = start_batch(command, swarm.environment)
    wait_for_lines(output, MIDWAY_LINES, process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=BATCH_TIMEOUT)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted: "), stderr
    first = events(stdout)[-1]
    assert (first["event"], first["complete"]) == ("interrupted", False)
    assert MIDWAY_LINES <= first["done"] < ITEMS
    assert done_in_files(output, expected) == first["done"] == first["ran"]

    process = start_batch(command, swarm.environment)
    wait_for_lines(output, first["done"] + MIDWAY_LINES, process)
    process.kill()
    stdout, _ = process.communicate(timeout=BATCH_TIMEOUT)
    assert events(stdout)[0]["done_before"] == first["done"]
    done = done_in_files(output, expected)
    assert first["done"] + MIDWAY_LINES <= done < ITEMS

    again = subprocess.run(command, env=swarm.environment, capture_output=True, text=True, timeout=BATCH_TIMEOUT)
    assert again.returncode == 0, again.stderr
    started, *_, last = events(again.stdout)
    assert started["done_before"] == done
    # Nothing done twice, nothing left out.
    assert (last["event"], last["ran"], last["done"]) == ("done", ITEMS - done, ITEMS)
    check_output(output, expected)
    assert not output.with_name(output.name + ".partial").exists()

    # Another run finds nothing to do and says so.
    nothing = subprocess.run(command, env=swarm.environment, capture_output=True, text=True, timeout=BATCH_TIMEOUT)
    assert nothing.returncode == 0, nothing.stderr
    (summary,) = events(nothing.stdout)
    assert (summary["event"], summary["ran"], summary["done"]) == ("done", 0, ITEMS)
    check_output(output, expected)


def test_chats_and_seeded_sampling_equal_one_at_a_time_swarm_runs(swarm: Swarm) -> None:
    """With --seed each line samples with its own seed, chats and prompts alike, a line's max_tokens counting for it:
    exactly as a SwarmClient (what `swarm run` uses) gives each one alone. Without --json: a summary line."""
    lines: list[dict[str, Any]] = []
    for index in range(8):
        if index % 2:
            lines.append({"prompt": prompt(index)})
        else:
            chat = [{"role": "user", "content": prompt(index)}]
            if index % 4 == 0:
                chat = [{"role": "system", "content": "Be brief."}, *chat]
            lines.append({"messages": chat, "id": index, "max_tokens": 6})
    input_path = swarm.root / "chats.jsonl"
    input_path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    output = swarm.root / "chats-out.jsonl"
    sampling = ["--temperature", "0.9", "--top-k", "40", "--seed", "7"]
    done = subprocess.run(
        swarm.batch(input_path, output, *swarm.routes(), *sampling),
        env=swarm.environment,
        capture_output=True,
        text=True,
        timeout=BATCH_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{len(lines)}/{len(lines)} lines done ({len(lines)} now, 0 errors)"), done.stdout

    settings = Settings(home=swarm.root / "home")
    with SwarmClient.connect("tiny", settings, [peer.address for peer in swarm.replicas]) as client:
        for record, line in zip(records(output), lines, strict=True):
            number = record["line"]
            params = SamplingParams(0.9, 40, 1.0, line_seed(7, number))
            ids = client.encode_chat(line["messages"]) if "messages" in line else client.encode(line["prompt"])
            alone = client.generate(ids, line.get("max_tokens", NEW_TOKENS), params).generation
            assert (record["tokens"], record["text"], record["seed"]) == (alone.token_ids, alone.text, params.seed)
            assert record["usage"]["prompt_tokens"] == len(ids)
            assert record.get("id") == line.get("id")


def test_texts_to_embed_equal_one_at_a_time_embeddings(swarm: Swarm) -> None:
    texts = [prompt(index) for index in range(5)]
    input_path = swarm.root / "texts.jsonl"
    input_path.write_text("".join(json.dumps({"input": text}) + "\n" for text in texts))
    output = swarm.root / "embeddings.jsonl"
    route = ["--route", swarm.encoder.address.removeprefix("tcp://")]
    done = subprocess.run(
        swarm.batch(input_path, output, *route, "--json", model="bert"),
        env=swarm.environment,
        capture_output=True,
        text=True,
        timeout=BATCH_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    with SwarmClient.connect("bert", Settings(home=swarm.root / "home"), [swarm.encoder.address]) as client:
        for record, text in zip(records(output), texts, strict=True):
            alone = client.embed(text)
            assert record["embedding"] == pytest.approx(alone.embedding, abs=1e-6)
            assert record["usage"]["prompt_tokens"] == alone.tokens


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c",\n{"prompt": "d"}\n',
            r"error: .*malformed.jsonl: line 3: not JSON \(Expecting property name enclosed in double quotes at column 16\)",
        ),
        (
            '{"prompt": "a"}\n\n{"input": "b"}\n{"input": "c"}\n',
            r'error: .*malformed.jsonl: line 3: the model generates text: give "prompt" or "messages", not "input" '
            r"\(and 1 more malformed line\)",
        ),
        (
            "\n\n",
            r'error: .*malformed.jsonl: the input has no items: give one JSON object per line, such as \{"prompt": "..."\}',
        ),
    ],
    ids=["not-json", "wrong-kind", "empty"],
)
def test_a_malformed_input_fails_before_any_work(swarm: Swarm, content: str, message: str) -> None:
    input_path = swarm.root / "malformed.jsonl"
    input_path.write_text(content)
    output = swarm.root / "malformed-out.jsonl"
    done = subprocess.run(
        swarm.batch(input_path, output, *swarm.routes()),
        env=swarm.environment,
        capture_output=True,
        text=True,
        timeout=BATCH_TIMEOUT,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert re.fullmatch(message, line), line
    assert not output.exists()


def test_a_replica_killed_midway_loses_no_line(swarm: Swarm, prompts_file: Path, expected: list[Expected]) -> None:
    """Runs last: it kills one of the replicas."""
    output = swarm.root / "killed.jsonl"
    process = start_batch(swarm.batch(prompts_file, output, *swarm.routes(), "--json"), swarm.environment)
    wait_for_lines(output, MIDWAY_LINES, process)
    victim, survivor = swarm.replicas
    victim.process.kill()
    victim.process.wait()
    stdout, stderr = process.communicate(timeout=BATCH_TIMEOUT)
    assert process.returncode == 0, stderr
    summary = events(stdout)[-1]
    assert (summary["event"], summary["ran"], summary["errors_total"]) == ("done", ITEMS, 0)
    written = check_output(output, expected)
    # The items in flight on the victim went on (or started again) on the survivor, which did all the rest.
    moved = [record for record in written if record["failovers"] or record["attempts"] > 1]
    assert moved, "no item was running on the killed replica"
    assert all(record["route"][0]["address"] == survivor.address for record in moved)
    assert summary["per_peer"][survivor.address] > summary["per_peer"].get(victim.address, 0)
