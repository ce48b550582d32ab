"""ZeroMQ socket setup for the compute protocol: the only package that imports zmq.

Every compute peer binds a ROUTER; outward connections are DEALERs. Messages are lists of frames
(swarm.wire's header + tensor frames). ROUTER sockets hand back the sender's routing identity with
each message; DEALER sockets do not (no empty delimiter frame: we never use REQ/REP).

Stable API (shared by swarm.peer and swarm.client):

    context = Context()                                   # one per process or component; close() at the end
    router, address = context.bind_router("tcp://127.0.0.1:0")   # port 0: the OS picks; address is the real one
    dealer = context.connect_dealer("tcp://127.0.0.1:5555", identity=b"...")
    send_frames(dealer, frames)                           # copy=False, never blocks: TransportError when full
    send_frames(router, frames, identity=sender_identity)
    received = recv_frames(router, timeout=1.0)           # None on timeout, else (identity | None, frames)
    ready = poll([router, dealer], timeout=0.5)           # the sockets that have a message waiting
    pool = DealerPool(context)                            # one cached DEALER per destination address
    pool.send("tcp://127.0.0.1:6000", frames)
    pool = DealerPool(context, heartbeat=Heartbeat(2.0))  # DEALERs that ping and are watched
    drops = pool.watch(address)                           # connect (if needed); its drop count so far
    pool.problem(address, drops)                          # None, or why a request sent then cannot be answered

Liveness: a pool made with `heartbeat=Heartbeat(timeout)` sends ZeroMQ heartbeats (ZMQ_HEARTBEAT_IVL/TIMEOUT/TTL)
on every DEALER and watches it with a socket monitor. `pool.link(address)` says whether the connection is up, still
connecting, or down (refused, reset, or silent past the timeout); `link_problem` turns that into a reason. Heartbeats
are answered by libzmq's I/O thread, so a peer whose Python loop is busy computing stays up; a killed one's
connection resets at once.

Received frames are `zmq.Frame` objects (buffers; zero copy): pass them straight to `swarm.wire.decode`.
Timeouts are seconds (float); None waits forever.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from swarm.address import Address
from swarm.errors import SwarmError
from swarm.transport.keys import SwarmKeys

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "NOT_ALLOWED",
    "Context",
    "DealerPool",
    "Heartbeat",
    "Link",
    "LinkEvent",
    "LinkState",
    "Socket",
    "TransportError",
    "bind_router",
    "checks_peer_keys",
    "close_socket",
    "connect_dealer",
    "default_context",
    "link_after",
    "link_problem",
    "normalize_address",
    "poll",
    "recv_frames",
    "send_frames",
    "sender_key",
]

# The socket type the rest of the code passes around (opaque outside this package).
Socket = zmq.Socket

# Inbound frame cap enforced by libzmq before anything reaches Python: a bit above swarm.wire's 512 MiB
# tensor cap so that an over-cap declaration still gets a readable error reply from wire.decode.
DEFAULT_MAX_MESSAGE_BYTES = 520 * 1024 * 1024
# How long close() keeps unsent messages (milliseconds): enough to flush a last reply, never a hang.
_LINGER_MS = 500
# Seconds a posted message waits for its connection when the pool has no connect timeout.
_DEFAULT_CONNECT_SECONDS = 2.0
# Messages queued per socket before send_frames reports the destination as congested.
_SEND_HIGH_WATER_MARK = 1000
# Longest pause between reconnection attempts to a destination that went away (milliseconds; libzmq starts at 100).
_RECONNECT_MAX_MS = 2000


class TransportError(SwarmError):
    """A socket operation failed (bad address, bind failure, destination congested or gone)."""


def normalize_address(address: str) -> str:
    """'host:port' or 'tcp://host:port' (with its '/KEY', if any) → 'tcp://host:port[/KEY]'."""
    return _parsed(address).tcp


def _last_endpoint(sock: zmq.Socket[Any]) -> str:
    bound = sock.getsockopt(zmq.LAST_ENDPOINT)
    return bound.decode("ascii") if isinstance(bound, bytes) else str(bound)


def _bind_endpoint(address: Address) -> str:
    """ZeroMQ's endpoint to bind `address` at: its port 0 spelt '*', which libzmq reads as any free port."""
    endpoint = address.endpoint
    return endpoint[:-2] + ":*" if address.port == 0 else endpoint


def _parsed(address: str) -> Address:
    try:
        return Address.parse(address)
    except SwarmError as error:
        raise TransportError(str(error)) from None


