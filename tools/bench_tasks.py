#!/usr/bin/env python3
"""Benchmark: transformers tasks through the swarm against the local pipeline, and two replicas against one.

Latency, per task: a tiny model of the task (tools/make_task_model.py), published and served by one `swarm join`
peer on 127.0.0.1 (and for the text tasks whose BERT splits, by two peers of one block each); the same input (text, a 48x32 PNG, a second of 16 kHz WAV) run --requests times through the
swarm (a TaskClient in this process: the file's bytes out, JSON and files back) and, interleaved, through the local
transformers pipeline on the already decoded input. Medians; "added" is the swarm's median minus the local one: the
wire, the peer's decoding and checks, JSON. Every process computes on one torch thread.

Throughput: a larger text classifier (BERT, --hidden, --layers) served by one peer that runs each request alone
(SWARM_MAX_STEP_BATCH=1), by one that batches requests arriving together, then by two; --clients threads send
requests of --tokens tokens for --seconds; requests per second of each.

Usage: python tools/bench_tasks.py [--requests 30] [--clients 4] [--seconds 8] [--hidden 256] [--layers 6]
                                   [--tokens 128] [--tasks T1,T2] [--skip-replicas] [--work DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.bench_cpu import cpu_seconds  # noqa: E402
from tools.bench_inference import start_peer, stop_peers  # noqa: E402

# (task, input kind, `swarm seed` flags, parameters)
TASKS = [
    ("text-classification", "text", (), {}),
    ("token-classification", "text", (), {}),
    ("feature-extraction", "text", ("--task", "feature-extraction"), {}),
    ("zero-shot-classification", "text", ("--task", "zero-shot-classification"), {"candidate_labels": ["a", "b"]}),
    ("image-classification", "image", (), {}),
    ("depth-estimation", "image", (), {}),
    ("object-detection", "image", (), {}),
    ("automatic-speech-recognition", "audio", (), {}),
    ("text-to-audio", "text", (), {}),
    ("image-to-text", "image", (), {}),
    ("summarization", "text", (), {}),
    ("translation", "text", ("--task", "translation"), {}),
    ("text-to-image", "text", (), {"num_inference_steps": 4, "height": 32, "width": 32}),
]
SENTENCE = "Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex."


def inputs() -> dict[str, bytes]:
    import numpy as np
    import soundfile
    from PIL import Image

    image, sound = io.BytesIO(), io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(image, format="PNG")
    noise = (0.1 * np.random.default_rng(1).standard_normal(16_000)).astype(np.float32)
    soundfile.write(sound, noise, 16_000, format="WAV", subtype="PCM_16")
    return {"text": SENTENCE.encode(), "image": image.getvalue(), "audio": sound.getvalue()}


def publish(model_dir: Path, name: str, home: Path, flags: tuple[str, ...]) -> None:
    import subprocess

    command = [str(Path(sys.executable).with_name("swarm")), "seed", str(model_dir), "--name", name, "--prepare-only"]
    subprocess.run([*command, *flags], env=os.environ | {"SWARM_HOME": str(home)}, check=True, capture_output=True)


def client_for(name: str, home: Path, addresses: list[str]) -> Any:
    from swarm.client.resolve import Resolver
    from swarm.config import Settings
    from swarm.tasks.client import TaskClient

    settings = Settings(home=home)
    resolver = Resolver(settings)
    try:
        manifest, torrent_data = resolver.manifest(name)
        client = TaskClient.for_manifest(resolver, manifest, torrent_data)
    finally:
        resolver.close()
    client.find_peers(addresses, pinned=True)
    return client


def local_call(task: str, model_dir: Path, data: bytes, params: dict[str, Any]) -> Callable[[], Any]:
    """The local equivalent: the pipeline (or the model's generate, for tasks whose pipelines transformers 5
    removed) on the input decoded once, as a user holding the text, image or sound would call it."""
    import torch
    from transformers import pipeline

    from swarm.tasks.catalog import task_named
    from swarm.tasks.media import decode_input
    from swarm.tasks.runner import TASK_SEED

    spec = task_named(task)
    value = decode_input(data, spec.input, task)
    if spec.engine == "generate":
        return local_generate(spec.input, model_dir, value)
    if spec.engine == "diffusers":
        from diffusers import DiffusionPipeline

        draw = DiffusionPipeline.from_pretrained(model_dir)
        draw.set_progress_bar_config(disable=True)
        return lambda: draw(value, generator=torch.Generator().manual_seed(TASK_SEED), **params).images[0]
    pipe = pipeline(task, model=str(model_dir))
    if task == "feature-extraction":
        return lambda: pipe(value, return_tensors=True)
    if task == "text-to-audio":
        # Seeded as the peer seeds each request: the same noise, so the same length of sound.
        return lambda: (torch.manual_seed(TASK_SEED), pipe(value))
    # The speech pipeline takes the samples out of the dict it is given: each call gets its own.
    return lambda: pipe(dict(value) if isinstance(value, dict) else value, **params)


def local_generate(media: str, model_dir: Path, value: Any) -> Callable[[], str]:
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if media == "image":
        model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
        processor = AutoImageProcessor.from_pretrained(model_dir)
        return lambda: tokenizer.decode(model.generate(**processor(value, return_tensors="pt"))[0])
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    return lambda: tokenizer.decode(model.generate(**tokenizer(value, return_tensors="pt", truncation=True))[0])


def latency_rows(work: Path, requests: int, only: set[str] | None) -> list[tuple[str, float, float, int, int]]:
    """One row per task through one peer (whole), and for the tasks whose models split (BERT here) one more through
    two peers of one block each, the client running embeddings, head and the pipeline."""
    from tools.make_task_model import make_task_model

    home, data = work / "home", inputs()
    rows = []
    for task, kind, flags, params in TASKS:
        if only is not None and task not in only:
            continue
        model_dir = work / "models" / task
        if not (model_dir / "config.json").is_file():
            make_task_model(task, model_dir, seed=0, force=True)
        name = task.replace("-", "")[:20]
        publish(model_dir, name, home, flags)
        layouts = [(task, [None])]
        if kind == "text" and "text-to" not in task and task not in ("summarization", "translation"):
            layouts.append((f"{task} (2 spans)", ["0:1", "1:2"]))
        for label, spans in layouts:
            local = local_call(task, model_dir, data[kind], params)
            local_seconds, swarm_seconds, received = timed(name, home, work, spans, data[kind], params, local, requests)
            rows.append((label, local_seconds, swarm_seconds, len(data[kind]), received))
            print(f"{label}: local {local_seconds * 1e3:.2f} ms, swarm {swarm_seconds * 1e3:.2f} ms", file=sys.stderr)
    return rows


def timed(
    name: str,
    home: Path,
    work: Path,
    spans: list[str | None],
    data: bytes,
    params: dict[str, Any],
    local: Callable[[], Any],
    requests: int,
) -> tuple[float, float, int]:
    """Median seconds of the local call and of the swarm's (peers serving `spans`: None for what a peer chooses),
    interleaved, and the bytes of the last answer's file and tensors."""
    environment = os.environ | {"SWARM_HOME": str(home)}
    started = [start_peer(blocks, environment, work / f"{name}-{index}.log", model=name) for index, blocks in
               enumerate(spans)]  # fmt: skip
    try:
        client = client_for(name, home, [address for _, address in started])
        swarm_times, local_times = [], []
        for _ in range(3):
            client.run(data, params), local()
        for _ in range(requests):
            begun = time.perf_counter()
            result = client.run(data, params)
            swarm_times.append(time.perf_counter() - begun)
            begun = time.perf_counter()
            local()
            local_times.append(time.perf_counter() - begun)
        received = len(result.file or b"") + sum(tensor.numel() * 4 for tensor in result.tensors.values())
        client.close()
    finally:
        stop_peers([process for process, _ in started])
    return statistics.median(local_times), statistics.median(swarm_times), received


