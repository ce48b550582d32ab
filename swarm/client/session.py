"""Talking to compute peers: direct queries (info, ping) and inference sessions along a route.

The client binds its own ROUTER (its `reply_to` address) and sends through one DEALER per first hop. A routed
request goes to the first hop only; its result comes from the last hop to the ROUTER, and an error from
whichever peer failed (to the ROUTER, or back on the DEALER when the peer could not read `reply_to`).

Liveness: the client also keeps a DEALER to every other hop of the route, which carries nothing but ZeroMQ
heartbeats, and watches all of them. A hop that dies anywhere on the route (its connection resets when the
process dies, or it stops answering heartbeats for the liveness timeout) fails the request at once with
"unreachable" naming that hop, instead of after the request timeout; a hop known to be gone fails it before it is
sent. The request timeout stays for peers that are alive but do not answer; when it passes, the hops are pinged
to name the peer that stopped answering.

Sockets are not thread-safe: use one ComputeClient per thread (they may share a transport Context).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from swarm import transport
from swarm.address import Address, local_host_towards
from swarm.client.routing import BAD_RESULT, SEND_FAILED, TIMEOUT, UNREACHABLE, PeerFailure, PeerInfo
from swarm.config import Settings
from swarm.errors import SwarmError
from swarm.wire import (
    DTYPES,
    PROTOCOL_VERSION,
    Header,
    Hop,
    Kind,
    WireError,
    decode,
    encode,
    expect_tensor,
)

__all__ = [
    "SEND_FAILED",
    "TIMEOUT",
    "UNREACHABLE",
    "ComputeClient",
    "InferenceSession",
    "PeerFailure",
    "Reply",
    "describe_hop",
    "expect_hidden",
    "expect_logits",
    "new_id",
    "peer_error",
    "query_peers",
    "run_encoder",
]

# A ping that takes longer than this while diagnosing a timeout counts as no answer.
log = logging.getLogger("swarm.client")

PING_SECONDS = 2.0
# Seconds without an answered heartbeat after which a hop counts as gone (Settings.liveness_timeout).
DEFAULT_LIVENESS_SECONDS = 2.0
# Longest sleep of a wait that watches links: a hop still connecting is checked this often against its deadline.
_LINK_CHECK_SECONDS = 0.1
# How long a result waits for hops' tees still missing: a hop sends its tee before it computes, so they come first
# but for a race between connections; one that does not come in time leaves its hop unchecked for that step.
_TEE_GRACE_SECONDS = 0.05
# Pings per peer when ranking peers: the least round trip counts (see query_peers).
PING_ROUNDS = 3


def new_id() -> str:
    return uuid.uuid4().hex


def describe_hop(hop: Hop) -> str:
    start, end = hop.blocks
    return f"{hop.address} (blocks {start}..{end - 1})"


def peer_error(header: Header, fallback_peer: str, route: Sequence[Hop] = ()) -> PeerFailure:
    """The error for an `error` reply, naming the peer that sent it.

    The body's `peer` is believed only when it names a hop of the route: it comes from the network, and the
    client stops using the peer it names.
    """
    body = header.body
    claimed = body.get("peer")
    peer = claimed if isinstance(claimed, str) and claimed in {hop.address for hop in route} else fallback_peer
    code, message = str(body.get("code", "error")), str(body.get("message", ""))[:500]
    if code == "busy":
        return PeerFailure(f"peer {peer} is busy: {message}", peer, code)
    if code == UNREACHABLE:  # told by the hop before it, which could not forward to it
        return PeerFailure(f"peer {peer} is unreachable: {message}", peer, code)
    return PeerFailure(f"peer {peer} refused the request ({code}): {message}", peer, code)


@dataclass(frozen=True)
class Reply:
    header: Header
    tensors: dict[str, torch.Tensor]
    seconds: float
    # What hops after the first received (Kind.TEE, when the request asked for it), by the first block they run.
    tees: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class _Lost:
    """A watched connection that went down (or never came up) while waiting."""

    address: str
    reason: str


# The socket a message came on, its header and tensors, and the CURVE key of the connection it came over.
_Message = tuple[transport.Socket, Header, dict[str, torch.Tensor], str | None]


class ComputeClient:
    """One client endpoint: a reply ROUTER, DEALERs to peers, and request/reply with deadlines."""

    def __init__(
        self,
        reply_host: str = "",
        timeout: float = 30.0,
        context: transport.Context | None = None,
        liveness_timeout: float = DEFAULT_LIVENESS_SECONDS,
        member_keys: Mapping[str, str] | None = None,
    ) -> None:
        """`reply_host`: the host peers send results to; empty: the address this machine reaches each route's
        last peer from (the reply socket then listens on every interface). `liveness_timeout`: seconds without an
        answered heartbeat (or without a connection) after which a peer counts as gone. `member_keys`: peer address
        → the key it connects with (encrypted swarms): a result is taken only over a connection of the last hop's
        key (another hop that saw the request cannot forge it)."""
        self.timeout = timeout
        self.member_keys = dict(member_keys or {})
        self._owns_context = context is None
        self.context = context or transport.Context()
        self.reply_host = reply_host
        try:
            self.router, bound = self.context.bind_router(Address(reply_host or "0.0.0.0", 0).tcp)
            # Results come to the port only this client's own key answers at (public swarms), so that nobody on the
            # path can take them in its place; the reply address carries the key to the last hop.
            keyed = self.context.listen_with_own_key(self.router, reply_host or "0.0.0.0")
        except SwarmError:
            if self._owns_context:
                self.context.close(linger_ms=0)
            raise
        self.reply_port, self.reply_key = (keyed.port, keyed.key) if keyed else (Address.parse(bound).port, "")
        self._reply_to: dict[str, str] = {}
        self.dealers = transport.DealerPool(
            self.context,
            identity_prefix=f"client-{new_id()[:8]}",
            heartbeat=transport.Heartbeat(liveness_timeout),
        )
        self.closed = False

    @classmethod
    def for_peers(cls, settings: Settings, context: transport.Context, peers: Sequence[PeerInfo]) -> ComputeClient:
        """An endpoint as `settings` configure it, taking results from `peers` only over their member keys."""
        return cls(
            settings.client_reply_host,
            settings.request_timeout,
            context,
            liveness_timeout=settings.liveness_timeout,
            member_keys={peer.address: peer.member_key for peer in peers if peer.member_key},
        )

    def reply_to(self, last_hop: str) -> str:
        """The reply address for a route ending at `last_hop` (a wire address)."""
        if last_hop not in self._reply_to:
            host = self.reply_host or local_host_towards(Address.parse(last_hop).host)
            self._reply_to[last_hop] = Address(host, self.reply_port, self.reply_key).tcp
        return self._reply_to[last_hop]

    # ----- direct requests -----

    def ask_many(
        self, addresses: Sequence[str], kind: Kind, body: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, Reply | SwarmError]:
        """Send `kind` to every address at once; each gets its reply or a SwarmError (no answer, connection refused
        or lost, error reply). A peer that cannot be reached fails as soon as its connection does."""
        timeout = self.timeout if timeout is None else timeout
        pending: dict[str, str] = {}  # request id → address
        results: dict[str, Reply | SwarmError] = {}
        sent_at: dict[str, float] = {}
        watched: dict[str, int] = {}
        for address in addresses:
            request_id = new_id()
            try:
                frames = encode(Header(kind=kind, request_id=request_id, body=dict(body or {})))
                transport.send_frames(self.dealers.get(address), frames)
            except SwarmError as error:
                results[address] = PeerFailure(f"cannot reach peer {address}: {error}", address, SEND_FAILED)
                continue
            pending[request_id] = address
            sent_at[request_id] = time.perf_counter()
            watched[address] = self.dealers.watch(address)
        deadline = time.monotonic() + timeout
        replies = self._incoming(lambda: list(self.dealers.sockets().values()), deadline, watched)
        for item in replies if pending else ():
            if isinstance(item, _Lost):
                watched.pop(item.address, None)
                for request_id in [key for key, address in pending.items() if address == item.address]:
                    del pending[request_id]
                message = f"cannot reach peer {item.address}: {item.reason}"
                results[item.address] = PeerFailure(message, item.address, UNREACHABLE)
                self.dealers.drop(item.address)
            elif item[1].request_id in pending:
                _sock, header, tensors, _key = item
                address = pending.pop(header.request_id)
                if header.kind is Kind.ERROR:
                    results[address] = peer_error(header, address)
                else:
                    results[address] = Reply(header, tensors, time.perf_counter() - sent_at[header.request_id])
            if not pending:
                break
        for address in pending.values():
            results[address] = PeerFailure(
                f"peer {address} did not answer {kind.value} within {timeout:g} s", address, TIMEOUT
            )
            # A socket to a silent peer keeps the unanswered request queued: start afresh next time.
            self.dealers.drop(address)
        return results

    def ask(
        self, address: str, kind: Kind, body: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Reply:
        result = self.ask_many([address], kind, body, timeout)[address]
        if isinstance(result, SwarmError):
            raise result
        return result

    # ----- routed requests -----

    def request(
        self,
        route: Sequence[Hop],
        header: Header,
        tensors: Mapping[str, torch.Tensor] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """Send a routed message to route[0] and wait for the last hop's result (or any hop's error).

        PeerFailure "unreachable" naming the hop as soon as any hop's connection is gone (see the module doc)."""
        if not route:
            raise SwarmError("a routed request needs at least one hop")
        timeout = self.timeout if timeout is None else timeout
        header = replace(header, route=tuple(route), reply_to=self.reply_to(route[-1].address))
        first = route[0].address
        watched = self._watch(route)
        try:
            frames = encode(header, tensors)
            sent = time.perf_counter()
            transport.send_frames(self.dealers.get(first), frames)
        except WireError:
            raise  # a malformed request is this client's fault, not the peer's
        except SwarmError as error:
            raise PeerFailure(f"cannot send to peer {first}: {error}", first, SEND_FAILED) from error
        deadline = time.monotonic() + timeout
        tees: dict[int, torch.Tensor] = {}
        # Results come to the reply ROUTER; an error may come back on the DEALER to the first hop.
        for item in self._incoming(lambda: [self.router, self.dealers.get(first)], deadline, watched):
            if isinstance(item, _Lost):
                raise self._lost(route, item.address, item.reason)
            sock, reply, reply_tensors, sender = item
            if reply.request_id != header.request_id:
                continue  # a late reply to an earlier request that already timed out
            if reply.kind is Kind.TEE:
                self._take_tee(route, reply, reply_tensors, sender, tees)
                continue
            if reply.kind is Kind.RESULT and not self._from_hop(route[-1].address, sender, "result"):
                continue  # forged by a hop that saw the request: the real one may still come
            if reply.kind is Kind.ERROR:
                raise peer_error(reply, route[-1].address if sock is self.router else first, route)
            if reply.kind is not Kind.RESULT:
                raise SwarmError(f"peer {route[-1].address} answered {header.kind.value} with {reply.kind.value}")
            if header.body.get("tee") is True:
                self._late_tees(route, header.request_id, tees)
            return Reply(reply, reply_tensors, time.perf_counter() - sent, tees)
        raise self._timeout_error(route, header.kind, timeout)

    def _take_tee(
        self, route: Sequence[Hop], tee: Header, tensors: Mapping[str, torch.Tensor], sender: str | None,
        tees: dict[int, torch.Tensor],
    ) -> None:  # fmt: skip
        """Keep a hop's copy of its input when it names a hop of the route and comes over that hop's key."""
        hop = next((hop for hop in route[1:] if list(hop.blocks) == tee.body.get("blocks")), None)
        hidden = tensors.get("hidden")
        if hop is not None and hidden is not None and self._from_hop(hop.address, sender, "tee"):
            tees[hop.blocks[0]] = hidden

    def _late_tees(self, route: Sequence[Hop], request_id: str, tees: dict[int, torch.Tensor]) -> None:
        """Wait a moment for the tees the result overtook (see _TEE_GRACE_SECONDS)."""
        expected = {hop.blocks[0] for hop in route[1:]}
        if expected <= set(tees):
            return
        for item in self._incoming(lambda: [self.router], time.monotonic() + _TEE_GRACE_SECONDS, {}):
            if isinstance(item, _Lost) or item[1].request_id != request_id or item[1].kind is not Kind.TEE:
                continue
            self._take_tee(route, item[1], item[2], item[3], tees)
            if expected <= set(tees):
                return

    def _from_hop(self, address: str, sender: str | None, what: str) -> bool:
        """Whether a message came over a connection of the key `address` is known by (any, when none is known)."""
        expected = self.member_keys.get(address)
        if expected is None or sender == expected:
            return True
        log.warning("ignored a %s that came over a connection of key %s, not that of %s", what, sender, address)
        return False

    def post(self, route: Sequence[Hop], header: Header) -> None:
        """Send a routed message without waiting for its result (a late result is ignored like any other)."""
        header = replace(header, route=tuple(route), reply_to=self.reply_to(route[-1].address))
        transport.send_frames(self.dealers.get(route[0].address), encode(header))

    def _watch(self, route: Sequence[Hop]) -> dict[str, int]:
        """Watch every hop's connection (made now if needed): address → its drop count so far. PeerFailure at once
        for a hop already known to be gone."""
        watched = {hop.address: self.dealers.watch(hop.address) for hop in route}
        for address, drops in watched.items():
            problem = self.dealers.problem(address, drops)
            if problem is not None:
                raise self._lost(route, address, problem)
        return watched

    def _lost(self, route: Sequence[Hop], address: str, reason: str) -> PeerFailure:
        # Whatever is queued for it is stale: the next request to this address starts on a new connection.
        self.dealers.drop(address)
        hop = next((hop for hop in route if hop.address == address), None)
        name = describe_hop(hop) if hop is not None else address
        return PeerFailure(f"peer {name} is unreachable: {reason}", address, UNREACHABLE)

    def _incoming(
        self, sockets: Callable[[], list[transport.Socket]], deadline: float, watched: Mapping[str, int]
    ) -> Iterator[_Message | _Lost]:
        """Every message that decodes on `sockets` until `deadline` (time.monotonic), with the socket it came on,
        and every address of `watched` (address → drop count when watching began) whose connection is gone.

        Messages that came first are yielded first. A garbled message is skipped: the request it answers then
        times out and is reported as unanswered."""
        while (remaining := deadline - time.monotonic()) > 0:
            data = sockets()
            wait = min(remaining, _LINK_CHECK_SECONDS) if watched else remaining
            for sock in transport.poll([*data, *self.dealers.monitors(watched)], wait):
                if sock not in data:
                    continue  # a monitor: its events are read below
                received = transport.recv_frames(sock, 0)
                if received is None:
                    continue
                try:
                    header, tensors = decode(received[1])
                except WireError:
                    continue
                yield sock, header, tensors, transport.sender_key(received[1])
            for address, drops in list(watched.items()):
                problem = self.dealers.problem(address, drops)
                if problem is not None:
                    yield _Lost(address, problem)

    def _timeout_error(self, route: Sequence[Hop], kind: Kind, timeout: float) -> SwarmError:
        """Name the first hop that does not answer a ping; otherwise say the route as a whole was too slow."""
        addresses = list(dict.fromkeys(hop.address for hop in route))
        pongs = self.ask_many(addresses, Kind.PING, timeout=min(PING_SECONDS, timeout))
        for hop in route:
            if isinstance(pongs.get(hop.address), SwarmError):
                message = f"peer {describe_hop(hop)} did not answer {kind.value} within {timeout:g} s"
                return PeerFailure(message, hop.address, TIMEOUT)
        chain = " -> ".join(describe_hop(hop) for hop in route)
        return SwarmError(
            f"no {kind.value} result within {timeout:g} s from the route {chain}; every peer answers ping, "
            "so one of them is overloaded (raise --timeout or try again)"
        )

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.dealers.close()
        self.context.forget(self.router, linger_ms=0)
        if self._owns_context:
            self.context.close(linger_ms=0)

    def __enter__(self) -> ComputeClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class InferenceSession:
    """A session along a route: every hop keeps the KV cache of its blocks under one session id.

    Steps must come in order; each carries only the new positions. `close()` frees the caches (peers also
    expire idle sessions, so a client that dies leaks nothing for long).
    """

    def __init__(
        self,
        client: ComputeClient,
        route: Sequence[Hop],
        max_length: int,
        timeout: float | None = None,
        batch: int = 1,
        tee: bool = False,
    ):
        """`tee`: every step asks the hops after the first for a copy of their input (`tees` holds the last step's,
        by the first block of each hop), for checks of one hop alone (--verify)."""
        self.client = client
        self.tee = tee
        self.tees: dict[int, torch.Tensor] = {}
        self.route = tuple(route)
        self.max_length = max_length
        self.batch = batch
        self.timeout = timeout
        self.session_id = new_id()
        # Sent with every message of the session: the peers let only its holder step or close it.
        self.secret = new_id()
        self.step_index = 0
        self.is_open = False
        # Some hops may hold the session once open_session went out, even when it failed further down the route.
        self.opening = False

    def open(self) -> None:
        self.opening = True
        body = {"max_length": self.max_length, "batch": self.batch, "secret": self.secret}
        header = Header(kind=Kind.OPEN_SESSION, request_id=new_id(), session_id=self.session_id, body=body)
        reply = self.client.request(self.route, header, timeout=self.timeout)
        if reply.header.body.get("opened") is not True:
            raise SwarmError(f"peer {self.route[-1].address} did not confirm the session")
        self.is_open = True

    def step(
        self, tensors: Mapping[str, torch.Tensor], positions: tuple[int, int], all_positions: bool = False
    ) -> dict[str, torch.Tensor]:
        """Run one step (new tokens at `positions`; a start before the route's cached length takes the later tokens
        back first) through the route; the last hop's output tensors (a replica's logits for every new position
        with `all_positions`)."""
        if not self.is_open:
            raise SwarmError("the session is not open")
        header = Header(
            kind=Kind.STEP,
            request_id=new_id(),
            session_id=self.session_id,
            step=self.step_index,
            positions=positions,
            body={
                "secret": self.secret,
                **({"all_positions": True} if all_positions else {}),
                **({"tee": True} if self.tee else {}),
            },
        )
        reply = self.client.request(self.route, header, tensors, timeout=self.timeout)
        self.tees = reply.tees
        self.step_index += 1
        return reply.tensors

    def close(self) -> None:
        """Free the session on every hop; a failure here is not worth failing the whole run for."""
        if not self.is_open:
            self.abandon()  # an open_session that failed may still have opened it on the hops before the failure
            return
        self.is_open = self.opening = False
        header = self._close_header()
        # On failure the peers' idle timeout frees it.
        with contextlib.suppress(SwarmError):
            self.client.request(self.route, header, timeout=min(self.timeout or self.client.timeout, 5.0))

    def abandon(self, gone: Collection[str] = ()) -> None:
        """Free the session on every hop but the `gone` ones, each on its own, without waiting: after a failure the
        route is broken, and the hops before and after the failed one still hold caches and session slots."""
        if not (self.is_open or self.opening):
            return
        self.is_open = self.opening = False
        for hop in self.route:
            if hop.address in gone:
                continue
            # A hop that does not get it frees the session after its idle timeout.
            with contextlib.suppress(SwarmError):
                self.client.post([hop], self._close_header())

    def _close_header(self) -> Header:
        body = {"secret": self.secret}
        return Header(kind=Kind.CLOSE_SESSION, request_id=new_id(), session_id=self.session_id, body=body)

    def __enter__(self) -> InferenceSession:
        self.open()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def run_encoder(
    client: ComputeClient,
    route: Sequence[Hop],
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None,
    timeout: float | None = None,
) -> torch.Tensor:
    """One sessionless pass of a whole sequence (positions 0..n) through a route of spans, an encoder's with its
    padding mask; the last hop's hidden states."""
    tensors = {"hidden": hidden.contiguous()}
    if attention_mask is not None:
        tensors["attention_mask"] = attention_mask.to(torch.int64).contiguous()
    header = Header(kind=Kind.STEP, request_id=new_id(), positions=(0, hidden.shape[1]))
    reply = client.request(route, header, tensors, timeout=timeout)
    return expect_hidden(reply.tensors, route[-1].address, hidden.shape[-1])


