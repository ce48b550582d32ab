"""Task models of a family with block adapters (a BERT or Llama classifier, tagger, encoder) are published in block
chunks and served in spans, like language models: each peer takes the blocks its memory holds, and the client runs
the task's transformers pipeline with the embeddings and head while the blocks run on the route. The answers equal
local transformers' on the same input."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from swarm.address import Address
from swarm.catalog import resolve
from swarm.config import Settings
from swarm.errors import SwarmError
from swarm.model.span import Span, load_tensors, make_positions
from swarm.publish import publish
from swarm.tasks.sharded import ShardedTask
from tests.conftest import SWARM, load_tool
from tests.peer_harness import PeerProcess, peer_environment, start_peers
from tests.test_dht import LineProcess
from tests.test_interop import free_port
from tests.test_tasks import SENTENCE, assert_close, plain
from tests.test_user_path import wait_line

PARAMS: dict[str, dict[str, Any]] = {"zero-shot-classification": {"candidate_labels": ["cats", "dogs", "birds"]}}
TASKS = ("text-classification", "token-classification", "feature-extraction", "zero-shot-classification")


@pytest.fixture(scope="module")
def task_tool() -> ModuleType:
    return load_tool("make_task_model")


def local_pipeline_answer(model_dir: Path, task: str) -> Any:
    from transformers import pipeline

    pipe = pipeline(task, model=str(model_dir))
    if task == "feature-extraction":
        return pipe(SENTENCE, return_tensors=True)
    return plain(pipe(SENTENCE, **PARAMS.get(task, {})))


def assert_same_answer(task: str, features: torch.Tensor | None, output: Any, local: Any) -> None:
    if task == "feature-extraction":
        assert features is not None
        torch.testing.assert_close(features, local.float(), rtol=1e-5, atol=1e-6)
    else:
        assert_close(output, local)


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("task", TASKS)
def test_a_split_task_model_answers_as_the_local_pipeline(
    task_tool: ModuleType, tmp_path: Path, task: str, family: str
) -> None:
    """Published in blocks; the blocks run here as a peer's span would, the rest as the client runs it."""
    model_dir = task_tool.make_task_model(task, tmp_path / "model", seed=5, family=family)
    settings = Settings(home=tmp_path / "home")
    # What its architecture implies, or what `swarm seed --task` names (a bare encoder, an NLI head for zero-shot).
    manifest = publish(str(model_dir), "split", settings, task=task).manifest
    assert manifest.task == task and manifest.family == family and manifest.num_blocks == 2
    assert not [chunk for chunk in manifest.chunks if chunk.kind == "full"]
    paths = {chunk.id: settings.models_dir() / chunk.file for chunk in manifest.chunks}
    blocks = Span(manifest.config, family, 0, 2, False, False, load_tensors(
        [path for chunk_id, path in paths.items() if chunk_id.startswith("blocks")]))  # fmt: skip
    calls: list[tuple[int, ...]] = []

    def run_blocks(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        calls.append(tuple(hidden.shape))
        if family == "bert":
            return blocks.forward(hidden, attention_mask=mask)
        return blocks.forward(hidden, blocks.new_session_cache(), make_positions(0, hidden.shape[1]))

    client_chunks = {chunk_id: path for chunk_id, path in paths.items() if not chunk_id.startswith("blocks")}
    sharded = ShardedTask(manifest, client_chunks, run_blocks)
    # The client holds no block weights: the blocks' place in its model is the remote stand-in.
    assert not any(".layer" in name or "layers." in name for name, _ in sharded.model.named_parameters())
    answer = sharded.run(SENTENCE.encode(), PARAMS.get(task, {}))
    assert calls, "the blocks never ran"
    assert_same_answer(task, answer.tensors.get("features"), answer.result, local_pipeline_answer(model_dir, task))


def test_a_client_without_the_head_chunk_says_what_is_missing(task_tool: ModuleType, tmp_path: Path) -> None:
    model_dir = task_tool.make_task_model("text-classification", tmp_path / "model", seed=5)
    settings = Settings(home=tmp_path / "home")
    manifest = publish(str(model_dir), "split", settings).manifest
    paths = {chunk.id: settings.models_dir() / chunk.file for chunk in manifest.chunks if chunk.id in ("meta", "embed")}
    with pytest.raises(SwarmError, match=r"the embed and head chunks lack .*classifier"):
        ShardedTask(manifest, paths, lambda hidden, _mask: hidden)


def test_a_task_model_without_block_adapters_stays_whole(task_tool: ModuleType, tmp_path: Path) -> None:
    model_dir = task_tool.make_task_model("image-classification", tmp_path / "model", seed=5)
    manifest = publish(str(model_dir), "whole", Settings(home=tmp_path / "home")).manifest
    assert manifest.num_blocks == 0 and [chunk.kind for chunk in manifest.chunks] == ["meta", "full"]


# ----- real peers: spans chosen by memory, the client through the seedbox only -----


@pytest.fixture(scope="module")
def split_swarm(tmp_path_factory: pytest.TempPathFactory, task_tool: ModuleType) -> Iterator[dict[str, Any]]:
    """A BERT classifier of two blocks published behind a seedbox; peers join with memory for one block each."""
    root = tmp_path_factory.mktemp("split")
    environment = peer_environment(os.environ, home=root / "home")
    model_dir = task_tool.make_task_model("text-classification", root / "model", seed=7)
    subprocess.run([SWARM, "seed", str(model_dir), "--name", "classifier", "--prepare-only"], env=environment,
                   check=True, capture_output=True)  # fmt: skip
    manifest, _ = resolve("classifier", Settings(home=root / "home").catalog)
    one_block = max(chunk.size for chunk in manifest.chunks if chunk.kind == "blocks")
    bootstrap = f"127.0.0.1:{free_port()}"
    seedbox = LineProcess([SWARM, "seedbox", "--listen", bootstrap], environment)
    peers: list[PeerProcess] = []
    try:
        wait_line(seedbox, "seeding ", timeout=120, refuse=("refused", "not findable"))
        # One after the other: each joiner sees what the others serve and takes the thinnest block.
        for index in range(2):
            arguments = ["--model", "classifier", "--bootstrap", bootstrap, "--memory", str(int(one_block * 1.5))]
            peers += start_peers([arguments], environment, root / f"logs{index}")
        yield {"dir": model_dir, "peers": peers, "environment": environment, "bootstrap": bootstrap, "root": root,
               "one_block": one_block}  # fmt: skip
    finally:
        for peer in peers:
            peer.stop()
        seedbox.stop()


def test_peers_split_a_classifier_by_memory_and_run_answers_as_transformers(split_swarm: dict[str, Any]) -> None:
    """`swarm join` with memory for one block takes one; `swarm run --input` through the seedbox routes the text
    through both peers; `swarm status` shows the task served in spans."""
    first, second = split_swarm["peers"]
    assert [first.serving["blocks"], second.serving["blocks"]] == [[0, 1], [1, 2]]
    assert first.serving["replica"] is False and second.serving["replica"] is False
    command = [SWARM, "run", "--model", "classifier", "--input", SENTENCE, "--bootstrap", split_swarm["bootstrap"]]
    ran = subprocess.run([*command, "--json"], env=split_swarm["environment"], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert ran.returncode == 0, ran.stderr + first.log() + second.log()
    answer = json.loads(ran.stdout)
    assert answer["task"] == "text-classification"
    # Each hop by the address that names the peer's own key (vouched for on the DHT).
    assert answer["peer"] == f"{first.serving['keyed_address']}, {second.serving['keyed_address']}"
    assert_close(answer["output"], local_pipeline_answer(split_swarm["dir"], "text-classification"))
    shown = subprocess.run([SWARM, "status", "classifier", "--bootstrap", split_swarm["bootstrap"]],
                           env=split_swarm["environment"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "(task text-classification, 2 blocks, whole replicas or spans): every block is served" in shown.stdout
    assert "blocks 0:1" in shown.stdout and "blocks 1:2" in shown.stdout


def test_a_split_task_fails_over_to_another_peer_of_the_same_blocks(split_swarm: dict[str, Any]) -> None:
    """A third peer takes block 0 too; the client's planned first hop leaves mid-way and the request goes on
    through the other one, with the same answer."""
    from swarm.client.resolve import Resolver
    from swarm.tasks.client import TaskClient

    environment = split_swarm["environment"]
    arguments = ["--model", "classifier", "--bootstrap", split_swarm["bootstrap"],
                 "--memory", str(int(split_swarm["one_block"] * 1.5))]  # fmt: skip
    third = start_peers([arguments], environment, split_swarm["root"] / "logs-third")[0]
    first, second = split_swarm["peers"]
    try:
        assert third.serving["blocks"] == [0, 1]
        settings = Settings(home=split_swarm["root"] / "home")
        resolver = Resolver(settings)
        try:
            manifest, torrent_data = resolver.manifest("classifier")
            client = TaskClient.for_manifest(resolver, manifest, torrent_data)
        finally:
            resolver.close()
        with client:
            client.find_peers([first.address, second.address, third.address], pinned=True)
            # Make the first peer the fastest, so every plan starts there; then it leaves.
            client.peers = [dataclasses.replace(peer, throughput=1e9) if peer.address == first.address else peer
                            for peer in client.peers]  # fmt: skip
            assert first.stop() == 0
            result = client.run(SENTENCE.encode())
        assert result.peer == f"{third.address}, {second.address}"
        assert_close(result.output, local_pipeline_answer(split_swarm["dir"], "text-classification"))
    finally:
        third.stop()


def test_requests_from_several_threads_run_their_blocks_at_once(task_tool: ModuleType, tmp_path: Path) -> None:
    """Each thread's text keeps its own padding mask and answer while the blocks of all of them run together."""
    from transformers import pipeline

    model_dir = task_tool.make_task_model("token-classification", tmp_path / "model", seed=5)
    settings = Settings(home=tmp_path / "home")
    manifest = publish(str(model_dir), "split", settings).manifest
    paths = {chunk.id: settings.models_dir() / chunk.file for chunk in manifest.chunks}
    blocks = Span(manifest.config, "bert", 0, 2, False, False, load_tensors(
        [path for chunk_id, path in paths.items() if chunk_id.startswith("blocks")]))  # fmt: skip
    together = threading.Barrier(4, timeout=30)

    def run_blocks(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        together.wait()  # every thread is inside its blocks at the same time
        return blocks.forward(hidden, attention_mask=mask)

    client_chunks = {chunk_id: path for chunk_id, path in paths.items() if not chunk_id.startswith("blocks")}
    sharded = ShardedTask(manifest, client_chunks, run_blocks)
    texts = [" ".join(SENTENCE.split()[: 3 + 2 * index]) for index in range(4)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda text: sharded.run(text.encode(), {}).result, texts))
    local = pipeline("token-classification", model=str(model_dir))
    for text, answer in zip(texts, answers, strict=True):
        assert_close(answer, plain(local(text)))


def test_a_peer_with_room_for_the_whole_model_runs_it_whole(split_swarm: dict[str, Any]) -> None:
    """`swarm join --model NAME --bootstrap SEEDBOX` as the README shows it (default memory, default listen
    addresses): the joiner runs the whole classifier (from its block chunks, as a sharded checkpoint), and a client
    sends it whole texts rather than routing hidden states through the spans."""
    command = [SWARM, "join", "--model", "classifier", "--bootstrap", split_swarm["bootstrap"]]
    whole = LineProcess(command, split_swarm["environment"])
    try:
        serving = wait_line(whole, "serving ", timeout=120)
        assert serving.startswith("serving the task text-classification of classifier on tcp://"), serving
        address = serving.split(" on ")[1].split()[0].rstrip(",")
        status = subprocess.run([SWARM, "status", "classifier", "--bootstrap", split_swarm["bootstrap"], "--json"],
                                env=split_swarm["environment"], capture_output=True, text=True, timeout=120)  # fmt: skip
        # The DHT knows it by its addresses (127.0.0.1 and the one it advertises): the same port, the only replica.
        replicas = [peer for peer in json.loads(status.stdout)["models"][0]["peers"] if peer["replica"]]
        assert {(peer["address"].rsplit(":", 1)[1], peer["task"], tuple(peer["blocks"])) for peer in replicas} == {
            (address.rsplit(":", 1)[1], "text-classification", (0, 2))
        }
        command = [SWARM, "run", "--model", "classifier", "--input", SENTENCE, "--bootstrap", split_swarm["bootstrap"]]
        ran = subprocess.run([*command, "--json"], env=split_swarm["environment"], capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        assert ran.returncode == 0, ran.stderr + "".join(whole.stderr_lines)
        answer = json.loads(ran.stdout)
        # Whichever of its addresses the client picked (it may know it by several), that peer answered, through the
        # listener that proves its own key.
        used, own = Address.parse(answer["peer"]), Address.parse(serving.split("its own key only: ")[1].split(")")[0])
        assert (used.port, used.key) == (own.port, own.key) and own.key, (answer, serving)
        assert used.host in {Address.parse(peer["address"]).host for peer in replicas}, (answer, replicas)
        assert_close(answer["output"], local_pipeline_answer(split_swarm["dir"], "text-classification"))
    finally:
        whole.stop()


def test_a_replica_batches_requests_and_answers_a_bad_one_alone(task_tool: ModuleType, tmp_path: Path) -> None:
    """Requests that reach a replica together: those with the same parameters run as one batch (from the block
    chunks, assembled as a sharded checkpoint), each answered as if alone; an input that does not fit gets its own
    error and spoils nothing."""
    from swarm.tasks.runner import TaskRunner

    model_dir = task_tool.make_task_model("text-classification", tmp_path / "model", seed=5)
    settings = Settings(home=tmp_path / "home")
    manifest = publish(str(model_dir), "split", settings).manifest
    paths = {chunk.id: settings.models_dir() / chunk.file for chunk in manifest.chunks}
    runner = TaskRunner(manifest, paths.pop("meta"), paths)
    texts = [SENTENCE.encode(), b"short", " ".join(SENTENCE.split()[:5]).encode()]
    requests: list[tuple[bytes, object]] = [(texts[0], {}), (b"\x89PNG\r\n\x1a\n" + bytes(32), {}),
                                            (texts[1], {}), (texts[2], {"top_k": 2}), (texts[1], {"top_k": 99999})]  # fmt: skip
    answers = runner.run_many(requests)
    assert isinstance(answers[1], SwarmError) and "takes text" in str(answers[1])
    assert isinstance(answers[4], SwarmError) and "top_k" in str(answers[4])
    for index in (0, 2, 3):
        answer = answers[index]
        assert not isinstance(answer, SwarmError)
        assert_close(answer.result, runner.run(*requests[index]).result)
