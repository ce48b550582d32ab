"""The policy parts of a batch job (pure): reading input lines into items, which lines a re-run still has to do,
writing results in input order, when a failed item is tried again, and how many items run at once.

Nothing here touches files, sockets or threads (`swarm.batch.output` and `swarm.batch.workers` do), nor imports
torch: a malformed input fails before anything heavy is loaded. tests/test_batch_policy.py tests these with tables.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from swarm.errors import SwarmError

if TYPE_CHECKING:
    from swarm.client.routing import PeerInfo

Kind = Literal["prompt", "chat", "embed"]
# The key that says what a line asks for, per kind.
KIND_KEYS: dict[str, Kind] = {"prompt": "prompt", "messages": "chat", "input": "embed"}
OPTIONAL_KEYS = frozenset({"id", "max_tokens"})
# Tries of one item (the first included) before it is written as an error record.
MAX_ATTEMPTS = 4
# Pause before the second try of an item the swarm could not take (busy, no route), doubling up to MAX_RETRY_PAUSE.
RETRY_PAUSE = 0.25
MAX_RETRY_PAUSE = 2.0
# Sessions one route is given at once by default: a peer computes one step at a time, and a few sessions each keep
# it busy while the others' messages are on the wire or in the client.
SESSIONS_PER_ROUTE = 4
# Most items run at once by default, whatever the swarm's size (each is a client thread with its own sockets).
MAX_DEFAULT_CONCURRENCY = 64


class BatchInputError(SwarmError):
    """An input line that is not a batch item; the message names the line."""


@dataclass(frozen=True)
class Item:
    """One input line: a completion (`prompt`), a chat (`messages`) or a text to embed (`input`)."""

    line: int
    kind: Kind
    prompt: str = ""
    messages: tuple[Mapping[str, str], ...] = ()
    id: Any = None
    # Whether the line gave an id (it may be null): its records then carry it.
    has_id: bool = False
    max_tokens: int | None = None


def parse_line(line: int, text: str) -> Item | None:
    """The item of input line number `line` (1-based); None for a blank line; BatchInputError naming the line."""
    if not text.strip():
        return None

    def fail(why: str) -> BatchInputError:
        return BatchInputError(f"line {line}: {why}")

    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise fail(f"not JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(value, dict):
        raise fail(f'expected a JSON object such as {{"prompt": "..."}}, got {type(value).__name__}')
    kinds = [key for key in KIND_KEYS if key in value]
    if len(kinds) != 1:
        raise fail('give exactly one of "prompt" (a completion), "messages" (a chat) or "input" (to embed)')
    unknown = sorted(set(value) - set(KIND_KEYS) - OPTIONAL_KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} (known: prompt, messages, input, id, max_tokens)")
    kind = KIND_KEYS[kinds[0]]
    max_tokens = value.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0):
        raise fail(f"max_tokens must be a whole number >= 0, got {json.dumps(max_tokens)[:40]}")
    item_id = value.get("id")
    if isinstance(item_id, (dict, list)):
        raise fail("id must be a string, a number or null")
    common: dict[str, Any] = {"id": item_id, "has_id": "id" in value, "max_tokens": max_tokens}
    if kind == "chat":
        return Item(line, kind, messages=_messages(value["messages"], fail), **common)
    text_value = value[kinds[0]]
    if not isinstance(text_value, str) or not text_value:
        raise fail(f'"{kinds[0]}" must be a non-empty string')
    return Item(line, kind, prompt=text_value, **common)


def _messages(value: object, fail: Any) -> tuple[Mapping[str, str], ...]:
    """A chat's messages: a non-empty list of {"role": str, "content": str}."""
    if not isinstance(value, list) or not value:
        raise fail('"messages" must be a non-empty list of {"role": ..., "content": ...} objects')
    for index, message in enumerate(value, start=1):
        if (
            not isinstance(message, dict)
            or set(message) != {"role", "content"}
            or not all(isinstance(part, str) for part in message.values())
        ):
            raise fail(f'message {index} must be {{"role": "...", "content": "..."}} with string values')
    return tuple({"role": m["role"], "content": m["content"]} for m in value)


def parse_items(lines: Iterable[str], causal: bool | None = None) -> list[Item]:
    """Every item of an input file's lines, all checked before any work starts: BatchInputError naming the first
    malformed line (and counting the others). `causal`: whether the model generates (prompts and chats) or embeds
    (inputs); None checks only the lines themselves."""
    items: list[Item] = []
    errors: list[str] = []
    for number, text in enumerate(lines, start=1):
        try:
            item = parse_line(number, text)
        except BatchInputError as error:
            errors.append(str(error))
            continue
        if item is None:
            continue
        problem = kind_problem(item, causal)
        if problem:
            errors.append(f"line {number}: {problem}")
            continue
        items.append(item)
    if errors:
        # One line names the first malformed line; the others are counted.
        more = len(errors) - 1
        raise BatchInputError(errors[0] + (f" (and {more} more malformed line{'s' * (more > 1)})" if more else ""))
    if not items:
        raise BatchInputError('the input has no items: give one JSON object per line, such as {"prompt": "..."}')
    return items


