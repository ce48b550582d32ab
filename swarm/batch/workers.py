"""The threads of a batch: each takes the next item, runs it through the swarm with a SwarmClient (which fails
over inside a generation), tries it again on another route when it fails all the same, and hands its record to the
main thread, which writes it and reports progress.

Each item's first route is planned by the client's planner over the peers as the batch loads them: a peer with
items of this batch running on it counts as that much slower (`swarm.batch.policy.with_load`), so items go to the
route that will serve them soonest, and every replica and route gets a share even when the speeds the peers measured
for themselves disagree. Peers found gone (a failover or a failure named them as not answering) are left out of the
routes planned for later items until the peers' info, asked again, shows them answering.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from swarm.batch.job import BatchOptions, Interrupts, Reporter
from swarm.batch.output import OutputFiles
from swarm.batch.policy import Item, Tally, line_seed, retry_decision, swarm_wide, with_load
from swarm.client.generate import SamplingParams
from swarm.client.routing import NO_ANSWER_CODES, BusyError, route_avoiding
from swarm.client.run import EmbedResult, RunResult, SwarmClient, route_record
from swarm.errors import SwarmError
from swarm.wire import Hop

# Seconds between two refreshes of the peers' info after failures (each asks every candidate).
REFRESH_SECONDS = 1.0
# How often the main thread reports progress.
REPORT_SECONDS = 0.2


class _Aborted(Exception):
    pass


class BatchJob:
    """Runs items on `concurrency` threads; `run` writes their records through `files` and reports to `report`."""

    def __init__(
        self,
        client: SwarmClient,
        items: Sequence[Item],
        options: BatchOptions,
        files: OutputFiles,
        tally: Tally,
        interrupts: Interrupts,
    ) -> None:
        self.client, self.options, self.files, self.tally = client, options, files, tally
        self.interrupts = interrupts
        self.todo: queue.Queue[Item] = queue.Queue()
        for item in items:
            self.todo.put(item)
        self.results: queue.Queue[tuple[Item, dict[str, Any]] | BaseException] = queue.Queue()
        # Peers that stopped answering, avoided by later items until their info comes back; items running per peer.
        self.gone: set[str] = set()
        self.running: dict[str, int] = {}
        self._spread = itertools.count()
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._refreshed = 0.0
        # The swarm-wide failure the batch stopped on.
        self.gave_up: SwarmError | None = None

    def run(self, concurrency: int, reporter: Reporter) -> float:
        """Run every item (or until interrupted), reporting progress every REPORT_SECONDS; the seconds it took."""
        threads = [threading.Thread(target=self._work, daemon=True) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        started = last = time.monotonic()
        crash: BaseException | None = None
        stopping = False
        while True:
            finished = not any(thread.is_alive() for thread in threads)
            try:
                got = self.results.get(timeout=0.05 if finished else REPORT_SECONDS)
            except queue.Empty:
                if finished:
                    break
                got = None
            if isinstance(got, BaseException):
                crash = crash or got
                self.interrupts.stop.set()
                self.interrupts.abort.set()
            elif got is not None:
                self.files.write(got[0].line, got[1])
                self.tally.add(got[1])
            if self.interrupts.stop.is_set() and not stopping and crash is None and self.gave_up is None:
                stopping = True
                reporter.message("stopping: finishing the items in flight; Ctrl-C again drops them")
            if time.monotonic() - last >= REPORT_SECONDS:
                last = time.monotonic()
                reporter.progress(self.tally.figures(last - started))
        seconds = time.monotonic() - started
        figures = self.tally.figures(seconds)
        reporter.progress(figures)
        if crash is not None:
            raise crash
        if self.gave_up is not None:
            raise SwarmError(
                f"{self.gave_up}; stopped with {figures['done']} of {figures['total']} lines done: the same command "
                "does the rest"
            )
        return seconds

    def _work(self) -> None:
        try:
            while not self.interrupts.stop.is_set():
                try:
                    item = self.todo.get_nowait()
                except queue.Empty:
                    return
                record = self.run_item(item)
                if record is not None:
                    self.results.put((item, record))
        except BaseException as error:  # handed to the main thread, which stops the others and raises it
            self.results.put(error)

    def run_item(self, item: Item) -> dict[str, Any] | None:
        """The item's record: its result, or its error once retries are spent; None when aborted."""
        try:
            work = self.prepare(item)
        except SwarmError as error:
            return error_record(item, error, 1)
        avoid: set[str] = set()
        attempt = 1
        while True:
            try:
                return self.attempt(item, work, avoid) | {"attempts": attempt}
            except _Aborted:
                return None
            except SwarmError as error:
                decision = retry_decision(error, attempt)
                if self.interrupts.abort.is_set():
                    return None
                if decision is None and swarm_wide(error):
                    self.give_up(error)
                    return None
                if decision is None:
                    return error_record(item, error, attempt)
                if decision.avoid is not None:
                    avoid.add(decision.avoid)
                    self.mark_gone([decision.avoid])
                if self.interrupts.abort.wait(decision.pause):
                    return None
            attempt += 1

    def give_up(self, error: SwarmError) -> None:
        """Stop the batch: the swarm cannot take items (the lines left are for a re-run, not error records)."""
        with self._lock:
            self.gave_up = self.gave_up or error
        self.interrupts.stop.set()

    def max_new_tokens(self, item: Item) -> int:
        return self.options.max_new_tokens if item.max_tokens is None else item.max_tokens

    def prepare(self, item: Item) -> str | list[int]:
        """What the swarm runs for the item: prompt token ids, or the text to embed, each checked against the model's
        context. SwarmError for an item no route could run: it is written as an error at once. (Whatever fails
        later is the swarm's failure, tried again.)"""
        ids = self.client.encode(item.prompt) if item.kind != "chat" else self.client.encode_chat(item.messages)
        if not ids:
            raise SwarmError("the prompt has no tokens")
        if item.kind != "embed":
            self.client.fit_to_context(len(ids), self.max_new_tokens(item))
            return ids
        context = self.client.parts.context_length
        if context is not None and len(ids) > context:
            raise SwarmError(f"the text has {len(ids)} tokens, but {self.client.manifest.name} takes at most {context}")
        return item.prompt

    def attempt(self, item: Item, work: str | list[int], avoid: set[str]) -> dict[str, Any]:
        """One try of the item along a route planned around the peers known to be gone."""
        route = self.start_route(avoid)
        try:
            if isinstance(work, str):
                return embed_record(item, self.client.embed(work, route=route))
            result = self.client.generate(
                work,
                self.max_new_tokens(item),
                sampling(self.options, item.line),
                ban_eos=self.options.ban_eos,
                route=route,
                pinned=False,
                should_stop=self.interrupts.abort.is_set,
            )
        finally:
            self.end_route(route)
        if self.interrupts.abort.is_set():
            raise _Aborted
        gone = [record["peer"] for record in result.failovers if record.get("code") in NO_ANSWER_CODES]
        if gone:
            self.mark_gone(gone)
        return generation_record(item, result, self.options.seed)

    def start_route(self, avoid: set[str]) -> list[Hop] | None:
        """A route for the next item, counted as running on its peers until `end_route`: planned as the client plans
        (fewest hops, then fastest, equals taking turns) with each peer slowed by the items running on it, around
        the gone peers and those this item saw fail (the latter alone when the former leave no route). None while
        the swarm is busy: the generation then waits for a free session itself."""
        with self._lock:
            peers = with_load(self.client.peers, self.running)
            for failed in dict.fromkeys([frozenset(self.gone | avoid), frozenset(avoid)]):
                try:
                    route = route_avoiding(self.client.manifest.num_blocks, peers, failed, (), next(self._spread))
                except BusyError:
                    return None
                except SwarmError:
                    continue
                for hop in route:
                    self.running[hop.address] = self.running.get(hop.address, 0) + 1
                return route
        try:
            self.client.plan(failed=avoid)  # the client's own error, naming the candidates that did not answer
        except BusyError:
            return None
        return None

    def end_route(self, route: list[Hop] | None) -> None:
        with self._lock:
            for hop in route or ():
                self.running[hop.address] -= 1

    def mark_gone(self, addresses: Sequence[str]) -> None:
        with self._lock:
            self.gone.update(addresses)
        self.refresh()

    def refresh(self) -> None:
        """Ask the peers for their info again (one thread at a time, at most every REFRESH_SECONDS); peers that
        answer are no longer avoided."""
        if not self._refresh_lock.acquire(blocking=False):
            return
        try:
            if time.monotonic() - self._refreshed < REFRESH_SECONDS:
                return
            try:
                self.client.refresh_peers()
            except SwarmError:
                return
            finally:
                self._refreshed = time.monotonic()
            answered = {peer.address for peer in self.client.peers}
            with self._lock:
                self.gone -= answered
        finally:
            self._refresh_lock.release()