def in_dtype(hidden: torch.Tensor, dtype: str) -> torch.Tensor:
    """`hidden` in the floating dtype a peer names (as it is when the name is unknown or not a float type)."""
    wanted = DTYPES.get(dtype)
    if wanted is None or not wanted.is_floating_point or wanted == hidden.dtype:
        return hidden
    return hidden.to(wanted)


def expect_hidden(tensors: Mapping[str, torch.Tensor], peer: str, hidden_size: int) -> torch.Tensor:
    """The result's "hidden" tensor, checked for rank, width and finite values (it comes from the network); a bad
    one is the peer's failure, and the client routes around it."""
    try:
        return expect_tensor(tensors, "hidden", rank=3, last_dim=hidden_size)
    except WireError as error:
        raise PeerFailure(f"peer {peer} returned a bad result: {error.message}", peer, BAD_RESULT) from error


def expect_logits(
    tensors: Mapping[str, torch.Tensor], peer: str, vocab_size: int | None, rank: int = 2
) -> torch.Tensor:
    """The result's "logits": (batch, vocab), or (batch, tokens, vocab) with rank 3; checked like hidden states."""
    try:
        return expect_tensor(tensors, "logits", rank=rank, last_dim=vocab_size)
    except WireError as error:
        raise PeerFailure(f"peer {peer} returned a bad result: {error.message}", peer, BAD_RESULT) from error


