"""The compute peer's ROUTER loop: validate, run the hosted span, forward to the next hop or reply.

Protocol (compute protocol v1, see swarm/wire.py for the framing):
- `hello`/`info` → `info`; `ping` → `pong`: answered on the same connection.
- `open_session`, `step`, `close_session` are routed: `route[0]` is this peer. It runs its blocks, pops
  the hop and forwards to the next hop through a cached DEALER; the last hop sends `result` to `reply_to`.
- A failure becomes an `error` (body: code, message, peer) sent to `reply_to` when the message had one,
  else back to the sender. Nothing a client sends can stop the loop.
- Every outgoing connection carries ZeroMQ heartbeats: a next hop that died is known as soon as its connection
  resets (or stops answering pings), and a step for it fails at once with "unreachable" naming that hop, before
  this peer spends time computing it.
- `throughput` in `info` is smoothed over the decode steps this peer really ran, seeded by its start-up benchmark.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch

import swarm
from swarm import transport, wire
from swarm.address import Address
from swarm.errors import SwarmError
from swarm.measure import SpeedMeter
from swarm.peer.admission import (
    RATE_LIMITED,
    AdmissionLimits,
    Bucket,
    admit_batch,
    admit_stateless,
    free_sessions,
    stateless_groups,
    take_token,
)
from swarm.peer.metrics import MALFORMED, PeerMetrics, PeerState
from swarm.peer.replica import ReplicaRunner
from swarm.peer.runner import SpanRunner
from swarm.peer.sessions import Session, SessionTable
from swarm.tasks.protocol import BAD_INPUT, request_input, result_message
from swarm.tasks.runner import TaskOutput, TaskRunner
from swarm.wire import ErrorCode, Header, Kind, WireError

log = logging.getLogger("swarm.peer")

INFO_VERSION = 1
# Error codes of the compute protocol beyond swarm.wire.ErrorCode.
UNKNOWN_SESSION = "unknown_session"
BAD_STEP = "bad_step"
BUSY = "busy"
WRONG_BLOCKS = "wrong_blocks"
INTERNAL = "internal"
SHUTTING_DOWN = "shutting_down"
UNREACHABLE = "unreachable"
NOT_OWNER = "not_owner"
# What a session's secret may look like (the client makes it: random hex, in practice).
_SECRET_RE = re.compile(r"[A-Za-z0-9]{16,64}")

_ROUTED_KINDS = frozenset({Kind.OPEN_SESSION, Kind.STEP, Kind.CLOSE_SESSION, Kind.TASK})
_FLOAT_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})
# Ports tried after a taken fixed listen port.
BIND_RETRIES = 10
# How long one loop iteration waits for a message before housekeeping (session expiry, the tick callback).
_POLL_SECONDS = 0.2
# Sources whose session-opening rate a peer remembers (the least recent are forgotten first).
_MAX_TRACKED_SOURCES = 4096
# ... and while messages wait for a connection to come up.
_WAITING_POLL_SECONDS = 0.005
# Seconds without an answered heartbeat after which a connection to another peer or a client counts as lost.
DEFAULT_LIVENESS_SECONDS = 2.0

Runner = SpanRunner | ReplicaRunner | TaskRunner


class PeerError(Exception):
    """A request this peer refuses; becomes an `error` reply with `code`. `peer` names the peer at fault when it
    is not this one (a next hop that cannot be reached)."""

    def __init__(self, code: str, message: str, peer: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.peer = peer


@dataclass(frozen=True)
class PeerIdentity:
    """What `info` says about the model this peer serves."""

    model: str
    info_hash: str
    family: str | None
    dtype: str


# Most messages handled as one burst, and so most decode steps in one batched forward (Settings.max_step_batch).
MAX_STEP_BATCH = 16


@dataclass
class _StepJob:
    """A checked step: its header, blocks, session (None: stateless), tensors (the checked input under "inputs";
    an encoder step's own tensors), positions [start, end), and the tokens the session's cache held."""

    header: Header
    blocks: tuple[int, int]
    session: Session | None
    tensors: dict[str, torch.Tensor]
    start: int
    end: int
    cached: int


class PeerServer:
    """Serves one runner on a ROUTER socket until `stop` is set."""

    def __init__(
        self,
        runner: Runner,
        identity: PeerIdentity,
        listen: Address,
        limits: AdmissionLimits,
        idle_timeout: float,
        *,
        advertise_host: str | None = None,
        throughput: float = 0.0,
        connect_timeout: float = 2.0,
        liveness_timeout: float = DEFAULT_LIVENESS_SECONDS,
        busy_poll_seconds: float = 0.0,
        max_step_batch: int = MAX_STEP_BATCH,
        clock: Callable[[], float] = time.monotonic,
        metrics: PeerMetrics | None = None,
    ) -> None:
        if busy_poll_seconds < 0:
            raise SwarmError(f"busy-poll seconds must be 0 or more, got {busy_poll_seconds:g}")
        self.runner = runner
        self.identity = identity
        self.limits = limits
        # Seconds per decode step through the whole span, smoothed; the start-up benchmark is the first figure.
        self.speed = SpeedMeter(throughput)
        self.context = transport.Context()
        self.router, self.bound_address = _bind(self.context, listen)
        bound = Address.parse(self.bound_address)
        self.port = bound.port
        self.address = _public_address(self.bound_address, advertise_host)
        # A second port where only this peer's own key answers (public swarms): clients that verified the key in the
        # DHT route through it, so nobody on the path can answer in this peer's place.
        keyed = self.context.listen_with_own_key(self.router, bound.host)
        self.keyed_address = Address(Address.parse(self.address).host, keyed.port, keyed.key).tcp if keyed else None
        self.key_port = keyed.port if keyed else None
        # Our DEALERs name themselves after this peer, so receivers can tell who sent what.
        self.dealers = transport.DealerPool(
            self.context,
            identity_prefix=self.address,
            connect_timeout=connect_timeout,
            heartbeat=transport.Heartbeat(liveness_timeout),
        )
        self.sessions = SessionTable(limits, idle_timeout, clock)
        self.handled = 0
        # Steps waiting to run together with the others of the burst being handled (None: outside a burst, steps
        # run as they come); how many steps ran in batches, and the largest batch.
        self._deferred: list[tuple[_StepJob, bytes | None]] | None = None
        # Task requests of a burst, run together at its end when the task batches (TaskSpec.batches).
        self._deferred_tasks: list[_TaskJob] = []
        self.max_step_batch = max(1, max_step_batch)
        self.batched_steps = 0
        self.largest_batch = 1
        self.busy_poll_seconds = busy_poll_seconds
        # Until when the loop checks for the next message without sleeping (set by every session step).
        self._busy_until = 0.0
        # When the loop next sends messages waiting for connections, and next does its slower upkeep.
        self._next_flush = 0.0
        self._next_upkeep = 0.0
        self._closed = False
        # Moving to other blocks (swarm.peer.heal, from another thread): the blocks decided on, reported in `info`
        # from the start so that other peers count this one there; then the runner for them, which replaces the
        # current one once the open sessions have ended (none are opened while it waits).
        self.planned_blocks: tuple[int, int] | None = None
        # Token buckets of the sources that opened sessions lately (oldest first; bounded).
        self._session_buckets: dict[str, Bucket] = {}
        self._next_runner: tuple[Runner, float] | None = None
        self.moved = threading.Event()
        # Tells this peer's own announcement apart from others' (it may be reachable at several addresses).
        self.peer_id = uuid.uuid4().hex[:16]
        # Counted here always (cheap); served only when asked for (swarm join --metrics).
        self.metrics = metrics or PeerMetrics()
        self.metrics.watch(self.metrics_state)

    @property
    def throughput(self) -> float:
        """Decode steps per second through the whole hosted span, smoothed over the steps run so far."""
        return round(self.speed.rate, 3)

    @property
    def free_session_slots(self) -> int:
        """Sessions this peer can still open (none while it waits to move to other blocks); sessions left unused
        past their grace count as free, since a newcomer takes their place."""
        if self.draining:
            return 0
        return free_sessions(self.limits, len(self.sessions) - self.sessions.claimable())

    def metrics_state(self) -> PeerState:
        """What this peer is now, for a metrics scrape (from the metrics thread: reads only)."""
        runner = self.runner
        return PeerState(
            model=self.identity.model,
            info_hash=self.identity.info_hash,
            address=self.address,
            blocks=(runner.start, runner.end),
            open_sessions=len(self.sessions),
            free_sessions=self.free_session_slots,
            throughput=self.throughput,
        )

    # ----- loop -----

    def serve(self, stop: threading.Event, tick: Callable[[], None] | None = None) -> None:
        """Handle messages until `stop` is set; `tick` runs between messages (at least every 0.2 s)."""
        while not stop.is_set():
            received = self._next_message()
            if received is not None:
                self._handle_burst(received)
            self._housekeeping()
            if tick is not None:
                tick()

    def _housekeeping(self) -> None:
        """What runs between messages, each at its own pace rather than after every message: its cost grows with
        the connections being made (a flood of messages to dead addresses makes hundreds), and paid per message it
        took 53 % of a peer's time under tools/attack_peer.py, slowing a legitimate client's steps 2x."""
        now = time.monotonic()
        if now >= self._next_flush:
            self._next_flush = now + _WAITING_POLL_SECONDS
            self._flush_waiting()
        if now >= self._next_upkeep:
            self._next_upkeep = now + _POLL_SECONDS
            self._drain_dealers()
            for session in self.sessions.expire():
                log.info("session %s expired after %.0f s idle", session.session_id, self.sessions.idle_timeout)
        self._switch_runner_when_idle()

    # ----- moving to other blocks -----

    def move_to(self, runner: Runner, throughput: float) -> None:
        """Serve `runner` (other blocks, loaded by the caller) from the moment no session is open; until then open
        sessions finish and new ones are refused. Thread-safe; `moved` is set once switched."""
        self.moved.clear()
        self._next_runner = (runner, throughput)

    @property
    def draining(self) -> bool:
        return self._next_runner is not None

    def _switch_runner_when_idle(self) -> None:
        pending = self._next_runner
        if pending is None or len(self.sessions):
            return
        previous = (self.runner.start, self.runner.end)
        self.runner, self.speed = pending[0], SpeedMeter(pending[1])
        self._next_runner = None
        self.planned_blocks = None
        self.moved.set()
        log.info("moved from blocks %d:%d to %d:%d", *previous, self.runner.start, self.runner.end)

    def _next_message(self) -> tuple[bytes | None, list[Any]] | None:
        # Housekeeping runs between waits of at most _POLL_SECONDS; messages waiting for a connection are
        # retried every few milliseconds (connections come up that fast).
        wait = _WAITING_POLL_SECONDS if self.dealers.waiting else _POLL_SECONDS
        busy_left = self._busy_until - time.monotonic()
        if busy_left > 0:
            return transport.recv_frames_busy(self.router, min(busy_left, wait))
        return transport.recv_frames(self.router, wait)

    def _flush_waiting(self) -> None:
        """Send what waited for connections now up; a message that cannot be delivered is an error to its sender
        (an unreachable next hop is named as the peer at fault), or, for a reply nobody can take, a log line."""
        for undelivered in self.dealers.flush():
            if not isinstance(undelivered.context, tuple):
                log.warning("dropped a message to %s: %s", undelivered.address, undelivered.reason)
                continue
            header, sender = undelivered.context
            if undelivered.address == header.reply_to:
                log.warning("cannot send a reply to %s: %s", undelivered.address, undelivered.reason)
                continue
            message = f"cannot send to the next hop {undelivered.address}: {undelivered.reason}"
            self._send_error(header, sender, UNREACHABLE, message, undelivered.address)

    def _drain_dealers(self) -> None:
        # Nothing is expected back on our outward DEALERs (peers answer to reply_to), but a misbehaving
        # peer could send: read and drop, so its messages do not pile up.
        for sock in self.dealers.sockets().values():
            while transport.recv_frames(sock, 0) is not None:
                pass
        # What is known about next hops stays current, and their monitors' queues short, however busy the loop.
        self.dealers.refresh()

    def handle(self, sender: bytes | None, frames: list[Any]) -> None:
        """Handle one message; every failure becomes an error reply."""
        self.handled += 1
        try:
            header, tensors = wire.decode(frames)
        except WireError as error:
            self.metrics.messages.labels(MALFORMED).inc()
            self._send_error(None, sender, error.code, error.message)
            return
        self.metrics.messages.labels(header.kind.value).inc()
        self._guarded(header, sender, lambda: self._dispatch(sender, header, tensors, transport.source_address(frames)))

    def _guarded(self, header: Header | None, sender: bytes | None, work: Callable[[], None]) -> None:
        """Run `work` for a message; every failure becomes an error reply."""
        try:
            work()
        except WireError as error:
            self._send_error(header, sender, error.code, error.message)
        except PeerError as error:
            self._send_error(header, sender, error.code, error.message, error.peer)
        except Exception as error:  # the loop must outlive any bug a message can trigger
            log.exception("internal error handling a message")
            if header is not None and header.session_id is not None and header.kind is Kind.STEP:
                # The cache may be half updated: the session cannot continue.
                self.sessions.close(header.session_id)
            self._send_error(header, sender, INTERNAL, f"{type(error).__name__}: {error}")

    def _dispatch(
        self, sender: bytes | None, header: Header, tensors: dict[str, torch.Tensor], source: str | None = None
    ) -> None:
        if header.kind in (Kind.HELLO, Kind.INFO):
            reply = Header(kind=Kind.INFO, request_id=header.request_id, body=self.info_body())
            self._send_direct(sender, wire.encode(reply))
        elif header.kind is Kind.PING:
            self._send_direct(sender, wire.encode(Header(kind=Kind.PONG, request_id=header.request_id)))
        elif header.kind in _ROUTED_KINDS:
            self._routed(sender, header, tensors, source)
        else:
            raise PeerError(ErrorCode.BAD_KIND, f"a peer does not accept {header.kind.value!r} messages")

    # ----- routed messages -----

    def _routed(
        self, sender: bytes | None, header: Header, tensors: dict[str, torch.Tensor], source: str | None = None
    ) -> None:
        # A second message for a session whose step waits in this burst: that step runs first, as it came first.
        # (Stateless requests have no session, so they never wait on each other.)
        deferred = self._deferred
        session_id = header.session_id
        if deferred and session_id is not None and any(job.header.session_id == session_id for job, _ in deferred):
            self._deferred = []
            self._run_together(deferred)
        if not header.route:
            raise PeerError(ErrorCode.BAD_ROUTE, f"{header.kind.value} needs a route whose first hop is this peer")
        if len(header.route) > 1 and header.reply_to is None:
            raise PeerError(ErrorCode.BAD_ROUTE, "a route of several hops needs reply_to")
        hop = header.route[0]
        if not self.runner.covers(hop.blocks):
            raise PeerError(
                WRONG_BLOCKS,
                f"route[0] asks for blocks [{hop.blocks[0]}, {hop.blocks[1]}), this peer hosts "
                f"[{self.runner.start}, {self.runner.end})",
            )
        if self.runner.replica and len(header.route) > 1 and header.kind in (Kind.STEP, Kind.TASK):
            raise PeerError(ErrorCode.BAD_ROUTE, "a full replica returns its outputs: it must be the last hop")
        if (header.kind is Kind.TASK) != isinstance(self.runner, TaskRunner):
            raise PeerError(ErrorCode.BAD_KIND, self._kind_mismatch(header.kind))
        if header.kind is Kind.TASK:
            # In a burst, at its end: those of a task that batches run as one batch (TaskRunner.run_many).
            task = _TaskJob(header, sender, tensors)
            if self._deferred is not None:
                self._deferred_tasks.append(task)
            else:
                self._run_tasks_together([task])
            return
        outputs: dict[str, torch.Tensor] = {}
        body: dict[str, Any] = {}
        if header.kind is not Kind.CLOSE_SESSION:
            # The session's next step comes one token later: be awake for it.
            self._busy_until = time.monotonic() + self.busy_poll_seconds
            if len(header.route) > 1:
                self._check_next_hop(header.route[1].address)
        if header.kind is Kind.OPEN_SESSION:
            self._open(header, hop.blocks, source)
            body = {"opened": True}
        elif header.kind is Kind.CLOSE_SESSION:
            if header.session_id is None:
                raise PeerError(ErrorCode.BAD_HEADER, "close_session needs a session_id")
            self.sessions.close(self._owned_session(header).session_id)
            body = {"closed": True}
        else:
            job = self._step_job(header, hop.blocks, tensors)
            self._tee(job)
            if self._deferred is not None and self._joins_batch(job):
                self._deferred.append((job, sender))
                return
            outputs = self._run_job(job)
        self._deliver(header, sender, outputs, body)

    def _deliver(
        self, header: Header, sender: bytes | None, outputs: dict[str, torch.Tensor], body: dict[str, Any]
    ) -> None:
        """Forward to the next hop, or send the result to reply_to (or back to the sender)."""
        remaining = header.route[1:]
        if remaining:
            forwarded = replace(header, route=remaining, tensors=())
            # The header passed decode's checks; only its route (a suffix of itself) and tensors (ours) changed.
            self._send_to(remaining[0].address, wire.encode(forwarded, outputs, validate=False), header, sender)
            self.metrics.forwarded.inc()
            return
        result = Header(
            kind=Kind.RESULT,
            request_id=header.request_id,
            session_id=header.session_id,
            step=header.step,
            positions=header.positions,
            body=body,
        )
        frames = wire.encode(result, outputs, validate=False)
        if header.reply_to is None:
            self._send_direct(sender, frames)
        else:
            self._send_to(header.reply_to, frames, header, sender)

    def _tee(self, job: _StepJob) -> None:
        """Send the client a copy of this hop's input when the step asks (`--verify` re-runs one hop alone on it);
        the first block's input is the client's own embedding, so it is never sent back."""
        header = job.header
        if header.body.get("tee") is not True or header.reply_to is None or job.blocks[0] == 0:
            return
        if self.runner.replica or not self.runner.causal:
            return
        tee = Header(kind=Kind.TEE, request_id=header.request_id, session_id=header.session_id, step=header.step,
                     positions=header.positions, body={"blocks": list(job.blocks)})  # fmt: skip
        self._send_to(
            header.reply_to, wire.encode(tee, {"hidden": job.tensors["inputs"]}, validate=False), header, None
        )

    def _check_next_hop(self, address: str) -> None:
        """Refuse, before computing anything, a message whose next hop is known to be gone."""
        link = self.dealers.link(address)
        if link is not None and link.state is transport.LinkState.DOWN:
            # A fresh connection next time: the address may serve again (a peer restarted on a fixed port).
            self.dealers.drop(address)
            raise PeerError(UNREACHABLE, f"cannot send to the next hop {address}: {link.reason}", peer=address)

    def _limit_new_sessions(self, source: str | None) -> None:
        """Refuse a session when its source (the IP address the message came from) opens them too fast."""
        if source is None or self.limits.sessions_per_minute <= 0:
            return
        allowed, bucket = take_token(
            self._session_buckets.pop(source, None), time.monotonic(), self.limits.sessions_per_minute,
            self.limits.session_burst,
        )  # fmt: skip
        self._session_buckets[source] = bucket
        while len(self._session_buckets) > _MAX_TRACKED_SOURCES:
            self._session_buckets.pop(next(iter(self._session_buckets)))
        if not allowed:
            raise PeerError(
                RATE_LIMITED,
                f"{source} opens sessions faster than this peer allows ({self.limits.sessions_per_minute:g} a "
                "minute); wait a moment",
            )

    def _open(self, header: Header, blocks: tuple[int, int], source: str | None = None) -> None:
        if header.session_id is None:
            raise PeerError(ErrorCode.BAD_HEADER, "open_session needs a session_id")
        max_length = _body_int(header, "max_length")
        batch = _body_int(header, "batch", default=1)
        secret = header.body.get("secret")
        if not isinstance(secret, str) or _SECRET_RE.fullmatch(secret) is None:
            raise PeerError(ErrorCode.BAD_HEADER, "open_session body needs a secret: 16 to 64 letters and digits")
        if not self.runner.causal:
            raise PeerError(ErrorCode.BAD_HEADER, "this model is an encoder: it keeps no sessions, send steps alone")
        if self.draining and self.planned_blocks is not None:
            start, end = self.planned_blocks
            raise PeerError(BUSY, f"this peer is moving to blocks {start}:{end}; ask another one")
        self._limit_new_sessions(source)
        session, admission = self.sessions.open(
            header.session_id, blocks, max_length, batch, secret, self._model().new_cache
        )
        if session is None:
            raise PeerError(admission.code, admission.reason)
        session.reply_to = header.reply_to
        session.request_id = header.request_id

    def _owned_session(self, header: Header) -> Session:
        """The message's session, when the message proves it comes from the session's opener."""
        session = self.sessions.get(header.session_id or "")
        if session is None:
            raise PeerError(UNKNOWN_SESSION, f"no open session {header.session_id!r} (never opened, closed or expired)")
        if not session.owned_by(header.body.get("secret")):
            raise PeerError(NOT_OWNER, f"session {header.session_id!r} belongs to whoever opened it")
        return session

    def _step_job(self, header: Header, blocks: tuple[int, int], tensors: dict[str, torch.Tensor]) -> _StepJob:
        """A step's checked inputs, ready to run (nothing is run or changed yet)."""
        if not self.runner.causal:
            return self._encoder_job(header, blocks, tensors)
        session = self._session_for_step(header, blocks)
        if header.positions is None:
            raise PeerError(ErrorCode.BAD_HEADER, "a step needs the positions [start, end) of its new tokens")
        start, end = header.positions
        cached = session.cached_tokens if session is not None else 0
        # A session's step may start before the cache's end: the tokens from `start` on are taken back first
        # (speculative decoding sends drafted tokens, and the next step starts after the ones accepted).
        if start > cached or (session is None and start != 0):
            raise PeerError(BAD_STEP, f"positions start at {start}, but this peer's cache holds {cached} tokens")
        max_length = session.max_length if session is not None else self.limits.max_session_tokens
        if end > max_length:
            raise PeerError(ErrorCode.TOO_LARGE, f"positions end at {end}, past the session's max_length {max_length}")
        if self.runner.replica:
            inputs = _checked_tensor(tensors, "input_ids", {torch.int64}, rank=2)
            if inputs.numel() and (int(inputs.min()) < 0 or int(inputs.max()) >= self.runner.vocab_size):
                raise PeerError(ErrorCode.BAD_TENSOR, f"input_ids must lie in [0, {self.runner.vocab_size})")
        else:
            inputs = _checked_tensor(tensors, "hidden", _FLOAT_DTYPES, rank=3, last_dim=self.runner.hidden_size)
        batch, new_tokens = int(inputs.shape[0]), int(inputs.shape[1])
        self._check_batch(batch, new_tokens, session)
        if new_tokens != end - start:
            raise PeerError(
                ErrorCode.BAD_TENSOR, f"{new_tokens} new tokens, but positions [{start}, {end}) span {end - start}"
            )
        return _StepJob(header, blocks, session, {"inputs": inputs}, start, end, cached)

    def _run_job(self, job: _StepJob) -> dict[str, torch.Tensor]:
        """Run one step alone."""
        if not self.runner.causal:
            return self._encoder_step(job)
        session, inputs, start, end = job.session, job.tensors["inputs"], job.start, job.end
        if session is not None and start < job.cached:
            _roll_back(session, job.cached - start)
        runner = self._model()
        cache = session.cache if session is not None else runner.new_cache()
        started = time.perf_counter()
        if isinstance(runner, ReplicaRunner):
            every_position = job.header.body.get("all_positions") is True
            output = {"logits": runner.run_tokens(inputs, cache, (start, end), last_only=not every_position)}
        else:
            output = {"hidden": runner.run(job.blocks, inputs, cache, (start, end))}
        elapsed = time.perf_counter() - started
        self._ran(job, elapsed)
        if int(inputs.shape[0]) == 1 and end - start == 1:
            # Decode steps of one sequence are what the throughput figure means (a prefill runs many tokens at once).
            self._measure(job.blocks, elapsed)
        return output

    def _ran(self, job: _StepJob, seconds: float) -> None:
        self.metrics.step_ran(int(job.tensors["inputs"].shape[0]) * (job.end - job.start), seconds)
        if job.session is not None:
            job.session.cached_tokens = job.end
            job.session.next_step += 1
            self.sessions.touch(job.session)

    def _model(self) -> SpanRunner | ReplicaRunner:
        """The runner of steps and sessions (`_routed` refuses them on a task's peer before they get here)."""
        if isinstance(self.runner, TaskRunner):
            raise PeerError(ErrorCode.BAD_KIND, self._kind_mismatch(Kind.STEP))
        return self.runner

    def _kind_mismatch(self, kind: Kind) -> str:
        if isinstance(self.runner, TaskRunner):
            return f"this peer runs {self.identity.model} as the task {self.runner.spec.name}: send task requests"
        served = "language model" if self.runner.causal else "encoder"
        return f"this peer serves {self.identity.model} as a {served}: it runs no {kind.value} requests"

    def _task_runner(self) -> TaskRunner:
        if not isinstance(self.runner, TaskRunner):  # checked by the caller; keeps the types honest
            raise PeerError(INTERNAL, "a task request reached a runner without a task")
        return self.runner

    def _task_input(self, runner: TaskRunner, header: Header, tensors: dict[str, torch.Tensor]) -> tuple[bytes, Any]:
        task, data, params = request_input(header.body, tensors)
        if task != runner.spec.name:
            raise SwarmError(f"this peer runs {self.identity.model} as {runner.spec.name}, not {task}")
        return data, params

    def _run_tasks_together(self, jobs: list[_TaskJob]) -> None:
        """Task requests (of one burst): as one batch of the pipeline when the task batches, else one by one
        (TaskRunner.run_many); each gets its own answer, or bad_input for an input that does not fit."""
        runner = self._task_runner()
        readable: list[tuple[_TaskJob, tuple[bytes, Any]]] = []
        for job in jobs:
            try:
                readable.append((job, self._task_input(runner, job.header, job.tensors)))
            except SwarmError as error:
                self._send_error(job.header, job.sender, BAD_INPUT, str(error))
        if not readable:
            return
        started = time.perf_counter()
        answers = runner.run_many([request for _, request in readable])
        share = (time.perf_counter() - started) / len(readable)
        if runner.spec.batches and len(readable) > 1:
            self.batched_steps += len(readable)
            self.largest_batch = max(self.largest_batch, len(readable))
        for (job, _), answer in zip(readable, answers, strict=True):
            if isinstance(answer, SwarmError):
                self._send_error(job.header, job.sender, BAD_INPUT, str(answer))
                continue
            self.metrics.step_ran(1, share)
            outputs, body = _task_message(runner.spec.name, answer)
            self._guarded(job.header, job.sender, partial(self._deliver, job.header, job.sender, outputs, body))

    # ----- steps of several sessions as one batch -----

    def _joins_batch(self, job: _StepJob) -> bool:
        """Whether a step may wait for the others that arrived with it: one new token of one sequence of a session
        whose cache can be batched (a span's or a replica's), nothing to take back, only the last position asked."""
        if not self.runner.causal:  # an encoder's request: whole sequences, stateless
            return job.end > 0
        session = job.session
        if session is None or job.start != job.cached or job.header.body.get("all_positions") is True:
            return False
        return tuple(job.tensors["inputs"].shape[:2]) == (1, 1) and self._model().batchable(job.blocks, session.cache)

    def _handle_burst(self, first: tuple[bytes | None, list[Any]]) -> None:
        """Handle the message and those already waiting behind it (up to max_step_batch), running their decode steps
        on the same blocks as one batched forward: on a busy peer, sessions then share each pass over the weights
        instead of queueing for it."""
        received: list[tuple[bytes | None, list[Any]]] = [first]
        while len(received) < self.max_step_batch:
            more = transport.recv_frames(self.router, 0)
            if more is None:
                break
            received.append(more)
        self._deferred = []
        try:
            for sender, frames in received:
                self.handle(sender, frames)
        finally:
            deferred, self._deferred = self._deferred, None
            tasks, self._deferred_tasks = self._deferred_tasks, []
            self._run_together(deferred)
            if tasks:
                self._guarded_tasks(tasks)

    def _guarded_tasks(self, jobs: list[_TaskJob]) -> None:
        """`_run_tasks_together`, every request answered whatever fails (an internal error to each)."""
        try:
            self._run_tasks_together(jobs)
        except Exception as error:  # the loop must outlive any bug a message can trigger
            log.exception("internal error in a batch of task requests")
            for job in jobs:
                self._send_error(job.header, job.sender, INTERNAL, f"{type(error).__name__}: {error}")

    def _run_together(self, jobs: list[tuple[_StepJob, bytes | None]]) -> None:
        groups: dict[tuple[int, int], list[tuple[_StepJob, bytes | None]]] = {}
        for job, sender in jobs:
            groups.setdefault(job.blocks, []).append((job, sender))
        for blocks, group in self._split_stateless(groups):
            if len(group) == 1:
                job, sender = group[0]
                self._guarded(job.header, sender, partial(self._run_and_deliver, job, sender))
                continue
            outputs = self._guarded_batch(blocks, [job for job, _ in group])
            # A replica answers with next-token logits, a span with hidden states (as their steps alone do).
            name = "logits" if self.runner.replica else "hidden"
            for (job, sender), output in zip(group, outputs, strict=True):
                if output is None:
                    self._send_error(job.header, sender, INTERNAL, "the batched step failed")
                else:
                    self._guarded(job.header, sender, partial(self._deliver, job.header, sender, {name: output}, {}))

    def _split_stateless(
        self, groups: dict[tuple[int, int], list[tuple[_StepJob, bytes | None]]]
    ) -> list[tuple[tuple[int, int], list[tuple[_StepJob, bytes | None]]]]:
        """Encoder requests on the same blocks in forwards no larger than one request may be (stateless_groups);
        decode steps (one token each, their caches bounded by the KV budget) as they are."""
        if self.runner.causal:
            return list(groups.items())
        split = []
        for blocks, group in groups.items():
            shapes = [tuple(job.tensors["inputs"].shape[:2]) for job, _ in group]
            for indices in stateless_groups([(int(b), int(t)) for b, t in shapes], self.limits.max_session_tokens):
                split.append((blocks, [group[index] for index in indices]))
        return split

    def _run_and_deliver(self, job: _StepJob, sender: bytes | None) -> None:
        self._deliver(job.header, sender, self._run_job(job), {})

    def _guarded_batch(self, blocks: tuple[int, int], jobs: list[_StepJob]) -> list[torch.Tensor | None]:
        """Outputs of the jobs' batched step; all None when it failed (their sessions are closed: their caches may
        be half updated)."""
        runner = self._model()
        started = time.perf_counter()
        try:
            caches = [job.session.cache if job.session is not None else None for job in jobs]
            inputs, lengths = [job.tensors["inputs"] for job in jobs], [job.start for job in jobs]
            if isinstance(runner, SpanRunner) and not runner.causal:
                outputs = runner.encode_together(blocks, inputs, [job.tensors.get("attention_mask") for job in jobs])
            else:
                outputs = runner.run_together(blocks, inputs, caches, lengths)
        except Exception:
            log.exception("internal error in a batched step")
            for job in jobs:
                if job.session is not None:
                    self.sessions.close(job.session.session_id)
            return [None] * len(jobs)
        share = (time.perf_counter() - started) / len(jobs)
        for job in jobs:
            self._ran(job, share)
        self.batched_steps += len(jobs)
        self.largest_batch = max(self.largest_batch, len(jobs))
        return list(outputs)

    def _measure(self, blocks: tuple[int, int], seconds: float) -> None:
        """Add one decode step's compute time, scaled to the whole span (a replica always runs all of it)."""
        hosted = self.runner.end - self.runner.start
        ran = hosted if self.runner.replica else blocks[1] - blocks[0]
        self.speed.add(seconds * hosted / max(ran, 1))

    def _session_for_step(self, header: Header, blocks: tuple[int, int]) -> Session | None:
        """The step's session, checked; None for a stateless request (a whole sequence from position 0)."""
        if header.session_id is None:
            return None
        session = self._owned_session(header)
        if session.blocks != blocks:
            raise PeerError(
                WRONG_BLOCKS,
                f"session {header.session_id!r} runs blocks [{session.blocks[0]}, {session.blocks[1]}) here, "
                f"the step asks for [{blocks[0]}, {blocks[1]})",
            )
        if header.step != session.next_step:
            raise PeerError(
                BAD_STEP, f"expected step {session.next_step} of session {header.session_id!r}, got {header.step}"
            )
        session.reply_to = header.reply_to or session.reply_to
        session.request_id = header.request_id
        return session

    def _check_batch(self, batch: int, tokens: int, session: Session | None) -> None:
        """A session's steps carry the batch it was opened for; a request without a session costs at most what a
        whole session could."""
        admission = (
            admit_batch(self.limits, batch) if session is not None else admit_stateless(self.limits, batch, tokens)
        )
        if not admission.admitted:
            raise PeerError(admission.code, admission.reason)
        if session is not None and batch != session.batch:
            raise PeerError(ErrorCode.BAD_TENSOR, f"the session was opened for batch {session.batch}, not {batch}")

    def _encoder_job(self, header: Header, blocks: tuple[int, int], tensors: dict[str, torch.Tensor]) -> _StepJob:
        """An encoder step's checked inputs: "inputs" (hidden states of whole sequences) and "attention_mask" when
        given; its positions are [0, tokens)."""
        if header.session_id is not None:
            raise PeerError(ErrorCode.BAD_HEADER, "this model is an encoder: steps carry no session_id")
        hidden = _checked_tensor(tensors, "hidden", _FLOAT_DTYPES, rank=3, last_dim=self.runner.hidden_size)
        admission = admit_stateless(self.limits, int(hidden.shape[0]), int(hidden.shape[1]))
        if not admission.admitted:
            raise PeerError(admission.code, admission.reason)
        checked = {"inputs": hidden}
        if "attention_mask" in tensors:
            mask = _checked_tensor(tensors, "attention_mask", {torch.int64}, rank=2)
            if tuple(mask.shape) != tuple(hidden.shape[:2]):
                raise PeerError(
                    ErrorCode.BAD_TENSOR,
                    f"attention_mask has shape {list(mask.shape)}, hidden needs {list(hidden.shape[:2])}",
                )
            if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) > 1):
                raise PeerError(ErrorCode.BAD_TENSOR, "attention_mask must hold only 0 and 1")
            checked["attention_mask"] = mask
        return _StepJob(header, blocks, None, checked, 0, int(hidden.shape[1]), 0)

    def _encoder_step(self, job: _StepJob) -> dict[str, torch.Tensor]:
        if not isinstance(self.runner, SpanRunner):  # encoders are never replicas; keeps the types honest
            raise PeerError(INTERNAL, "an encoder step reached a replica")
        started = time.perf_counter()
        mask = job.tensors.get("attention_mask")
        output = self.runner.run(job.blocks, job.tensors["inputs"], None, None, attention_mask=mask)
        self._ran(job, time.perf_counter() - started)
        return {"hidden": output}

    # ----- replies -----

    def info_body(self) -> dict[str, Any]:
        return {
            "version": INFO_VERSION,
            "model": self.identity.model,
            "info_hash": self.identity.info_hash,
            "family": self.identity.family,
            "blocks": [self.runner.start, self.runner.end],
            "dtype": self.identity.dtype,
            "throughput": self.throughput,
            "free_sessions": self.free_session_slots,
            "max_sessions": self.limits.max_sessions,
            "address": self.address,
            "serves_embed_head": self.runner.replica,
            "replica": self.runner.replica,
            "hidden_size": self.runner.hidden_size,
            "max_length": self.limits.max_session_tokens,
            "max_batch": self.limits.max_batch,
            # Cache tokens (batch counted) all sessions may reserve together (the token cap, or --kv-memory's).
            "max_cached_tokens": self.limits.max_total_tokens,
            "causal": self.runner.causal,
            "task": self.runner.spec.name if isinstance(self.runner, TaskRunner) else None,
            "software": f"swarm/{swarm.__version__}",
            "moving_to": list(self.planned_blocks) if self.planned_blocks else None,
            "peer_id": self.peer_id,
            # Decode steps of several sessions run as one batch: how many so far, and the largest batch.
            "batching": {"steps": self.batched_steps, "largest": self.largest_batch},
            # The key this peer connects with (None in plaintext): a client takes results only over a connection of
            # the last hop's key.
            "member_key": self.context.keys.client_public.decode("ascii") if self.context.keys else None,
            # The port where only that key answers (see listen_with_own_key); None where there is none.
            "key_port": self.key_port,
        }

    def _send_direct(self, sender: bytes | None, frames: list[Any]) -> None:
        if sender is None:
            return
        try:
            transport.send_frames(self.router, frames, identity=sender)
        except transport.TransportError as error:
            log.warning("cannot answer a sender: %s", error)

    def _send_to(self, address: str, frames: list[Any], header: Header, sender: bytes | None) -> None:
        """Send to another peer or a client's reply_to without waiting (a connection still being made gets the
        message once it is up: see `_flush_waiting`); a known failure is reported like any other error."""
        try:
            self.dealers.post(address, frames, context=(header, sender))
        except transport.TransportError as error:
            self.dealers.drop(address)
            if address != header.reply_to:
                # Named as the peer at fault: the client then routes around the hop, not around this peer.
                raise PeerError(UNREACHABLE, f"cannot send to the next hop {address}: {error}", peer=address) from None
            log.warning("cannot send a reply to %s: %s", address, error)

    def _send_error(
        self, header: Header | None, sender: bytes | None, code: str, message: str, peer: str | None = None
    ) -> None:
        self.metrics.errors.labels(code).inc()
        try:
            frames = wire.error_reply(header, code, message, peer=peer or self.address)
        except WireError:
            log.exception("cannot encode an error reply")
            return
        if header is not None and header.kind in _ROUTED_KINDS and header.reply_to is not None:
            try:
                self.dealers.post(header.reply_to, frames)
                return
            except transport.TransportError as error:
                log.warning("cannot send an error to %s: %s", header.reply_to, error)
        self._send_direct(sender, frames)

    # ----- shutdown -----

    def close(self) -> None:
        """Fail every open session (error "shutting_down" to its client), then close the sockets."""
        if self._closed:
            return
        self._closed = True
        for session in self.sessions.drain():
            if session.reply_to is None:
                continue
            body = {
                "code": SHUTTING_DOWN,
                "message": f"peer {self.address} is shutting down; session {session.session_id} is gone",
                "peer": self.address,
            }
            reply = Header(kind=Kind.ERROR, request_id=session.request_id, session_id=session.session_id, body=body)
            try:
                self.dealers.send(session.reply_to, wire.encode(reply))
            except (transport.TransportError, WireError) as error:
                log.warning("cannot tell %s about the shutdown: %s", session.reply_to, error)
        self.context.close()


