"""Kill a hop of a live route mid-generation and measure what the failover costs (used by tests/test_failover.py and
tools/bench_failover.py).

A ChainPool keeps real `swarm join` peers for every block of a model, each hosting one block, and replaces a killed
peer with a fresh one in the background. `kill_run` generates along one peer per block, kills the hop at a given
position once some text has come, and returns what the client reported.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm.client.generate import SamplingParams
from swarm.client.run import SwarmClient
from swarm.wire import Hop
from tests.peer_harness import PEER_START_TIMEOUT, PeerProcess, start_peers

POSITIONS = ("first", "middle", "last")


class ChainPool:
    """Live one-block peers per block; `replace` starts a new peer for a killed one without waiting for it, as long
    as the block has replacements left (`replacements`: per block; none given: no limit). Every start costs seconds
    of CPU, so a test that knows how many peers it will kill starts no more than it needs."""

    def __init__(
        self,
        model: str,
        blocks: int,
        environment: Mapping[str, str],
        log_dir: Path,
        replacements: Mapping[int, int] | None = None,
    ) -> None:
        self.model, self.blocks = model, blocks
        self.environment, self.log_dir = dict(environment), log_dir
        self.live: dict[int, list[PeerProcess]] = {block: [] for block in range(blocks)}
        self.starting = dict.fromkeys(range(blocks), 0)
        self.replacements = dict(replacements) if replacements is not None else None
        # Addresses of killed peers: nothing listens there any more.
        self.dead: list[str] = []
        self.started: list[PeerProcess] = []
        self.errors: list[BaseException] = []
        self.condition = threading.Condition()
        self.starters: list[threading.Thread] = []
        self.closing = False

    def start(self, block: int, count: int = 1) -> None:
        """Start `count` peers for `block` in the background (each ready once it reports "serving")."""
        for _ in range(count):
            with self.condition:
                self.starting[block] += 1
            thread = threading.Thread(target=self._start, args=(block,), daemon=True)
            thread.start()
            self.starters.append(thread)

    def _start(self, block: int) -> None:
        try:
            arguments = ["--model", self.model, "--blocks", f"{block}:{block + 1}"]
            (peer,) = start_peers([arguments], self.environment, self.log_dir)
        except BaseException as error:  # reported to whoever waits for a peer
            with self.condition:
                self.errors.append(error)
                self.condition.notify_all()
            return
        with self.condition:
            self.starting[block] -= 1
            self.started.append(peer)
            if not self.closing:
                self.live[block].append(peer)
                self.condition.notify_all()
                return
        _kill(peer)

    def peers(self, block: int, count: int) -> list[PeerProcess]:
        """The first `count` live peers of `block`, waiting for peers still starting."""
        with self.condition:
            if len(self.live[block]) + self.starting[block] < count:
                raise RuntimeError(f"block {block} has fewer than {count} peers left (no replacements left)")
            ready = self.condition.wait_for(
                lambda: bool(self.errors) or len(self.live[block]) >= count, timeout=PEER_START_TIMEOUT * 2
            )
            if self.errors:
                raise self.errors[0]
            if not ready:
                raise TimeoutError(f"fewer than {count} peers of block {block} came up")
            return self.live[block][:count]

    def replace(self, peer: PeerProcess, killed: bool = True) -> None:
        """Forget a peer that is being killed (or frozen) and start another for its block (if it has replacements
        left)."""
        with self.condition:
            block = next(block for block, peers in self.live.items() if peer in peers)
            self.live[block].remove(peer)
            if killed:
                self.dead.append(peer.address)
            if self.replacements is not None:
                if self.replacements[block] <= 0:
                    return
                self.replacements[block] -= 1
        self.start(block)

    def addresses(self) -> list[str]:
        with self.condition:
            return [peer.address for peers in self.live.values() for peer in peers]

    def close(self) -> None:
        """Kill every peer, those still starting included (once they serve)."""
        with self.condition:
            self.closing = True
            started = list(self.started)
        for peer in started:
            _kill(peer)
        for thread in self.starters:
            thread.join(timeout=PEER_START_TIMEOUT)


def _kill(peer: PeerProcess) -> None:
    if peer.process.poll() is None:
        peer.process.kill()
        peer.process.wait()


class Killer:
    """Sends `sig` to a peer once `after` pieces of text came. From another thread by default, so the signal lands
    wherever the generation is then (mostly inside the next step); `synchronous` signals and reaps the peer before
    the next step is sent (a hop that dies between steps)."""

    def __init__(self, peer: PeerProcess, after: int, sig: int = signal.SIGKILL, synchronous: bool = False) -> None:
        self.peer, self.after, self.sig, self.synchronous = peer, after, sig, synchronous
        self.pieces = 0
        self.killed_at: float | None = None
        self._due = threading.Event()
        self._thread = threading.Thread(target=self._wait_and_kill, daemon=True)
        if not synchronous:
            self._thread.start()

    def on_text(self, _piece: str) -> None:
        self.pieces += 1
        if self.pieces != self.after:
            return
        if self.synchronous:
            self._kill()
        else:
            self._due.set()

    def _wait_and_kill(self) -> None:
        if self._due.wait(timeout=120):
            self._kill()

    def _kill(self) -> None:
        self.killed_at = time.monotonic()
        os.kill(self.peer.process.pid, self.sig)
        if self.sig == signal.SIGKILL:
            self.peer.process.wait()

    def join(self) -> None:
        self._due.set()  # a generation that ended before `after` pieces: the thread kills now, and the run says so
        if not self.synchronous:
            self._thread.join(timeout=10)


@dataclass
class KillRun:
    position: str
    victim: str
    route: list[Hop]
    tokens: list[int]
    failovers: list[dict[str, Any]]
    # Whether the signal went out before the generation ended (else the run proves nothing).
    killed_in_time: bool
    seconds: float

    @property
    def seconds_lost(self) -> float:
        return max((float(record.get("seconds_lost", 0.0)) for record in self.failovers), default=0.0)

    @property
    def detect_seconds(self) -> float:
        return max((float(record.get("detect_seconds", 0.0)) for record in self.failovers), default=0.0)

    @property
    def named_the_victim(self) -> bool:
        return [(record["peer"], record["code"]) for record in self.failovers] == [(self.victim, "unreachable")]


def position_index(position: str, blocks: int) -> int:
    return {"first": 0, "middle": blocks // 2, "last": blocks - 1}[position]


def kill_run(
    pool: ChainPool,
    client: SwarmClient,
    prompt: str,
    new_tokens: int,
    position: str,
    after: int,
    sig: int = signal.SIGKILL,
    synchronous: bool = False,
) -> KillRun:
    """Generate along one peer per block with the hop at `position` signalled after `after` pieces of text (the
    client knows a spare for it); the victim is replaced in the background."""
    index = position_index(position, pool.blocks)
    victim = pool.peers(index, 2)[0]
    route = [Hop(pool.peers(block, 1)[0].address, (block, block + 1)) for block in range(pool.blocks)]
    route[index] = Hop(victim.address, (index, index + 1))
    client.find_peers(pool.addresses(), pinned=False)
    killer = Killer(victim, after, sig, synchronous)
    started = time.monotonic()
    try:
        result = client.generate(
            prompt, new_tokens, SamplingParams(), on_text=killer.on_text, route=route, pinned=False
        )
        ended = time.monotonic()
    finally:
        killer.join()
        pool.replace(victim, killed=sig == signal.SIGKILL)
    in_time = killer.killed_at is not None and killer.killed_at < ended
    tokens = result.generation.token_ids
    return KillRun(position, victim.address, route, tokens, result.failovers, in_time, ended - started)


def summarize(runs: Sequence[KillRun], reference: Sequence[int]) -> list[dict[str, Any]]:
    """Per position: runs, runs with the reference tokens, runs whose one failover named the killed hop, and the
    seconds lost and detection times (median, max)."""
    rows = []
    for position in POSITIONS:
        chosen = [run for run in runs if run.position == position]
        if not chosen:
            continue
        lost = [run.seconds_lost for run in chosen]
        detect = [run.detect_seconds for run in chosen]
        rows.append(
            {
                "position": position,
                "runs": len(chosen),
                "identical": sum(run.tokens == list(reference) for run in chosen),
                "named": sum(run.named_the_victim for run in chosen),
                "lost_median": round(statistics.median(lost), 4),
                "lost_max": max(lost),
                "detect_median": round(statistics.median(detect), 4),
                "detect_max": max(detect),
                "lost_all": sorted(lost),
            }
        )
    return rows


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| hop killed | runs | tokens identical | failover names the killed hop | seconds lost median | max "
        "| detection median | max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['position']} | {row['runs']} | {row['identical']}/{row['runs']} | {row['named']}/{row['runs']} "
            f"| {row['lost_median']:.3f} | {row['lost_max']:.3f} | {row['detect_median']:.3f} | {row['detect_max']:.3f} |"
        )
    return "\n".join(lines)