@dataclass(frozen=True)
class Heartbeat:
    """ZeroMQ heartbeats on a connection: it counts as lost after `timeout` seconds without an answer.

    A ping goes out every quarter of the timeout and must be answered within the remaining three quarters, so a
    silent destination is noticed within `timeout` seconds whatever the phase of the pings.
    """

    timeout: float

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise TransportError(f"a liveness timeout must be more than 0 seconds, got {self.timeout:g}")

    @property
    def interval_ms(self) -> int:
        return max(100, int(self.timeout * 250))

    @property
    def timeout_ms(self) -> int:
        return max(100, int(self.timeout * 1000) - self.interval_ms)


class LinkState(StrEnum):
    CONNECTING = "connecting"  # never connected yet
    UP = "up"  # handshake done
    DOWN = "down"  # refused, reset, or silent past the heartbeat timeout


class LinkEvent(IntEnum):
    """The socket monitor events that change what is known about a connection."""

    HANDSHAKE_SUCCEEDED = zmq.EVENT_HANDSHAKE_SUCCEEDED
    DISCONNECTED = zmq.EVENT_DISCONNECTED
    CONNECT_RETRIED = zmq.EVENT_CONNECT_RETRIED
    HANDSHAKE_FAILED_NO_DETAIL = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    HANDSHAKE_FAILED_PROTOCOL = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    HANDSHAKE_FAILED_AUTH = zmq.EVENT_HANDSHAKE_FAILED_AUTH


_LINK_EVENT_MASK = sum(int(event) for event in LinkEvent)
_HANDSHAKE_FAILURES = frozenset({LinkEvent.HANDSHAKE_FAILED_NO_DETAIL, LinkEvent.HANDSHAKE_FAILED_PROTOCOL})


@dataclass(frozen=True)
class Link:
    """What is known about one outgoing connection: its state, since when, and how often it went down."""

    state: LinkState = LinkState.CONNECTING
    since: float = 0.0
    drops: int = 0
    reason: str = ""


NOT_ALLOWED = "the peer refused this node's member key: its allow-list (--allow) does not name it (swarm key prints it)"
_NOT_MEMBER = (
    "as between a private swarm's member and a node without its secret (--swarm-secret) or with another's, or between "
    "a node run with SWARM_ENCRYPT=0 and one without"
)


def link_after(link: Link, event: int, now: float) -> Link:
    """The link after one monitor event (pure). A connection counts as up only after the ZeroMQ handshake: a TCP
    connection to a frozen process is accepted by its kernel, but nobody answers the handshake."""
    if event == LinkEvent.HANDSHAKE_SUCCEEDED:
        return link if link.state is LinkState.UP else Link(LinkState.UP, now, link.drops)
    if event == LinkEvent.DISCONNECTED and link.reason == NOT_ALLOWED:
        return link  # the disconnect a refused handshake ends with: the refusal says more
    if event == LinkEvent.DISCONNECTED and link.state is not LinkState.UP:
        # A CURVE server drops a client that cannot complete its handshake without a word.
        return _down(link, now, f"the connection was closed before the ZeroMQ handshake completed ({_NOT_MEMBER})")
    if event == LinkEvent.DISCONNECTED:
        return _down(link, now, "the connection was lost (closed, reset, or no heartbeat answered)")
    if event == LinkEvent.CONNECT_RETRIED and link.state is not LinkState.DOWN:
        return _down(link, now, "the connection was refused or failed")
    if event == LinkEvent.HANDSHAKE_FAILED_AUTH:
        return _down(link, now, NOT_ALLOWED)
    if event in _HANDSHAKE_FAILURES:
        return _down(link, now, f"the ZeroMQ handshake failed ({_NOT_MEMBER})")
    return link


def _down(link: Link, now: float, reason: str) -> Link:
    return Link(LinkState.DOWN, now, link.drops + 1, reason)


def link_problem(link: Link, drops_before: int, now: float, connect_timeout: float) -> str | None:
    """Why a request over `link` cannot be answered, or None (pure): the connection is down, went down since
    `drops_before` was read (whatever was in flight is lost), or has not come up within `connect_timeout`."""
    if link.state is LinkState.DOWN or link.drops > drops_before:
        return link.reason or "the connection was lost"
    if link.state is LinkState.CONNECTING and now - link.since > connect_timeout:
        return f"no connection within {connect_timeout:g} s"
    return None


def _stop_monitor(sock: zmq.Socket[Any], monitor: zmq.Socket[Any]) -> None:
    """Stop a socket's monitor, then close the PAIR its events came on.

    In this order only: libzmq's I/O thread sends monitor events with a blocking send, so a socket that is still
    monitored while its connections are torn down (or retried) after the PAIR was closed would block that thread,
    and with it every connection of the context."""
    if not sock.closed:
        sock.disable_monitor()
    monitor.close(linger=0)