@dataclass(frozen=True)
class _TaskJob:
    """A task request waiting for the end of its burst."""

    header: Header
    sender: bytes | None
    tensors: dict[str, torch.Tensor]


def _task_message(task: str, output: TaskOutput) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    body, outputs = result_message(task, output.result, output.file, output.file_type, output.tensors)
    return outputs, body


def _body_int(header: Header, key: str, default: int | None = None) -> int:
    value = header.body.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise PeerError(ErrorCode.BAD_HEADER, f"{header.kind.value} body needs an integer {key}")
    return value


def _checked_tensor(
    tensors: dict[str, torch.Tensor],
    name: str,
    dtypes: frozenset[torch.dtype] | set[torch.dtype],
    rank: int,
    last_dim: int | None = None,
) -> torch.Tensor:
    tensor = tensors.get(name)
    if tensor is None:
        raise PeerError(ErrorCode.BAD_TENSOR, f"the message has no tensor {name!r} (it has {sorted(tensors)})")
    if tensor.dtype not in dtypes:
        raise PeerError(
            ErrorCode.BAD_TENSOR,
            f"tensor {name!r} has dtype {tensor.dtype}, expected one of {sorted(map(str, dtypes))}",
        )
    if tensor.dim() != rank:
        raise PeerError(ErrorCode.BAD_TENSOR, f"tensor {name!r} has shape {list(tensor.shape)}, expected rank {rank}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise PeerError(ErrorCode.BAD_TENSOR, f"tensor {name!r} has shape {list(tensor.shape)}: nothing to run")
    if last_dim is not None and tensor.shape[-1] != last_dim:
        raise PeerError(
            ErrorCode.BAD_TENSOR, f"tensor {name!r} has shape {list(tensor.shape)}, the last dim must be {last_dim}"
        )
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise PeerError(ErrorCode.BAD_TENSOR, f"tensor {name!r} holds NaN or infinite values")
    return tensor


def _bind(context: transport.Context, listen: Address) -> tuple[transport.Socket, str]:
    """A ROUTER on `listen`; a taken fixed port is followed by the next ones (as libtorrent does for BitTorrent),
    so that several peers on one machine can all keep the default."""
    ports = [listen.port] if listen.port == 0 else range(listen.port, min(listen.port + BIND_RETRIES, 65535) + 1)
    error: transport.TransportError | None = None
    for port in ports:
        try:
            return context.bind_router(listen.with_port(port).tcp)
        except transport.TransportError as failure:
            error = error or failure
    raise error or transport.TransportError(f"cannot listen on {listen}")


def _public_address(bound: str, advertise_host: str | None) -> str:
    """The address other machines should use: the bound one, with `advertise_host` for a wildcard bind."""
    address = Address.parse(bound)
    if advertise_host:
        return Address(advertise_host, address.port).tcp
    if address.is_wildcard:
        # A wildcard is not an address anyone can connect to; loopback at least works on this machine. (Clients
        # reach peers at the address the DHT saw them from; this one is only what `info` reports.)
        return Address("127.0.0.1", address.port).tcp
    return address.tcp


def _roll_back(session: Session, tokens: int) -> None:
    """Take the last `tokens` tokens out of the session's cache (a sliding-window cache past its window cannot)."""
    try:
        session.cache.crop(-tokens)
    except (RuntimeError, ValueError, AttributeError) as error:
        raise PeerError(
            BAD_STEP, f"this peer cannot take back {tokens} cached tokens of the session: {error}"
        ) from None
    session.cached_tokens -= tokens
