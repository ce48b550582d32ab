"""One `swarm batch`: check the input, resolve the model, see what an earlier run left to do, find the peers, run.

Everything that can be wrong with the input or the output file is found before torch is imported or a peer is
asked anything: a malformed line fails in a moment, with no output written.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from swarm.batch.output import OutputFiles, read_input, read_records, side_path
from swarm.batch.policy import (
    BatchInputError,
    Item,
    Resume,
    Tally,
    default_concurrency,
    parse_items,
    plan_resume,
    route_count,
)
from swarm.config import Settings
from swarm.errors import SwarmError

if TYPE_CHECKING:
    from swarm.client.run import SwarmClient


@dataclass(frozen=True)
class BatchOptions:
    """How every item is generated: --max-new-tokens (a line's max_tokens overrides it) and the sampling flags
    (with --seed S each line samples with its own seed, `swarm.batch.policy.line_seed(S, line)`)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    ban_eos: bool = False


@dataclass
class Interrupts:
    """Set from signal handlers: `stop` (the first Ctrl-C) starts no new item, `abort` (the second) drops the items
    in flight too."""

    stop: threading.Event
    abort: threading.Event


class Reporter(Protocol):
    """Where a batch says how it goes: a bar on a terminal, or JSON lines."""

    def started(self, event: dict[str, Any]) -> None: ...
    def progress(self, figures: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...


@dataclass(frozen=True)
class BatchRequest:
    """What `swarm batch` was asked: the model, the files, where the peers are."""

    model: str
    input: Path
    output: Path
    # --route flags, each HOST:PORT[,HOST:PORT...]: the peers to use (all of them together), instead of the DHT's.
    routes: Sequence[str] = ()
    # BitTorrent peers to fetch the client's chunks from (--peer).
    torrent_peers: Sequence[str] = ()
    concurrency: int | None = None
    retry_errors: bool = False


def install_interrupts() -> Interrupts:
    """SIGINT/SIGTERM handlers: the first signal stops starting items, the next drops the ones in flight."""
    interrupts = Interrupts(threading.Event(), threading.Event())

    def handle(_signum: int, _frame: FrameType | None) -> None:
        (interrupts.abort if interrupts.stop.is_set() else interrupts.stop).set()

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, handle)
    return interrupts


def run_batch(
    request: BatchRequest,
    settings: Settings,
    options: BatchOptions,
    reporter: Reporter,
    interrupts: Interrupts | None = None,
) -> dict[str, Any]:
    """Run what is left of the batch; returns the summary (the `done` or `interrupted` event). Without
    `interrupts`, SIGINT and SIGTERM handlers are installed when the items start (before that, Ctrl-C ends the
    command at once: nothing has been done)."""
    from swarm.client.resolve import Resolver, is_causal, parse_route

    if request.output.resolve() == request.input.resolve():
        raise SwarmError("the output must be another file than the input")
    if not request.output.resolve().parent.is_dir():
        raise SwarmError(f"cannot write the output {request.output}: its directory does not exist")
    lines = read_input(request.input)
    _items(request, lines, causal=None)  # the lines themselves, before anything else
    addresses = list(dict.fromkeys(address for text in request.routes for address in parse_route(text)))
    resolver = Resolver(settings, request.torrent_peers)
    try:
        manifest, torrent_data = resolver.manifest(request.model)
        items = _items(request, lines, causal=is_causal(manifest))
        resume, output_clean = _resume(request, items)
        errors_before = sum("error" in record for record in [*resume.prefix, *resume.held.values()])
        tally = Tally(len(items), len(items) - len(resume.todo), errors_before)
        if not resume.todo:
            return _summary("done", request, tally, 0.0, complete=True)
        from swarm.batch.workers import BatchJob
        from swarm.client.run import SwarmClient

        _quiet_transformers()
        client = SwarmClient.from_resolved(resolver, manifest, torrent_data, addresses, spread_seed=options.seed)
    finally:
        resolver.close()
    with client:
        todo = set(resume.todo)
        remaining = [item for item in items if item.line in todo]
        _check_chats(client, remaining)
        _check_route(client)
        concurrency = request.concurrency or default_concurrency(client.manifest.num_blocks, client.peers, len(todo))
        reporter.started(_started(request, client, tally, concurrency))
        files = OutputFiles(request.output, [item.line for item in items], resume, output_clean)
        job = BatchJob(client, remaining, options, files, tally, interrupts or install_interrupts())
        try:
            seconds = job.run(concurrency, reporter)
        finally:
            files.close()
    complete = files.in_order.complete
    return _summary("done" if complete else "interrupted", request, tally, seconds, complete)


def _items(request: BatchRequest, lines: Sequence[str], causal: bool | None) -> list[Item]:
    """The input's items; the error names the input file and the line."""
    try:
        return parse_items(lines, causal)
    except BatchInputError as error:
        raise BatchInputError(f"{request.input}: {error}") from None


def _resume(request: BatchRequest, items: Sequence[Item]) -> tuple[Resume, bool]:
    output, clean = read_records(request.output)
    side, _ = read_records(side_path(request.output))
    return plan_resume([item.line for item in items], output, side, request.retry_errors), clean


def _check_chats(client: SwarmClient, items: Sequence[Item]) -> None:
    """A chat line needs the model's chat template: refuse before any work when it has none."""
    chat = next((item for item in items if item.kind == "chat"), None)
    if chat is not None and not getattr(client.parts.tokenizer, "chat_template", None):
        raise SwarmError(
            f"line {chat.line} is a chat, but {client.manifest.name} has no chat template: give prompts instead"
        )


def _check_route(client: SwarmClient) -> None:
    """The peers found make a route (busy ones too): otherwise the one-line error says which blocks lack a peer
    and which candidates did not answer, before any work."""
    from swarm.client.routing import BusyError

    with contextlib.suppress(BusyError):
        client.plan()


def _quiet_transformers() -> None:
    """Loading the local parts would print progress bars and tokenizer notes over the batch's own progress."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def _started(request: BatchRequest, client: SwarmClient, tally: Tally, concurrency: int) -> dict[str, Any]:
    return {
        "event": "started",
        "model": client.manifest.name,
        "items": tally.total,
        "done_before": tally.done_before,
        "todo": tally.total - tally.done_before,
        "concurrency": concurrency,
        "routes": route_count(client.manifest.num_blocks, client.peers),
        "peers": [peer.address for peer in client.peers],
        "output": str(request.output),
    }


def _summary(event: str, request: BatchRequest, tally: Tally, seconds: float, complete: bool) -> dict[str, Any]:
    return (
        {"event": event}
        | tally.figures(seconds)
        | {
            "complete": complete,
            "errors_total": tally.errors + tally.errors_before,
            "per_peer": dict(sorted(tally.per_peer.items())),
            "output": str(request.output),
        }
    )
