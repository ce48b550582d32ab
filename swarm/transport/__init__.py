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

Received frames are `zmq.Frame` objects (buffers; zero copy): pass them straight to `swarm.wire.decode`.
Timeouts are seconds (float); None waits forever.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import zmq

from swarm.address import Address
from swarm.errors import SwarmError

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Context",
    "DealerPool",
    "Socket",
    "TransportError",
    "bind_router",
    "close_socket",
    "connect_dealer",
    "default_context",
    "normalize_address",
    "poll",
    "recv_frames",
    "send_frames",
]

# The socket type the rest of the code passes around (opaque outside this package).
Socket = zmq.Socket

# Inbound frame cap enforced by libzmq before anything reaches Python: a bit above swarm.wire's 512 MiB
# tensor cap so that an over-cap declaration still gets a readable error reply from wire.decode.
DEFAULT_MAX_MESSAGE_BYTES = 520 * 1024 * 1024
# How long close() keeps unsent messages (milliseconds): enough to flush a last reply, never a hang.
_LINGER_MS = 500
# Messages queued per socket before send_frames reports the destination as congested.
_SEND_HIGH_WATER_MARK = 1000


class TransportError(SwarmError):
    """A socket operation failed (bad address, bind failure, destination congested or gone)."""


def normalize_address(address: str) -> str:
    """'host:port' or 'tcp://host:port' → 'tcp://host:port'."""
    try:
        return Address.parse(address).tcp
    except SwarmError as error:
        raise TransportError(str(error)) from None


class Context:
    """Owns a zmq context and the sockets made through it, so one close() tears everything down."""

    def __init__(self) -> None:
        self._context = zmq.Context()
        self._sockets: list[zmq.Socket[Any]] = []
        self._lock = threading.Lock()

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
        endpoint = normalize_address(address)
        if endpoint.endswith(":0"):
            endpoint = endpoint[:-2] + ":*"
        sock = self._socket(zmq.ROUTER, max_message_bytes)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise TransportError(f"cannot listen on {address}: {exc.strerror}") from None
        bound = sock.getsockopt(zmq.LAST_ENDPOINT)
        bound_text = bound.decode("ascii") if isinstance(bound, bytes) else str(bound)
        return self._track(sock), bound_text

    def connect_dealer(
        self,
        address: str,
        identity: bytes | None = None,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        immediate: bool = False,
    ) -> zmq.Socket[Any]:
        """A DEALER connected to `address`; `identity` is the routing id the far ROUTER will see.

        `immediate`: queue messages only once the connection is up (sends before that fail with Again).
        """
        endpoint = normalize_address(address)
        sock = self._socket(zmq.DEALER, max_message_bytes)
        if immediate:
            sock.setsockopt(zmq.IMMEDIATE, 1)
        if identity is not None:
            if not 1 <= len(identity) <= 255 or identity[0] == 0:
                sock.close(linger=0)
                raise TransportError("a routing identity must be 1..255 bytes and not start with a zero byte")
            sock.setsockopt(zmq.ROUTING_ID, identity)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise TransportError(f"cannot connect to {address}: {exc.strerror}") from None
        return self._track(sock)

    def forget(self, sock: zmq.Socket[Any], linger_ms: int = _LINGER_MS) -> None:
        """Close one socket made by this context."""
        with self._lock:
            if sock in self._sockets:
                self._sockets.remove(sock)
        close_socket(sock, linger_ms)

    def close(self, linger_ms: int = _LINGER_MS) -> None:
        """Close every socket (flushing for at most `linger_ms`) and the context."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            close_socket(sock, linger_ms)
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


class DealerPool:
    """One DEALER per destination address, made on first use, least recently used ones closed past a cap.

    Destinations come from the network (route hops, reply_to), so the pool is bounded. `identity_prefix`
    names this end to the far ROUTERs (a random suffix keeps identities unique).
    """

    def __init__(
        self,
        context: Context | None = None,
        *,
        identity_prefix: str = "",
        max_sockets: int = 256,
        connect_timeout: float | None = None,
    ) -> None:
        self._context = context or default_context()
        self._identity_prefix = identity_prefix
        self._max_sockets = max_sockets
        # With a connect timeout, messages are queued only on established connections (ZMQ_IMMEDIATE): a send
        # to a destination that cannot be reached within the timeout raises TransportError instead of piling up
        # in memory until the destination comes back.
        self._connect_timeout = connect_timeout
        self._sockets: OrderedDict[str, zmq.Socket[Any]] = OrderedDict()

    def _identity(self) -> bytes | None:
        if not self._identity_prefix:
            return None
        return f"{self._identity_prefix}#{os.urandom(4).hex()}".encode()[:255]

    def get(self, address: str) -> zmq.Socket[Any]:
        """The DEALER connected to `address` (made now if needed)."""
        # Route hops already come as tcp://HOST:PORT: the common case needs no parsing.
        key = address if address in self._sockets else normalize_address(address)
        sock = self._sockets.get(key)
        if sock is not None:
            self._sockets.move_to_end(key)
            return sock
        sock = self._context.connect_dealer(key, self._identity(), immediate=self._connect_timeout is not None)
        self._sockets[key] = sock
        while len(self._sockets) > self._max_sockets:
            _, oldest = self._sockets.popitem(last=False)
            self._context.forget(oldest)
        return sock

    def send(self, address: str, frames: Sequence[Any]) -> None:
        """Send one message to `address` through its DEALER (waiting up to the connect timeout, if set)."""
        sock = self.get(address)
        if self._connect_timeout is not None and not sock.poll(int(self._connect_timeout * 1000), zmq.POLLOUT):
            raise TransportError(f"cannot reach {address} within {self._connect_timeout:g} s")
        send_frames(sock, frames)

    def drop(self, address: str) -> None:
        """Close the DEALER to `address` (e.g. after the destination failed)."""
        sock = self._sockets.pop(normalize_address(address), None)
        if sock is not None:
            self._context.forget(sock, linger_ms=0)

    def sockets(self) -> dict[str, zmq.Socket[Any]]:
        """Address → DEALER, for polling replies that come back on them."""
        return dict(self._sockets)

    def close(self) -> None:
        for sock in self._sockets.values():
            self._context.forget(sock)
        self._sockets.clear()