@dataclass(frozen=True)
class _Look:
    due: float
    interval: float


# A destination whose connection is still being made is looked at after 5 ms, then 10, 20 ... at most every 100 ms.
_FIRST_LOOK_SECONDS = 0.005
_LAST_LOOK_SECONDS = 0.1
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)


def _writable(sock: zmq.Socket[Any]) -> bool:
    """Whether a send would not block now (ZMQ_EVENTS: cheaper than a poll, which builds a poller)."""
    return bool(int(sock.getsockopt(zmq.EVENTS)) & _POLLOUT)


def _monitor_events(monitor: zmq.Socket[Any]) -> list[int]:
    """Event ids waiting on a monitor socket (never blocks). Monitor messages are libzmq's own, over inproc."""
    events: list[int] = []
    # Asking ZMQ_EVENTS first: a receive that finds nothing raises, and raising costs more than the question (a peer
    # with hundreds of connections being made reads their monitors every few milliseconds).
    while int(monitor.getsockopt(zmq.EVENTS)) & _POLLIN:
        try:
            frames = monitor.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.ZMQError:  # Again: nothing more waiting after all
            return events
        if frames and len(frames[0]) == 6:
            events.append(int.from_bytes(frames[0][:2], sys.byteorder))
    return events


@dataclass(frozen=True)
class _AllowList:
    """What ZAP asks about a client's key (Z85): whether the allow-list names it."""

    keys: frozenset[bytes] | None

    def callback(self, _domain: str, key: bytes) -> bool:
        return self.keys is None or key in self.keys


# pyzmq's authenticator logs every refusal at debug level and more: kept out of the swarm's own logs.
_ZAP_LOG = logging.getLogger("swarm.transport.zap")

# The swarm this process belongs to (set once by each command): every Context made without keys of its own uses
# these. Public swarms' keys unless a command says otherwise: encrypted, open to all.
_process_keys: SwarmKeys | None = SwarmKeys.public().with_member(*zmq.curve_keypair())


def use_swarm_keys(keys: SwarmKeys | None) -> None:
    """Make every compute socket this process opens from now on a member of the swarm of `keys` (None: plaintext,
    for measuring what encryption costs and for nodes run with SWARM_ENCRYPT=0)."""
    global _process_keys
    _process_keys = keys


def checks_peer_keys() -> bool:
    """Whether this process is a node of a public encrypted swarm, whose clients reach a peer only at the port its
    own key answers at (swarm.client.peer_keys): with a private swarm's secret nobody outside can answer anyway."""
    return _process_keys is not None and _process_keys.own_listener_pair is not None