def big_classifier(work: Path, hidden: int, layers: int) -> Path:
    """A BERT text classifier of `hidden` width and `layers` layers, with the tiny model's tokenizer."""
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from tools.make_task_model import make_task_model

    tiny = make_task_model("text-classification", work / "tiny-classifier", force=True)
    out = work / f"classifier-{hidden}x{layers}"
    config = BertConfig.from_pretrained(tiny)
    config.hidden_size, config.num_hidden_layers, config.intermediate_size = hidden, layers, 4 * hidden
    config.num_attention_heads, config.max_position_embeddings = max(1, hidden // 64), 512
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(out)
    for path in tiny.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "vocab")):
            shutil.copy(path, out / path.name)
    return out


def throughput(client: Any, data: bytes, clients: int, seconds: float, peers: list[int]) -> tuple[float, float, float]:
    """Requests per second from `clients` threads for `seconds`; CPU ms per request of the `peers` (PIDs) together
    and of this process (the client)."""
    peer_cpu, own_cpu = sum(cpu_seconds(pid) for pid in peers), cpu_seconds(os.getpid())
    done = [0] * clients
    deadline = time.monotonic() + seconds

    def work(index: int) -> None:
        while time.monotonic() < deadline:
            client.run(data, {})
            done[index] += 1

    threads = [threading.Thread(target=work, args=(index,)) for index in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    count = max(sum(done), 1)
    peer_ms = (sum(cpu_seconds(pid) for pid in peers) - peer_cpu) * 1e3 / count
    return count / (time.monotonic() - started), peer_ms, (cpu_seconds(os.getpid()) - own_cpu) * 1e3 / count


def replica_rows(work: Path, args: argparse.Namespace) -> tuple[tuple[float, float, float], ...]:
    """Throughput of one replica that runs each request alone (SWARM_MAX_STEP_BATCH=1), of one that batches the
    requests arriving together, and of two that batch."""
    home = work / "home"
    model_dir = big_classifier(work, args.hidden, args.layers)
    publish(model_dir, "bigclassifier", home, ())
    environment = os.environ | {"SWARM_HOME": str(home)}
    alone = environment | {"SWARM_MAX_STEP_BATCH": "1"}
    started = [start_peer(None, environment, work / f"big-{index}.log", model="bigclassifier") for index in range(2)]
    started.append(start_peer(None, alone, work / "big-alone.log", model="bigclassifier"))
    text = " ".join(SENTENCE.split() * 20)
    data = " ".join(text.split()[: args.tokens]).encode()
    try:
        single = client_for("bigclassifier", home, [started[2][1]])
        one = client_for("bigclassifier", home, [started[0][1]])
        two = client_for("bigclassifier", home, [address for _, address in started[:2]])
        pids = [process.pid for process, _ in started]
        throughput(one, data, args.clients, 2.0, pids[:1])  # warm-up
        throughput(single, data, args.clients, 2.0, pids[2:])
        rates = (
            throughput(single, data, args.clients, args.seconds, pids[2:]),
            throughput(one, data, args.clients, args.seconds, pids[:1]),
            throughput(two, data, args.clients, args.seconds, pids[:2]),
        )
        single.close(), one.close(), two.close()
    finally:
        stop_peers([process for process, _ in started])
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30, help="timed requests per task (default 30)")
    parser.add_argument("--clients", type=int, default=4, help="client threads for the throughput run (default 4)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of each throughput run (default 8)")
    parser.add_argument("--hidden", type=int, default=256, help="width of the throughput run's classifier")
    parser.add_argument("--layers", type=int, default=6, help="layers of the throughput run's classifier")
    parser.add_argument("--tokens", type=int, default=128, help="words in each throughput request")
    parser.add_argument("--work", type=Path, help="working directory (kept)")
    parser.add_argument("--tasks", help="only these tasks' latency, comma-separated (default: every task)")
    parser.add_argument("--skip-replicas", action="store_true", help="leave out the two-replicas throughput run")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers.utils import logging as transformers_logging

    torch.set_num_threads(1)
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-tasks-"))
    rows = latency_rows(work, args.requests, set(args.tasks.split(",")) if args.tasks else None)
    runs = () if args.skip_replicas else replica_rows(work, args)
    print("| task | local pipeline (ms) | swarm (ms) | added (ms) | input bytes / file and tensor bytes back |")
    print("|---|---|---|---|---|")
    for task, local, swarm, sent, received in rows:
        print(f"| {task} | {local * 1e3:.2f} | {swarm * 1e3:.2f} | {(swarm - local) * 1e3:.2f} | {sent} / {received} |")
    if not runs:
        return
    print(f"\nthroughput, BERT {args.hidden}x{args.layers}, {args.tokens}-word requests, {args.clients} clients:\n")
    print("| replicas | requests/s | peers' CPU ms / request | client's CPU ms / request |")
    print("|---|---|---|---|")
    for label, (rate, peer_ms, client_ms) in zip(("1, each request alone", "1", "2"), runs, strict=True):
        print(f"| {label} | {rate:.1f} | {peer_ms:.1f} | {client_ms:.1f} |")
    print(
        f"\nbatching at one replica: {runs[1][0] / runs[0][0]:.2f}x; two replicas over one: {runs[2][0] / runs[1][0]:.2f}x"
    )


if __name__ == "__main__":
    main()