def kind_problem(item: Item, causal: bool | None) -> str | None:
    """Why the model cannot do `item` (prompts and chats need a causal LM, inputs an encoder), or None."""
    if causal is None or (item.kind == "embed") != causal:
        return None
    if causal:
        return 'the model generates text: give "prompt" or "messages", not "input"'
    return f'the model is an encoder: give "input" (a text to embed), not "{"prompt" if item.kind == "prompt" else "messages"}"'


def line_seed(seed: int, line: int) -> int:
    """The sampling seed of input line `line` in a batch run with --seed `seed`: the same for every run, different
    for every line (`swarm run --seed` with it gives that line's result). The first 8 bytes of
    SHA-256("SEED:LINE") as a big-endian number, less its top bit."""
    digest = hashlib.sha256(f"{seed}:{line}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# ----- resuming -----


@dataclass
class Resume:
    """Where a run starts: `prefix` — the records the output keeps (lines in input order, none missing before the
    last), `held` — records already done for lines after the first missing one (from the side file, or from an
    output that is rewritten to its prefix), `todo` — lines still to do, in input order. `rewrite`: the output
    holds more than `prefix` and is cut back to it (the rest is kept in `held`)."""

    prefix: list[dict[str, Any]]
    held: dict[int, dict[str, Any]]
    todo: list[int]
    rewrite: bool


def plan_resume(
    order: Sequence[int],
    output: Sequence[Mapping[str, Any]],
    side: Sequence[Mapping[str, Any]],
    retry_errors: bool = False,
) -> Resume:
    """Which lines of the input (`order`: its item line numbers) are done, from the records of an earlier run's
    output and side file. A line's result record is preferred over an error record for it; with `retry_errors`
    error records count as not done. SwarmError when a record names a line the input does not have."""
    wanted = set(order)
    known: dict[int, dict[str, Any]] = {}
    for where, records in (("output", output), ("side file", side)):
        for record in records:
            line = record_line(record)
            if line not in wanted:
                raise SwarmError(
                    f"the {where} holds a record for line {line}, which is not an item of the input: "
                    "is it the output of another input file?"
                )
            if line not in known or ("error" in known[line] and "error" not in record):
                known[line] = dict(record)
    if retry_errors:
        known = {line: record for line, record in known.items() if "error" not in record}
    done = set(known)
    prefix: list[dict[str, Any]] = []
    for line in order:
        if line not in known:
            break
        prefix.append(known.pop(line))
    todo = [line for line in order if line not in done]
    # The output is appended to when it holds exactly the prefix; otherwise it is cut back to it first.
    rewrite = [dict(record) for record in output] != prefix
    return Resume(prefix, known, todo, rewrite)


def record_line(record: Mapping[str, Any]) -> int:
    """The input line number a result record is for; SwarmError for a record without one."""
    line = record.get("line")
    if isinstance(line, bool) or not isinstance(line, int):
        raise SwarmError(f"a record without a line number ({json.dumps(record)[:60]}): not a swarm batch output")
    return line


class InOrder:
    """Results in input order: `add` takes a line's record as it finishes (in any order) and returns the records
    that can now be written, holding the others until the lines before them are done."""

    def __init__(self, order: Sequence[int], written: int = 0, held: Mapping[int, dict[str, Any]] | None = None):
        """`order`: every item's line number in input order; `written`: how many of them the output holds;
        `held`: records of later lines already done."""
        self.order = list(order)
        self.position = written
        self.held: dict[int, dict[str, Any]] = dict(held or {})

    def add(self, line: int, record: dict[str, Any]) -> list[dict[str, Any]]:
        self.held[line] = record
        return self.ready()

    def ready(self) -> list[dict[str, Any]]:
        """The held records that continue the output, in order (removed from the held ones)."""
        out = []
        while self.position < len(self.order) and self.order[self.position] in self.held:
            out.append(self.held.pop(self.order[self.position]))
            self.position += 1
        return out

    @property
    def complete(self) -> bool:
        return self.position == len(self.order)


# ----- retries -----


@dataclass(frozen=True)
class Retry:
    """Try a failed item again: without `avoid` (a peer that failed), after `pause` seconds."""

    avoid: str | None = None
    pause: float = 0.0


def retry_decision(error: SwarmError, attempt: int, max_attempts: int = MAX_ATTEMPTS) -> Retry | None:
    """Whether an item whose `attempt`-th try (1-based) failed with `error` is tried again, and how; None: write it
    as an error record. The item itself was checked before it went to the swarm (prompt length, chat template), so
    a failure here is the swarm's: a peer that failed in a way another route avoids is avoided; anything else (a
    busy swarm, no route at the moment, a route too slow to answer in time) is tried again after a pause. Only a
    refusal any peer would give (the request is malformed) is not tried again. An error that wraps another (no
    other route after a failover) counts as the one it wraps."""
    from swarm.client.routing import PeerFailure, fails_over

    if attempt >= max_attempts:
        return None
    pause = min(RETRY_PAUSE * 2 ** (attempt - 1), MAX_RETRY_PAUSE)
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, PeerFailure):
            if not fails_over(cause.code):
                return None
            return Retry(pause=pause) if cause.code == "busy" else Retry(avoid=cause.address)
        cause = cause.__cause__
    return Retry(pause=pause)


