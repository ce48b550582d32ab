#!/usr/bin/env python3
"""Attack compute peers with hostile messages: an operator's check that a peer cannot be stalled, crashed or bloated.

    python tools/attack_peer.py --peer HOST:PORT [--peer HOST:PORT]... [--messages 10000] [--sockets 8]
                                [--rate 0] [--seed 0] [--json]

sends --messages messages from --sockets connections, spread over the peers, as fast as they go (or at --rate
messages a second), while a separate connection pings each peer every 50 ms. The messages are drawn in turn from
these kinds: random frames, JSON that is not a header, headers with a wrong field, huge declared tensor sizes,
routes through a dead address with a dead reply_to (the message that stalled peers for seconds), session floods
(valid opens under random ids), routes visiting the peer 64 times, NaN tensors, hijacks (steps and closes of
sessions that are not the sender's). It prints the replies by error code, the ping round trips before, during
and after, and whether every peer still answers. Exit status 1 when a peer stopped answering or answered a
message with `internal` (a bug a message could trigger).

    python tools/attack_peer.py --bench [--work DIR] [--messages 10000] [--repeat 3]

builds a 2-peer chain of a generated Llama on 127.0.0.1 and measures a legitimate greedy generation alone and
while the attack (another process) runs against both peers: per-token latency, the peers' RSS before and after,
crashes, and whether the tokens equal local transformers `generate`. Prints a markdown table (README, Trust).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from swarm import transport, wire  # noqa: E402
from swarm.wire import Kind  # noqa: E402

# An address in TEST-NET-1 (RFC 5737): never routed, so a connection to it hangs until it times out.
DEAD_HOST = "192.0.2.1"
PING_INTERVAL_SECONDS = 0.05
# The benchmark's attacker comes from another loopback address than the legitimate client, as it would from
# another host: per-address limits (new sessions a minute) then tell the two apart.
ATTACKER_SOURCE = "127.0.0.2"
# Once every message went out, replies are read until none has come for this long.
SETTLE_SECONDS = 2.0
HEADER_FIELDS = ("v", "kind", "request_id", "session_id", "step", "route", "reply_to", "positions", "tensors", "body")
JUNK_VALUES: tuple[Any, ...] = (None, -1, 2**63, 1.5, "", "x" * 200, [], {}, [[[]]], True, "\u00e9")


@dataclass(frozen=True)
class Target:
    """A peer as its `info` describes it: what hostile messages must look like to get past the first checks."""

    address: str
    blocks: tuple[int, int]
    hidden_size: int
    max_length: int
    replica: bool


def ask_info(address: str, timeout: float = 10.0) -> Target:
    with transport.Context() as context:
        dealer = context.connect_dealer(address)
        transport.send_frames(dealer, wire.encode(wire.Header(kind=Kind.INFO, request_id=new_id())))
        received = transport.recv_frames(dealer, timeout)
    if received is None:
        raise SystemExit(f"error: {address} did not answer info within {timeout:g} s")
    header, _ = wire.decode(received[1])
    body = header.body
    blocks = body["blocks"]
    return Target(
        transport.normalize_address(address),
        (int(blocks[0]), int(blocks[1])),
        int(body["hidden_size"]),
        int(body["max_length"]),
        bool(body["replica"]),
    )


def new_id() -> str:
    return uuid.uuid4().hex[:16]


# --- the hostile messages ------------------------------------------------------------------------------------


def header_obj(target: Target, kind: str, **fields: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "v": 1,
        "kind": kind,
        "request_id": new_id(),
        "route": [{"address": target.address, "blocks": list(target.blocks)}],
        "body": {},
    }
    obj.update(fields)
    return obj


def frames_of(obj: dict[str, Any], *tensor_frames: bytes) -> list[bytes]:
    return [json.dumps(obj).encode(), *tensor_frames]


def hidden_spec(target: Target, tokens: int, name: str = "hidden") -> dict[str, Any]:
    shape = [1, tokens, target.hidden_size]
    return {"name": name, "dtype": "float32", "shape": shape, "nbytes": 4 * math.prod(shape)}


def random_frames(rng: random.Random, target: Target) -> list[bytes]:
    return [rng.randbytes(rng.randrange(0, 2048)) for _ in range(rng.randrange(1, 5))]


def bad_json(rng: random.Random, target: Target) -> list[bytes]:
    text = json.dumps(header_obj(target, "ping")).encode()
    cut = rng.randrange(len(text))
    return [rng.choice([text[:cut], text[:cut] + b"\xff" + text[cut:], b"[" * 50_000, b'{"v": NaN}'])]


def bad_field(rng: random.Random, target: Target) -> list[bytes]:
    obj = header_obj(target, rng.choice(["step", "open_session", "close_session", "ping", "info"]))
    obj[rng.choice(HEADER_FIELDS)] = rng.choice(JUNK_VALUES)
    return frames_of(obj)


def huge_sizes(rng: random.Random, target: Target) -> list[bytes]:
    spec = rng.choice(
        [
            {"name": "hidden", "dtype": "float32", "shape": [2**31 - 1] * 3, "nbytes": 8},
            {"name": "hidden", "dtype": "float32", "shape": [1, 2, target.hidden_size], "nbytes": 2**62},
            {"name": "hidden", "dtype": "float32", "shape": [4096, 4096, target.hidden_size], "nbytes": 2**40},
        ]
    )
    return frames_of(header_obj(target, "step", positions=[0, 2], tensors=[spec]), b"\0" * 64)


def dead_route(rng: random.Random, target: Target) -> list[bytes]:
    """A close of a session nobody opened, routed on to a dead address, its error due to a dead reply_to."""
    dead = f"tcp://{DEAD_HOST}:{rng.randrange(1024, 65536)}"
    route = [{"address": target.address, "blocks": list(target.blocks)}, {"address": dead, "blocks": [0, 1]}]
    obj = header_obj(target, "close_session", session_id=new_id(), route=route, reply_to=dead)
    return frames_of(obj)


def session_flood(rng: random.Random, target: Target) -> list[bytes]:
    body = {"max_length": target.max_length, "secret": uuid.uuid4().hex}
    return frames_of(header_obj(target, "open_session", session_id=new_id(), body=body))


def route_loop(rng: random.Random, target: Target) -> list[bytes]:
    route = [{"address": target.address, "blocks": list(target.blocks)}] * 64
    dead = f"tcp://{DEAD_HOST}:1"
    return frames_of(header_obj(target, "step", route=route, reply_to=dead, positions=[0, 1],
                                tensors=[hidden_spec(target, 1)]), bytes(4 * target.hidden_size))  # fmt: skip


def nan_tensor(rng: random.Random, target: Target) -> list[bytes]:
    nan = b"\x00\x00\xc0\x7f"  # float32 NaN, little-endian
    spec = hidden_spec(target, 2)
    return frames_of(header_obj(target, "step", positions=[0, 2], tensors=[spec]), nan * (spec["nbytes"] // 4))


def hijack(rng: random.Random, target: Target) -> list[bytes]:
    """A close or step of a session the sender did not open (a guessed id, a guessed secret)."""
    body = {"secret": uuid.uuid4().hex}
    if rng.random() < 0.5:
        return frames_of(header_obj(target, "close_session", session_id=new_id(), body=body))
    spec = hidden_spec(target, 1)
    obj = header_obj(target, "step", session_id=new_id(), step=1, positions=[5, 6], tensors=[spec], body=body)
    return frames_of(obj, bytes(spec["nbytes"]))


def ping(rng: random.Random, target: Target) -> list[bytes]:
    """Not hostile: the control the benchmark compares with (the same number of messages, each answered at once)."""
    return frames_of({"v": 1, "kind": "ping", "request_id": new_id()})


KINDS: dict[str, Callable[[random.Random, Target], list[bytes]]] = {
    "random_frames": random_frames,
    "bad_json": bad_json,
    "bad_field": bad_field,
    "huge_sizes": huge_sizes,
    "dead_route": dead_route,
    "session_flood": session_flood,
    "route_loop": route_loop,
    "nan_tensor": nan_tensor,
    "hijack": hijack,
}
CONTROL = {"ping": ping}


# --- sending them --------------------------------------------------------------------------------------------


@dataclass
class Report:
    sent: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)
    pings_before_ms: list[float] = field(default_factory=list)
    pings_during_ms: list[float] = field(default_factory=list)
    pings_after_ms: list[float] = field(default_factory=list)
    unanswered_pings: int = 0
    seconds: float = 0.0
    answering_after: dict[str, bool] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        def worst(values: list[float]) -> float | None:
            return round(max(values), 2) if values else None

        def median(values: list[float]) -> float | None:
            return round(statistics.median(values), 2) if values else None

        return {
            "messages": sum(self.sent.values()),
            "sent": dict(self.sent),
            "seconds": round(self.seconds, 2),
            "replies": dict(self.replies),
            "ping_ms": {
                "before_median": median(self.pings_before_ms),
                "during_median": median(self.pings_during_ms),
                "during_max": worst(self.pings_during_ms),
                "after_median": median(self.pings_after_ms),
            },
            "unanswered_pings": self.unanswered_pings,
            "answering_after": self.answering_after,
            "internal_errors": self.replies.get("internal", 0),
            "attacker_cpu_seconds": round(time.process_time(), 2),
        }


class Pinger:
    """Pings every target on a connection of its own and times the pongs."""

    def __init__(self, context: transport.Context, addresses: Sequence[str]) -> None:
        self.dealers = {address: context.connect_dealer(address) for address in addresses}
        self.sent: dict[str, tuple[str, float]] = {}
        self.next_ping = 0.0

    def tick(self, into: list[float], report: Report) -> None:
        for address, dealer in self.dealers.items():
            while (received := transport.recv_frames(dealer, 0)) is not None:
                header, _ = wire.decode(received[1])
                pending = self.sent.get(address)
                if header.kind is Kind.PONG and pending and header.request_id == pending[0]:
                    into.append(1000 * (time.perf_counter() - pending[1]))
                    del self.sent[address]
        now = time.perf_counter()
        if now < self.next_ping:
            return
        self.next_ping = now + PING_INTERVAL_SECONDS
        for address, dealer in self.dealers.items():
            if address in self.sent:
                if now - self.sent[address][1] < 5.0:
                    continue
                report.unanswered_pings += 1
            request_id = new_id()
            transport.send_frames(dealer, wire.encode(wire.Header(kind=Kind.PING, request_id=request_id)))
            self.sent[address] = (request_id, now)

    def measure(self, seconds: float, into: list[float], report: Report) -> None:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            self.tick(into, report)
            time.sleep(0.002)


def count_replies(dealers: Sequence[Any], report: Report) -> None:
    for dealer in dealers:
        while (received := transport.recv_frames(dealer, 0)) is not None:
            try:
                header, _ = wire.decode(received[1])
            except wire.WireError:
                report.replies["undecodable"] += 1
                continue
            code = header.body.get("code") if header.kind is Kind.ERROR else header.kind.value
            report.replies[str(code)] += 1


def attack(
    addresses: Sequence[str],
    messages: int,
    sockets: int,
    rate: float,
    seed: int,
    source: str | None = None,
    phase: Callable[[str], None] = lambda _name: None,
    control: bool = False,
) -> Report:
    """Send `messages` hostile messages to the peers at `addresses` (from the local IP address `source`, when
    given); time pings before, during and after. `phase` hears "sending" and "sent". `control`: send pings instead,
    the same number at the same pace (what the messages cost the machine, hostile or not)."""
    targets = [ask_info(address) for address in addresses]
    rng = random.Random(seed)
    report = Report()
    generators = CONTROL if control else KINDS
    kinds = list(generators)
    with transport.Context() as context:
        pinger = Pinger(context, [target.address for target in targets])
        pinger.measure(1.0, report.pings_before_ms, report)
        dealers = [context.connect_dealer(target.address, source=source) for target in targets for _ in range(sockets)]
        started = time.perf_counter()
        phase("sending")
        for index in range(messages):
            kind = kinds[index % len(kinds)]
            target = targets[index % len(targets)]
            dealer = dealers[(index // len(targets)) % len(dealers)]
            send_when_queued(dealer, generators[kind](rng, target), dealers, pinger, report)
            report.sent[kind] += 1
            if rate > 0:
                while time.perf_counter() < started + (index + 1) / rate:
                    count_replies(dealers, report)
                    pinger.tick(report.pings_during_ms, report)
                    time.sleep(0.0005)
            elif index % 50 == 0:
                count_replies(dealers, report)
                pinger.tick(report.pings_during_ms, report)
        report.seconds = time.perf_counter() - started
        phase("sent")
        settle_replies(dealers, pinger, report)
        pinger.measure(1.0, report.pings_after_ms, report)
    report.answering_after = {target.address: answers(target.address) for target in targets}
    return report


def send_when_queued(dealer: Any, frames: list[bytes], dealers: Sequence[Any], pinger: Pinger, report: Report) -> None:
    """Send, waiting (and reading replies) while the connection's queue is full: every message reaches the peer as
    fast as it takes them in."""
    while True:
        try:
            transport.send_frames(dealer, frames)
            return
        except transport.TransportError:
            count_replies(dealers, report)
            pinger.tick(report.pings_during_ms, report)
            time.sleep(0.001)


def settle_replies(dealers: Sequence[Any], pinger: Pinger, report: Report) -> None:
    """Read replies until none has come for SETTLE_SECONDS (the peers have worked through their queues)."""
    quiet_since = time.perf_counter()
    while time.perf_counter() - quiet_since < SETTLE_SECONDS:
        before = sum(report.replies.values())
        count_replies(dealers, report)
        pinger.tick(report.pings_during_ms, report)
        if sum(report.replies.values()) != before:
            quiet_since = time.perf_counter()
        time.sleep(0.005)


def answers(address: str) -> bool:
    try:
        ask_info(address, timeout=5.0)
    except SystemExit:
        return False
    return True


# --- the benchmark -------------------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Generation:
    tokens: list[int]
    step_ms: float


def bench(args: argparse.Namespace) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM

    from swarm.client.generate import SamplingParams
    from swarm.client.run import SwarmClient
    from swarm.config import Settings
    from swarm.publish import publish
    from tools.bench_inference import load_make_model, start_peer, stop_peers

    torch.set_num_threads(1)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "llama-24M"
    if not (model_dir / "config.json").is_file():
        load_make_model().make_model("llama", model_dir, params="24M", seed=0, force=True)
    settings = Settings(home=work / "home")
    publish(str(model_dir), "bench", settings, force=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    layers = int(model.config.num_hidden_layers)
    prompt = torch.randint(0, int(model.config.vocab_size), (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        local = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                               max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)  # fmt: skip
    expected = local[0, prompt.shape[1] :].tolist()
    environment = dict(os.environ, SWARM_HOME=str(settings.home))
    half = layers // 2
    peers = [start_peer(blocks, environment, work / f"peer-{index}.log")
             for index, blocks in enumerate([f"0:{half}", f"{half}:{layers}"])]  # fmt: skip
    client = SwarmClient.connect("bench", settings, [address for _, address in peers])

    def generate() -> Generation:
        result = client.generate(prompt[0].tolist(), args.new_tokens, SamplingParams(), ban_eos=True)
        return Generation(result.generation.token_ids, 1000 * statistics.median(result.generation.token_seconds))

    try:
        generate()  # warm-up
        alone = [generate() for _ in range(args.repeat)]
        rss_before = [rss_mib(process.pid) for process, _ in peers]
        addresses = [address for _, address in peers]
        controlled, _ = generate_under_attack(generate, addresses, args, control=True)
        attacked, report = generate_under_attack(generate, addresses, args)
        result = BenchResult(alone, controlled, attacked, report, rss_before,
                             [rss_mib(process.pid) for process, _ in peers],
                             sum(process.poll() is not None for process, _ in peers))  # fmt: skip
    finally:
        client.close()
        stop_peers([process for process, _ in peers])
    print_bench(args, result, expected)


def generate_under_attack(
    generate: Callable[[], Generation], addresses: list[str], args: argparse.Namespace, control: bool = False
) -> tuple[list[Generation], dict[str, Any]]:
    """Generations run one after another for as long as an attack process (or with `control`, one sending as
    many pings) sends its messages to `addresses`."""
    command = [sys.executable, __file__, "--messages", str(args.messages), "--sockets", str(args.sockets),
               "--rate", str(args.rate), "--source", ATTACKER_SOURCE, "--json"] + (["--control"] if control else [])  # fmt: skip
    for address in addresses:
        command += ["--peer", address]
    attacker = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert attacker.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in attacker.stdout or ()], daemon=True).start()
    if json.loads(lines.get(timeout=60)).get("event") != "sending":
        raise SystemExit("the attacker did not start")
    attacked = [generate()]
    while lines.empty():  # until it says every message went out
        attacked.append(generate())
    attacker.wait(timeout=120)
    output = []
    while not lines.empty():
        output.append(lines.get())
    return attacked, json.loads(output[-1])


@dataclass
class BenchResult:
    alone: list[Generation]
    controlled: list[Generation]
    attacked: list[Generation]
    report: dict[str, Any]
    rss_before: list[float]
    rss_after: list[float]
    crashed: int


def print_bench(args: argparse.Namespace, result: BenchResult, expected: list[int]) -> None:
    report = result.report
    base, control, under = (statistics.median(run.step_ms for run in runs)
                            for runs in (result.alone, result.controlled, result.attacked))  # fmt: skip
    identical = all(run.tokens == expected for run in result.alone + result.controlled + result.attacked)
    pace = f"at {args.rate:g} a second" if args.rate > 0 else "as fast as they went"
    print(f"\n{report['messages']} hostile messages sent in {report['seconds']} s ({pace}) from {args.sockets} sockets "
          f"per peer to a 2-peer chain (24M Llama, {args.new_tokens} new tokens per generation, greedy); the control "
          f"sends as many pings the same way\n")  # fmt: skip
    print(
        "| crashes | internal errors | peer RSS before → after (MiB) | ms per token alone | with pings | "
        "under attack | attack / alone | attack / pings | generations under attack | tokens equal local generate |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rss = ", ".join(f"{before:.0f} → {after:.0f}" for before, after in zip(result.rss_before, result.rss_after,
                                                                          strict=True))  # fmt: skip
    print(f"| {result.crashed} | {report['internal_errors']} | {rss} | {base:.1f} | {control:.1f} | {under:.1f} "
          f"| {under / base:.2f}x (goal ≤ 1.5x) | {under / control:.2f}x | {len(result.attacked)} "
          f"| {'yes' if identical else 'NO'} |")  # fmt: skip
    print(f"\nsent by kind: {json.dumps(report['sent'], sort_keys=True)}")
    print(f"replies by code: {json.dumps(report['replies'], sort_keys=True)}")
    print(
        f"pings (ms): {json.dumps(report['ping_ms'])}; unanswered: {report['unanswered_pings']}; "
        f"the attacker's own CPU: {report['attacker_cpu_seconds']} s"
    )


# --- command line ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", action="append", default=[], help="a peer's compute address (repeatable)")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--sockets", type=int, default=8, help="connections per peer the messages go out on")
    parser.add_argument(
        "--rate", type=float, help="messages a second (default: as fast as they go; with --bench, 1000)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--source",
        help="local IP address to attack from, e.g. 127.0.0.2 (the peer's per-address limits see another host)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--control", action="store_true", help="send pings instead (a benign load, for comparison)")
    parser.add_argument("--bench", action="store_true", help="measure a legitimate generation under attack")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-attack"))
    parser.add_argument("--repeat", type=int, default=3, help="generations alone (--bench)")
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    if args.rate is None:
        args.rate = 1000.0 if args.bench else 0.0
    if args.bench:
        bench(args)
        return
    if not args.peer:
        parser.error("name at least one --peer, or --bench")

    def announce(name: str) -> None:
        if args.json:
            print(json.dumps({"event": name}), flush=True)

    summary = attack(
        args.peer, args.messages, args.sockets, args.rate, args.seed, args.source, announce, args.control
    ).summary()
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key}: {json.dumps(value)}")
    healthy = all(summary["answering_after"].values()) and summary["internal_errors"] == 0
    sys.exit(0 if healthy else 1)


if __name__ == "__main__":
    main()