class Context:
    """Owns a zmq context and the sockets made through it, so one close() tears everything down.

    With `keys` (or the process's, see use_swarm_keys) every socket speaks CURVE: ROUTERs serve with the swarm's
    server key, DEALERs connect with its client key (or the node's own); others cannot complete a handshake."""

    def __init__(self, keys: SwarmKeys | None = None) -> None:
        self.keys = keys if keys is not None else _process_keys
        self._context = zmq.Context()
        self._sockets: list[zmq.Socket[Any]] = []
        # Monitored socket → the PAIR its events arrive on.
        self._monitors: dict[zmq.Socket[Any], zmq.Socket[Any]] = {}
        self._lock = threading.Lock()
        # Checks the key of every client of this context's CURVE servers against keys.allowed (started on the first
        # bind; libzmq asks it over inproc during each handshake).
        self._authenticator: ThreadAuthenticator | None = None

    def _track(self, sock: zmq.Socket[Any]) -> zmq.Socket[Any]:
        with self._lock:
            self._sockets.append(sock)
        return sock

    def _socket(self, kind: int, max_message_bytes: int) -> zmq.Socket[Any]:
        """A new socket with the options every swarm socket has: bounded linger, queue and inbound frames."""
        sock = self._context.socket(kind)
        sock.setsockopt(zmq.LINGER, _LINGER_MS)
        sock.setsockopt(zmq.SNDHWM, _SEND_HIGH_WATER_MARK)
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        return sock

    def bind_router(
        self, address: str, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> tuple[zmq.Socket[Any], str]:
        """A ROUTER bound to `address` (port 0 or * picks a free port) and the address it really bound."""
        endpoint = _bind_endpoint(_parsed(address))
        sock = self._socket(zmq.ROUTER, max_message_bytes)
        if self.keys is not None:
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.server_secret)
            self._check_clients(self.keys.allowed)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise TransportError(f"cannot listen on {address}: {exc.strerror}") from None
        return self._track(sock), _last_endpoint(sock)

    def listen_with_own_key(self, sock: zmq.Socket[Any], host: str) -> Address | None:
        """Make `sock` (a ROUTER of this context) listen on a second, free port of `host` with this node's own key
        pair (see SwarmKeys.own_listener_pair): the address, with the key, that only this node can answer at; None
        when the context has no such pair."""
        keys = self.keys
        pair = keys.own_listener_pair if keys is not None else None
        if keys is None or pair is None:
            return None
        # libzmq copies a socket's options into each listener when it binds: the first listener keeps the shared key.
        sock.setsockopt(zmq.CURVE_SECRETKEY, pair[1])
        try:
            sock.bind(_bind_endpoint(Address(host, 0)))
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot listen on a second port of {host}: {exc.strerror}") from None
        finally:
            sock.setsockopt(zmq.CURVE_SECRETKEY, keys.server_secret)
        return Address.parse(_last_endpoint(sock)).with_key(pair[0].decode("ascii"))

    def _check_clients(self, allowed: frozenset[bytes] | None) -> None:
        """ZAP for this context's CURVE servers: it admits the `allowed` keys (None: every key) and tags each
        message with its sender's key (`sender_key`)."""
        with self._lock:
            if self._authenticator is not None:
                return
            self._authenticator = ThreadAuthenticator(self._context, log=_ZAP_LOG)
            self._authenticator.start()
            self._authenticator.configure_curve_callback("*", credentials_provider=_AllowList(allowed))

    def connect_dealer(
        self,
        address: str,
        identity: bytes | None = None,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        immediate: bool = False,
        heartbeat: Heartbeat | None = None,
        source: str | None = None,
    ) -> zmq.Socket[Any]:
        """A DEALER connected to `address`; `identity` is the routing id the far ROUTER will see.

        `immediate`: queue messages only once the connection is up (sends before that fail with Again).
        `heartbeat`: ping the far end and drop the connection when it stops answering.
        `source`: the local IP address the connection comes from (a test or tool acting as another host).
        """
        return self._dealer(address, identity, max_message_bytes, immediate, heartbeat, monitored=False,
                            source=source)[0]  # fmt: skip

    def connect_watched_dealer(
        self, address: str, identity: bytes | None, *, immediate: bool, heartbeat: Heartbeat
    ) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
        """Like `connect_dealer` with heartbeats, plus a monitor socket (PAIR) that receives its link events."""
        dealer, monitor = self._dealer(
            address, identity, DEFAULT_MAX_MESSAGE_BYTES, immediate, heartbeat, monitored=True
        )
        if monitor is None:  # unreachable: monitored=True always makes one; keeps the types honest
            raise TransportError("no monitor socket")
        return dealer, monitor

    def _dealer(
        self,
        address: str,
        identity: bytes | None,
        max_message_bytes: int,
        immediate: bool,
        heartbeat: Heartbeat | None,
        monitored: bool,
        source: str | None = None,
    ) -> tuple[zmq.Socket[Any], zmq.Socket[Any] | None]:
        parsed = _parsed(address)
        endpoint = parsed.endpoint
        if source is not None:
            # libzmq's "source;destination" form binds the connection's local end to `source`.
            endpoint = f"tcp://{Address(source, 0)};{endpoint.removeprefix('tcp://')}"
        sock = self._socket(zmq.DEALER, max_message_bytes)
        curve = self._curve_for(parsed)
        if curve is not None:
            sock.setsockopt(zmq.CURVE_SERVERKEY, curve[0])
            sock.setsockopt(zmq.CURVE_PUBLICKEY, curve[1])
            sock.setsockopt(zmq.CURVE_SECRETKEY, curve[2])
        if immediate:
            sock.setsockopt(zmq.IMMEDIATE, 1)
        if heartbeat is not None:
            sock.setsockopt(zmq.HEARTBEAT_IVL, heartbeat.interval_ms)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, heartbeat.timeout_ms)
            # Tells the far end to drop this connection too once our pings stop (it dies with us).
            sock.setsockopt(zmq.HEARTBEAT_TTL, max(100, int(heartbeat.timeout * 1000)) // 100 * 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, _RECONNECT_MAX_MS)
        if identity is not None:
            if not 1 <= len(identity) <= 255 or identity[0] == 0:
                sock.close(linger=0)
                raise TransportError("a routing identity must be 1..255 bytes and not start with a zero byte")
            sock.setsockopt(zmq.ROUTING_ID, identity)
        # The monitor must be attached before connect() to see the first events.
        monitor = self._monitor(sock) if monitored else None
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            if monitor is not None:
                _stop_monitor(sock, monitor)
            sock.close(linger=0)
            raise TransportError(f"cannot connect to {address}: {exc.strerror}") from None
        if monitor is not None:
            with self._lock:
                self._monitors[sock] = monitor
        return self._track(sock), monitor

    def _curve_for(self, address: Address) -> tuple[bytes, bytes, bytes] | None:
        """The server key, then this node's public and secret key, to connect to `address` with; None: plaintext.
        An address with a key is answered only by that key's holder (a plaintext process still encrypts to it)."""
        if self.keys is not None:
            server = address.key.encode("ascii") if address.key else self.keys.server_public
            return server, self.keys.client_public, self.keys.client_secret
        if address.key:
            return (address.key.encode("ascii"), *zmq.curve_keypair())
        return None

    def _monitor(self, sock: zmq.Socket[Any]) -> zmq.Socket[Any]:
        """A PAIR that receives `sock`'s link events. Its queue has no bound: libzmq would block its I/O thread on a
        full one (events are few: a handful per connection, one per reconnection attempt)."""
        endpoint = f"inproc://link-{uuid.uuid4().hex}"
        sock.monitor(endpoint, _LINK_EVENT_MASK)
        monitor = self._context.socket(zmq.PAIR)
        monitor.setsockopt(zmq.RCVHWM, 0)
        monitor.setsockopt(zmq.LINGER, 0)
        monitor.connect(endpoint)
        return monitor

    def forget(self, sock: zmq.Socket[Any], linger_ms: int = _LINGER_MS) -> None:
        """Close one socket made by this context (and its monitor)."""
        with self._lock:
            if sock in self._sockets:
                self._sockets.remove(sock)
            monitor = self._monitors.pop(sock, None)
        if monitor is not None:
            _stop_monitor(sock, monitor)
        close_socket(sock, linger_ms)

    def close(self, linger_ms: int = _LINGER_MS) -> None:
        """Close every socket (flushing for at most `linger_ms`) and the context."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
            monitors, self._monitors = self._monitors, {}
        for sock, monitor in monitors.items():
            _stop_monitor(sock, monitor)
        for sock in sockets:
            close_socket(sock, linger_ms)
        if self._authenticator is not None:
            self._authenticator.stop()
        self._context.term()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


_default_context: Context | None = None
_default_lock = threading.Lock()


def default_context() -> Context:
    """A process-wide Context for callers that do not manage their own (recreated after fork)."""
    global _default_context
    with _default_lock:
        if _default_context is None or getattr(_default_context, "_pid", None) != os.getpid():
            _default_context = Context()
            _default_context._pid = os.getpid()  # type: ignore[attr-defined]
        return _default_context


def bind_router(address: str, context: Context | None = None) -> tuple[zmq.Socket[Any], str]:
    """`Context.bind_router` on `context` or the process-wide one."""
    return (context or default_context()).bind_router(address)


def connect_dealer(address: str, identity: bytes | None = None, context: Context | None = None) -> zmq.Socket[Any]:
    """`Context.connect_dealer` on `context` or the process-wide one."""
    return (context or default_context()).connect_dealer(address, identity)


def close_socket(sock: zmq.Socket[Any], linger_ms: int = _LINGER_MS) -> None:
    """Close a socket, waiting at most `linger_ms` for unsent messages."""
    if not sock.closed:
        sock.close(linger=linger_ms)


def send_frames(sock: zmq.Socket[Any], frames: Sequence[Any], identity: bytes | None = None) -> None:
    """Send one multipart message without copying tensor memory and without blocking.

    On a ROUTER pass the destination's routing `identity` (messages to an unknown identity are dropped
    by ZeroMQ). Raises TransportError when the destination's queue is full or the socket is closed.
    """
    parts: list[Any] = [identity, *frames] if identity is not None else list(frames)
    if not parts:
        raise TransportError("cannot send an empty message")
    try:
        sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
    except zmq.Again:
        raise TransportError("destination is not accepting messages (queue full or not connected)") from None
    except zmq.ZMQError as exc:
        raise TransportError(f"send failed: {exc.strerror}") from None


def recv_frames(sock: zmq.Socket[Any], timeout: float | None) -> tuple[bytes | None, list[Any]] | None:
    """The next message as (sender identity on a ROUTER else None, frames), or None after `timeout` seconds.

    Frames are zero-copy zmq.Frame buffers.
    """
    if timeout is not None and not sock.poll(max(0, int(timeout * 1000)), zmq.POLLIN):
        return None
    try:
        parts = sock.recv_multipart(copy=False)
    except zmq.ZMQError as exc:
        raise TransportError(f"receive failed: {exc.strerror}") from None
    if sock.type == zmq.ROUTER:
        return parts[0].bytes, list(parts[1:])
    return None, list(parts)


def source_address(frames: Sequence[Any]) -> str | None:
    """The IP address a received message came from (libzmq's Peer-Address of its first frame), or None."""
    try:
        address = frames[0].get("Peer-Address")
    except (AttributeError, IndexError, zmq.ZMQError):
        return None
    return address if isinstance(address, str) and address else None


def sender_key(frames: Sequence[Any]) -> str | None:
    """The CURVE key (Z85) of the connection a message came over, as ZAP admitted it, or None (plaintext)."""
    try:
        key = frames[0].get("User-Id")
    except (AttributeError, IndexError, zmq.ZMQError):
        return None
    return key if isinstance(key, str) and key else None


def recv_frames_busy(sock: zmq.Socket[Any], seconds: float) -> tuple[bytes | None, list[Any]] | None:
    """Like `recv_frames`, but checks for the message without sleeping: the thread keeps its CPU awake, so a
    message is taken within microseconds instead of after a wake-up from idle. Between checks the CPU is
    yielded to any other runnable thread."""
    deadline = time.monotonic() + seconds
    while True:
        received = recv_frames(sock, 0)
        if received is not None or time.monotonic() >= deadline:
            return received
        os.sched_yield()


def poll(sockets: Iterable[zmq.Socket[Any]], timeout: float | None) -> list[zmq.Socket[Any]]:
    """The sockets among `sockets` with a message waiting, after at most `timeout` seconds."""
    poller = zmq.Poller()
    for sock in sockets:
        poller.register(sock, zmq.POLLIN)
    events = poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
    return [sock for sock, event in events if event & zmq.POLLIN]


@dataclass
class _Dealer:
    socket: zmq.Socket[Any]
    monitor: zmq.Socket[Any] | None
    link: Link


# Messages waiting for one destination's connection, and bytes waiting for all of them together (see post).
MAX_QUEUED_MESSAGES = 64
MAX_QUEUED_BYTES = 64 << 20


def outbox_refusal(
    queued_messages: int, queued_bytes: int, size: int, max_messages: int = MAX_QUEUED_MESSAGES,
    max_bytes: int = MAX_QUEUED_BYTES,
) -> str | None:  # fmt: skip
    """Why a message of `size` bytes cannot wait for its connection, or None (pure): the destination already
    has `max_messages` waiting, or all destinations together would hold more than `max_bytes`."""
    if queued_messages >= max_messages:
        return f"{queued_messages} messages already wait for the connection"
    if queued_bytes + size > max_bytes:
        return f"{queued_bytes + size} bytes would wait for connections (at most {max_bytes})"
    return None


@dataclass
class Waiting:
    """A message waiting for its destination's connection; `context` is the sender's (returned when it fails)."""

    address: str
    frames: Sequence[Any]
    size: int
    deadline: float
    context: object


@dataclass
class Undelivered:
    """A waiting message given up on: its destination's connection went down or did not come up in time."""

    address: str
    reason: str
    context: object


def _size(frames: Sequence[Any]) -> int:
    return sum(memoryview(frame).nbytes for frame in frames)


class DealerPool:
    """One DEALER per destination address, made on first use, least recently used ones closed past a cap.

    Destinations come from the network (route hops, reply_to), so the pool is bounded. `identity_prefix`
    names this end to the far ROUTERs (a random suffix keeps identities unique). With `heartbeat`, every DEALER
    is pinged and watched (see `link`).
    """

    def __init__(
        self,
        context: Context | None = None,
        *,
        identity_prefix: str = "",
        max_sockets: int = 256,
        connect_timeout: float | None = None,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self._context = context or default_context()
        self._identity_prefix = identity_prefix
        self._max_sockets = max_sockets
        # With a connect timeout, messages are queued only on established connections (ZMQ_IMMEDIATE): a send
        # to a destination that cannot be reached within the timeout raises TransportError instead of piling up
        # in memory until the destination comes back.
        self._connect_timeout = connect_timeout
        self._heartbeat = heartbeat
        self._dealers: OrderedDict[str, _Dealer] = OrderedDict()
        # Messages posted while their connection was being made, per destination in order (see post).
        self._outbox: dict[str, deque[Waiting]] = {}
        self._outbox_bytes = 0
        # When flush next looks at each destination with messages waiting (hundreds, under a flood of messages
        # to dead addresses: looking at all of them every few milliseconds took a fifth of a peer's time).
        self._looks: dict[str, _Look] = {}

    @property
    def heartbeat(self) -> Heartbeat | None:
        return self._heartbeat

    def _identity(self) -> bytes | None:
        if not self._identity_prefix:
            return None
        return f"{self._identity_prefix}#{os.urandom(4).hex()}".encode()[:255]

    def _entry(self, address: str) -> _Dealer:
        # Route hops already come as tcp://HOST:PORT: the common case needs no parsing.
        key = address if address in self._dealers else normalize_address(address)
        entry = self._dealers.get(key)
        if entry is not None:
            self._dealers.move_to_end(key)
            return entry
        immediate = self._connect_timeout is not None
        if self._heartbeat is None:
            sock = self._context.connect_dealer(key, self._identity(), immediate=immediate)
            entry = _Dealer(sock, None, Link(since=time.monotonic()))
        else:
            sock, monitor = self._context.connect_watched_dealer(
                key, self._identity(), immediate=immediate, heartbeat=self._heartbeat
            )
            entry = _Dealer(sock, monitor, Link(since=time.monotonic()))
        self._dealers[key] = entry
        while len(self._dealers) > self._max_sockets:
            _, oldest = self._dealers.popitem(last=False)
            self._close(oldest, _LINGER_MS)
        return entry

    def get(self, address: str) -> zmq.Socket[Any]:
        """The DEALER connected to `address` (made now if needed)."""
        return self._entry(address).socket

    def send(self, address: str, frames: Sequence[Any]) -> None:
        """Send one message to `address` through its DEALER (waiting up to the connect timeout, if set).

        With heartbeats, a destination whose connection is known to be down fails at once instead of waiting."""
        entry = self._entry(address)
        if self._connect_timeout is not None:
            self._wait_writable(address, entry, self._connect_timeout)
        send_frames(entry.socket, frames)

    def post(self, address: str, frames: Sequence[Any], context: object = None) -> None:
        """Send one message to `address` without ever waiting: at once when its connection takes it, otherwise
        queued behind the earlier ones to the same address until `flush` finds the connection up (within the
        connect timeout). TransportError when the connection is known to be down or the queue is full.

        A connection lost before, with nothing waiting on it, is made anew first: that says nothing of the address
        now (the port of a client's reply address is the next client's once the first one closes, and a restarted
        peer listens again), and libzmq's own reconnection may not be up yet. A dead address fails the new
        connection within the connect timeout, as it does a first one."""
        key = self._key(address)
        known = key in self._dealers
        entry = self._entry(address)
        self._update(entry)
        if known and entry.link.state is LinkState.DOWN and not self._outbox.get(key):
            self.drop(key)
            entry = self._entry(address)
            self._update(entry)
        if entry.link.state is LinkState.DOWN:
            raise TransportError(f"cannot reach {address}: {entry.link.reason}")
        queue = self._outbox.get(key)
        if not queue and _writable(entry.socket):
            send_frames(entry.socket, frames)
            return
        size = _size(frames)
        refusal = outbox_refusal(len(queue or ()), self._outbox_bytes, size)
        if refusal is not None:
            raise TransportError(f"cannot queue a message to {address}: {refusal}")
        timeout = self._connect_timeout if self._connect_timeout is not None else _DEFAULT_CONNECT_SECONDS
        waiting = Waiting(key, list(frames), size, time.monotonic() + timeout, context)
        if key not in self._outbox:
            self._looks[key] = _Look(0.0, _FIRST_LOOK_SECONDS)
        self._outbox.setdefault(key, deque()).append(waiting)
        self._outbox_bytes += size

    @property
    def waiting(self) -> int:
        """Messages waiting for their connections."""
        return sum(len(queue) for queue in self._outbox.values())

    def flush(self) -> list[Undelivered]:
        """Send the waiting messages whose connections now take them (in order per destination); return those
        given up on (connection down, or not up before their deadline), with their contexts."""
        given_up: list[Undelivered] = []
        now = time.monotonic()
        for key in list(self._outbox):
            queue = self._outbox[key]
            look = self._looks.get(key, _Look(0.0, _FIRST_LOOK_SECONDS))
            if now < look.due and now <= queue[0].deadline:
                continue
            # Looked at again sooner while the connection is new: most come up within milliseconds.
            self._looks[key] = _Look(now + look.interval, min(2 * look.interval, _LAST_LOOK_SECONDS))
            entry = self._dealers.get(key)
            reason = self._send_waiting(queue, entry, now)
            if reason is not None:
                given_up += [Undelivered(key, reason, waiting.context) for waiting in queue]
                self._outbox_bytes -= sum(waiting.size for waiting in queue)
                queue.clear()
                if entry is not None:
                    self.drop(key)
            if not queue:
                self._outbox.pop(key, None)
                self._looks.pop(key, None)
        return given_up

    def _send_waiting(self, queue: deque[Waiting], entry: _Dealer | None, now: float) -> str | None:
        """Send from the front of `queue` while the connection takes messages; why the rest cannot go, or None."""
        if entry is None:
            return "its connection was closed"
        self._update(entry)
        if entry.link.state is LinkState.DOWN:
            return entry.link.reason or "the connection was lost"
        while queue and _writable(entry.socket):
            waiting = queue.popleft()
            self._outbox_bytes -= waiting.size
            try:
                send_frames(entry.socket, waiting.frames)
            except TransportError as error:
                queue.appendleft(waiting)
                self._outbox_bytes += waiting.size
                return str(error)
        if queue and now > queue[0].deadline:
            return f"no connection within {self._connect_timeout or _DEFAULT_CONNECT_SECONDS:g} s"
        return None

    def _key(self, address: str) -> str:
        return address if address in self._dealers else normalize_address(address)

    def _wait_writable(self, address: str, entry: _Dealer, timeout: float) -> None:
        """Return once `entry` takes a message; TransportError when its link is down or the timeout passes."""
        deadline = time.monotonic() + timeout
        poller: zmq.Poller | None = None
        while True:
            self._update(entry)
            if entry.link.state is LinkState.DOWN:
                raise TransportError(f"cannot reach {address}: {entry.link.reason}")
            if _writable(entry.socket):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransportError(f"cannot reach {address} within {timeout:g} s")
            if poller is None:  # only on the slow path: a connection still being made
                poller = zmq.Poller()
                poller.register(entry.socket, zmq.POLLOUT)
                if entry.monitor is not None:
                    poller.register(entry.monitor, zmq.POLLIN)
            poller.poll(max(1, int(remaining * 1000)))

    def _update(self, entry: _Dealer) -> None:
        if entry.monitor is None:
            return
        for event in _monitor_events(entry.monitor):
            entry.link = link_after(entry.link, event, time.monotonic())

    def link(self, address: str) -> Link | None:
        """What is known about the connection to `address` (events read now); None without heartbeats or a
        DEALER for it."""
        key = address if address in self._dealers else normalize_address(address)
        entry = self._dealers.get(key)
        if entry is None or entry.monitor is None:
            return None
        self._update(entry)
        return entry.link

    def watch(self, address: str) -> int:
        """Make sure a watched DEALER to `address` exists (it pings from now on); the link's drop count so far,
        to pass to `problem`."""
        entry = self._entry(address)
        self._update(entry)
        return entry.link.drops

    def problem(self, address: str, drops_before: int) -> str | None:
        """Why `address` cannot answer a request sent when its drop count was `drops_before` (see
        `link_problem`; the heartbeat timeout is the connect timeout), or None."""
        link = self.link(address)
        if link is None or self._heartbeat is None:
            return None
        return link_problem(link, drops_before, time.monotonic(), self._heartbeat.timeout)

    def monitors(self, addresses: Iterable[str]) -> list[zmq.Socket[Any]]:
        """The monitor sockets of the DEALERs to `addresses`, to poll along with the data sockets."""
        monitors = []
        for address in addresses:
            key = address if address in self._dealers else normalize_address(address)
            entry = self._dealers.get(key)
            if entry is not None and entry.monitor is not None:
                monitors.append(entry.monitor)
        return monitors

    def refresh(self) -> None:
        """Read every pending monitor event (keeps link states current and monitor queues short)."""
        for entry in self._dealers.values():
            self._update(entry)

    def drop(self, address: str) -> None:
        """Close the DEALER to `address` (e.g. after the destination failed)."""
        entry = self._dealers.pop(normalize_address(address), None)
        if entry is not None:
            self._close(entry, 0)

    def sockets(self) -> dict[str, zmq.Socket[Any]]:
        """Address → DEALER, for polling replies that come back on them."""
        return {address: entry.socket for address, entry in self._dealers.items()}

    def _close(self, entry: _Dealer, linger_ms: int) -> None:
        self._context.forget(entry.socket, linger_ms)  # its monitor too

    def close(self) -> None:
        for entry in self._dealers.values():
            self._close(entry, _LINGER_MS)
        self._dealers.clear()