def swarm_wide(error: SwarmError) -> bool:
    """Whether a failure is the swarm's rather than the item's: some blocks have no peer, or every peer that could
    serve them is busy (also when wrapped, as after a failover with no other route). A batch stops on those once an
    item's tries are spent, rather than write every line left as an error."""
    from swarm.client.routing import BusyError, PeerFailure, UncoveredError

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, PeerFailure):
            return False
        if isinstance(cause, (BusyError, UncoveredError)):
            return True
        cause = cause.__cause__
    return False


# ----- spreading items -----


def with_load(peers: Sequence[PeerInfo], running: Mapping[str, int]) -> list[PeerInfo]:
    """The peers as one batch sees them with `running[address]` of its items on each, for the route planner: a
    peer computes one step at a time, so each item already on it makes a new one wait about one more step. Its
    measured throughput is divided by (running + 1), and its free sessions are those the batch's own items leave
    (the planner's view of the peers' load, asked seconds ago, counts this batch's items of that moment; sessions
    of other clients show when a peer refuses one as busy, which fails over)."""
    from dataclasses import replace

    loaded = []
    for peer in peers:
        count = max(running.get(peer.address, 0), 0)
        free = max(peer.max_sessions - count, 0)
        loaded.append(replace(peer, throughput=peer.throughput / (count + 1), free_sessions=free))
    return loaded


# ----- how many at once -----


def route_count(num_blocks: int, peers: Sequence[PeerInfo]) -> int:
    """How many routes the peers make side by side: replicas for a model kept whole, else the fewest peers any one
    block has (each route needs one of them)."""
    if num_blocks == 0:
        return sum(1 for peer in peers if peer.replica)
    covering = [0] * num_blocks
    for peer in peers:
        for block in range(max(peer.blocks[0], 0), min(peer.blocks[1], num_blocks)):
            covering[block] += 1
    return min(covering, default=0)


def session_capacity(num_blocks: int, peers: Sequence[PeerInfo]) -> int:
    """Sessions the peers can hold at once over whole routes: for each block, the sessions of its peers added up;
    the fewest over all blocks."""
    if num_blocks == 0:
        return sum(peer.max_sessions for peer in peers if peer.replica)
    capacity = [0] * num_blocks
    for peer in peers:
        for block in range(max(peer.blocks[0], 0), min(peer.blocks[1], num_blocks)):
            capacity[block] += peer.max_sessions
    return min(capacity, default=0)


def default_concurrency(num_blocks: int, peers: Sequence[PeerInfo], items: int) -> int:
    """Items to run at once when --concurrency is not given: SESSIONS_PER_ROUTE per route the swarm has, within the
    sessions its peers take and MAX_DEFAULT_CONCURRENCY, and no more than there are items; at least 1."""
    wanted = route_count(num_blocks, peers) * SESSIONS_PER_ROUTE
    return max(1, min(wanted, session_capacity(num_blocks, peers), MAX_DEFAULT_CONCURRENCY, items))


# ----- progress -----


@dataclass
class Tally:
    """Counts of a run so far, for progress lines: items done (this run and before), errors, tokens generated."""

    total: int
    done_before: int
    # Error records among those done before.
    errors_before: int = 0
    done: int = 0
    errors: int = 0
    tokens: int = 0
    per_peer: dict[str, int] = field(default_factory=dict)

    def add(self, record: Mapping[str, Any]) -> None:
        self.done += 1
        if "error" in record:
            self.errors += 1
            return
        # Tokens generated; for an embedding, the tokens it read.
        usage = record.get("usage", {})
        self.tokens += int(usage.get("completion_tokens", usage.get("prompt_tokens", 0)))
        for hop in record.get("route", ()):
            self.per_peer[hop["address"]] = self.per_peer.get(hop["address"], 0) + 1

    def figures(self, seconds: float) -> dict[str, Any]:
        """done/total, rates and the seconds left at this run's rate (None until one item is done)."""
        remaining = self.total - self.done_before - self.done
        rate = self.done / seconds if seconds > 0 else 0.0
        return {
            "done": self.done_before + self.done,
            "total": self.total,
            "errors": self.errors,
            "ran": self.done,
            "tokens": self.tokens,
            "seconds": round(seconds, 3),
            "items_per_second": round(rate, 3),
            "tokens_per_second": round(self.tokens / seconds, 3) if seconds > 0 else 0.0,
            "eta_seconds": round(remaining / rate, 1) if rate > 0 and math.isfinite(rate) else None,
        }