def sampling(options: BatchOptions, line: int) -> SamplingParams:
    """Sampling of input line `line`: with --seed S, the line's own seed derived from S (see `line_seed`)."""
    seed = None if options.seed is None else line_seed(options.seed, line)
    return SamplingParams(options.temperature, options.top_k, options.top_p, seed).check()


def base_record(item: Item) -> dict[str, Any]:
    return {"line": item.line} | ({"id": item.id} if item.has_id else {})


def generation_record(item: Item, result: RunResult, seed: int | None) -> dict[str, Any]:
    generation = result.generation
    prompt, completion = len(generation.prompt_ids), len(generation.token_ids)
    record = base_record(item) | {
        "text": generation.text,
        "tokens": generation.token_ids,
        "finish_reason": "stop" if generation.stopped_on_eos else "length",
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        "route": route_record(result.route),
        "failovers": len(result.failovers),
    }
    if seed is not None:
        record["seed"] = line_seed(seed, item.line)
    if result.speculation is not None:
        record["speculation"] = result.speculation
    return record


def embed_record(item: Item, result: EmbedResult) -> dict[str, Any]:
    return base_record(item) | {
        "embedding": result.embedding,
        "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
        "route": route_record(result.route),
    }


def error_record(item: Item, error: SwarmError, attempts: int) -> dict[str, Any]:
    return base_record(item) | {"error": str(error), "attempts": attempts}