def probe_rate(client: ComputeClient, peer: PeerInfo, tensors: Mapping[str, torch.Tensor]) -> float | None:
    """Decode steps per second through `peer`'s whole span, measured with one step of one token (`tensors`: the
    step's input) in a session of its own; None when it does not run it (busy, gone, or not serving those blocks).
    The time includes the round trip: what the step costs whoever routes through the peer."""
    session = InferenceSession(client, [Hop(peer.address, peer.blocks)], max_length=2)
    try:
        session.open()
        started = time.perf_counter()
        session.step(tensors, (0, 1))
        seconds = time.perf_counter() - started
    except SwarmError:
        return None
    finally:
        session.close()
    return 1.0 / max(seconds, 1e-6)


def query_peers(client: ComputeClient, addresses: Sequence[str], timeout: float) -> dict[str, PeerInfo | SwarmError]:
    """Ask every address for its `info` at once; each gets a PeerInfo or the error that explains why not.

    A peer's latency is the least round trip of PING_ROUNDS pings, not the info's: on a new connection a round trip
    counts the CurveZMQ handshake (whose ZAP check waits on a thread of each end, 10-20 ms on a busy machine, in
    connection order), and on a loaded machine any one round trip counts the wait for the peer's turn on a core
    (identical loopback peers measured 24 and 34 ms in one round). A delay adds to the path's, never subtracts: the
    least round trip is the path's own."""
    pinged = client.ask_many(addresses, Kind.PING, timeout=timeout)
    reachable = [address for address in addresses if isinstance(pinged[address], Reply)]
    least = {address: _seconds(pinged[address]) for address in reachable}
    for _ in range(PING_ROUNDS - 1):
        for address, reply in client.ask_many(reachable, Kind.PING, timeout=timeout).items():
            least[address] = min(least[address], _seconds(reply))
    replies = {**pinged, **client.ask_many(reachable, Kind.INFO, timeout=timeout)}
    infos: dict[str, PeerInfo | SwarmError] = {}
    for address in addresses:
        reply = replies[address]
        if isinstance(reply, Reply):
            infos[address] = _peer_info(reply, address, least[address])
        else:
            infos[address] = reply
    return infos


def _seconds(reply: Reply | SwarmError) -> float:
    return reply.seconds if isinstance(reply, Reply) else math.inf


def _peer_info(reply: Reply, address: str, latency: float) -> PeerInfo | SwarmError:
    if reply.header.kind is not Kind.INFO:
        return SwarmError(f"peer {address} answered info with {reply.header.kind.value}")
    version = reply.header.body.get("version", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        return SwarmError(f"peer {address} speaks compute protocol {version!r}, this client {PROTOCOL_VERSION}")
    try:
        return PeerInfo.from_info(reply.header.body, address, latency=latency)
    except SwarmError as error:
        return error
