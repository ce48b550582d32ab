"""Liveness of connections: ZeroMQ heartbeats and socket monitor events turned into up / connecting / down.

The state policy is pure and table-tested. The rest runs against real processes over real TCP: a destination that
is killed, frozen (SIGSTOP), busy (its loop never reads), refused, or a TCP listener that never speaks ZeroMQ.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from swarm import transport
from swarm.transport import (
    NOT_ALLOWED,
    Heartbeat,
    Link,
    LinkEvent,
    LinkState,
    link_after,
    link_problem,
    outbox_refusal,
)

UP = Link(LinkState.UP, since=1.0, drops=0)
CONNECTING = Link(LinkState.CONNECTING, since=1.0)
DOWN = Link(LinkState.DOWN, since=1.0, drops=1, reason="gone")

LINK_CASES = [
    # (case id, link before, event, state after, drops after)
    ("handshake brings it up", CONNECTING, LinkEvent.HANDSHAKE_SUCCEEDED, LinkState.UP, 0),
    ("a new handshake after a loss", DOWN, LinkEvent.HANDSHAKE_SUCCEEDED, LinkState.UP, 1),
    ("a lost connection", UP, LinkEvent.DISCONNECTED, LinkState.DOWN, 1),
    ("refused before it ever came up", CONNECTING, LinkEvent.CONNECT_RETRIED, LinkState.DOWN, 1),
    ("retries while down change nothing", DOWN, LinkEvent.CONNECT_RETRIED, LinkState.DOWN, 1),
    ("a failed handshake", CONNECTING, LinkEvent.HANDSHAKE_FAILED_PROTOCOL, LinkState.DOWN, 1),
    ("refused by an allow-list", CONNECTING, LinkEvent.HANDSHAKE_FAILED_AUTH, LinkState.DOWN, 1),
    # The disconnect that follows the refusal keeps the refusal as the reason (and is not a second drop).
    ("then disconnected", Link(LinkState.DOWN, 1.0, 1, NOT_ALLOWED), LinkEvent.DISCONNECTED, LinkState.DOWN, 1),
    ("up stays up on a repeated handshake", UP, LinkEvent.HANDSHAKE_SUCCEEDED, LinkState.UP, 0),
    # TCP connected (event 1) is not up: a frozen process's kernel accepts connections nobody answers.
    ("tcp connected is not up", CONNECTING, 1, LinkState.CONNECTING, 0),
    ("unknown events change nothing", UP, 1 << 20, LinkState.UP, 0),
]  # fmt: skip


@pytest.mark.parametrize(
    ("link", "event", "state", "drops"), [case[1:] for case in LINK_CASES], ids=[case[0] for case in LINK_CASES]
)
def test_link_after(link: Link, event: int, state: LinkState, drops: int) -> None:
    after = link_after(link, event, now=5.0)
    assert (after.state, after.drops) == (state, drops)
    assert after.since == (link.since if after.state is link.state else 5.0)
    assert bool(after.reason) == (state is LinkState.DOWN)


PROBLEM_CASES = [
    # (case id, link, drops when the request went out, now, problem or None)
    ("up", UP, 0, 100.0, None),
    ("down", DOWN, 1, 1.5, "gone"),
    ("went down and came back since", Link(LinkState.UP, 3.0, drops=2), 1, 3.5, "the connection was lost"),
    ("connecting, within the timeout", CONNECTING, 0, 2.9, None),
    ("connecting past the timeout", CONNECTING, 0, 3.1, "no connection within 2 s"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("link", "drops", "now", "problem"), [case[1:] for case in PROBLEM_CASES], ids=[case[0] for case in PROBLEM_CASES]
)
def test_link_problem(link: Link, drops: int, now: float, problem: str | None) -> None:
    assert link_problem(link, drops, now, connect_timeout=2.0) == problem


@pytest.mark.parametrize(
    ("timeout", "interval_ms", "timeout_ms"), [(2.0, 500, 1500), (1.0, 250, 750), (0.2, 100, 100), (10.0, 2500, 7500)]
)
def test_heartbeat_pings_often_enough_to_notice_within_the_timeout(
    timeout: float, interval_ms: int, timeout_ms: int
) -> None:
    beat = Heartbeat(timeout)
    assert (beat.interval_ms, beat.timeout_ms) == (interval_ms, timeout_ms)


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan")])
def test_a_liveness_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(transport.TransportError, match="liveness timeout must be more than 0"):
        Heartbeat(timeout)


# A destination process: a ROUTER that echoes, or (busy) one whose loop never reads, as a peer that computes.
DESTINATION = """
import sys, time
from swarm import transport
router, address = transport.bind_router("tcp://127.0.0.1:0")
print(address, flush=True)
while True:
    if sys.argv[1] == "busy":
        time.sleep(3600)
    received = transport.recv_frames(router, 0.1)
    if received is not None:
        transport.send_frames(router, received[1], identity=received[0])
"""
TIMEOUT = 1.0


def start_destination(mode: str = "echo") -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, "-c", DESTINATION, mode], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


@pytest.fixture
def destinations() -> Iterator[Callable[[str], tuple[subprocess.Popen[str], str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(mode: str = "echo") -> tuple[subprocess.Popen[str], str]:
        process, address = start_destination(mode)
        started.append(process)
        return process, address

    yield start
    for process in started:
        process.kill()
        process.wait()


@pytest.fixture
def pool() -> Iterator[transport.DealerPool]:
    with transport.Context() as context:
        dealers = transport.DealerPool(context, heartbeat=Heartbeat(TIMEOUT), connect_timeout=2.0)
        yield dealers
        dealers.close()


def wait_for(pool: transport.DealerPool, address: str, state: LinkState, seconds: float) -> float:
    """Seconds until the link to `address` reaches `state` (AssertionError after `seconds`)."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        link = pool.link(address)
        if link is not None and link.state is state:
            return time.monotonic() - started
        transport.poll(pool.monitors([address]), 0.02)
    raise AssertionError(f"{address} not {state.value} within {seconds} s: {pool.link(address)}")


def test_a_killed_destination_is_down_at_once_and_sends_to_it_fail_fast(
    pool: transport.DealerPool, destinations: Callable[[str], tuple[subprocess.Popen[str], str]]
) -> None:
    process, address = destinations("echo")
    drops = pool.watch(address)
    wait_for(pool, address, LinkState.UP, 5.0)
    process.send_signal(signal.SIGKILL)
    assert wait_for(pool, address, LinkState.DOWN, 5.0) < 0.5
    assert pool.problem(address, drops) is not None
    started = time.monotonic()
    with pytest.raises(transport.TransportError, match=rf"cannot reach {address}: the connection was lost"):
        pool.send(address, [b"x"])
    pool.drop(address)
    with pytest.raises(transport.TransportError, match="refused"):
        pool.send(address, [b"x"])  # a new connection: refused, known in milliseconds, not the 2 s connect timeout
    assert time.monotonic() - started < 0.5


def test_a_frozen_destination_is_down_after_the_heartbeat_timeout(
    pool: transport.DealerPool, destinations: Callable[[str], tuple[subprocess.Popen[str], str]]
) -> None:
    process, address = destinations("echo")
    pool.watch(address)
    wait_for(pool, address, LinkState.UP, 5.0)
    process.send_signal(signal.SIGSTOP)
    try:
        # Its kernel keeps the TCP connection; only the unanswered heartbeats tell.
        assert TIMEOUT * 0.5 < wait_for(pool, address, LinkState.DOWN, 5.0) < TIMEOUT + 0.5
    finally:
        process.send_signal(signal.SIGCONT)
    # Thawed, it answers the handshake of the reconnection.
    wait_for(pool, address, LinkState.UP, 5.0)


def test_a_busy_destination_stays_up(
    pool: transport.DealerPool, destinations: Callable[[str], tuple[subprocess.Popen[str], str]]
) -> None:
    """Its Python loop never reads (a peer computing a long step): libzmq's I/O thread answers the heartbeats."""
    _, address = destinations("busy")
    drops = pool.watch(address)
    wait_for(pool, address, LinkState.UP, 5.0)
    pool.send(address, [b"work"])
    deadline = time.monotonic() + 3 * TIMEOUT
    while time.monotonic() < deadline:
        transport.poll(pool.monitors([address]), 0.1)
        assert pool.problem(address, drops) is None, pool.link(address)


def test_a_listener_that_never_speaks_zeromq_is_not_up(pool: transport.DealerPool) -> None:
    """The kernel completes the TCP connection, no handshake follows: no connection within the timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        drops = pool.watch(address)
        time.sleep(TIMEOUT * 0.5)
        assert pool.problem(address, drops) is None
        time.sleep(TIMEOUT * 0.6 + 0.1)
        assert pool.problem(address, drops) == f"no connection within {TIMEOUT:g} s"


def test_dropping_watched_connections_never_stalls_the_context(
    destinations: Callable[[str], tuple[subprocess.Popen[str], str]],
) -> None:
    """Connections to a dead address retry in libzmq's I/O thread, which reports each try to the monitor with a
    blocking send: dropped carelessly (the monitor's reading end closed first) they stall that thread, and every
    later connection of the context with it."""
    _, live = destinations("echo")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    with transport.Context() as context:
        for _ in range(30):
            dropping = transport.DealerPool(context, heartbeat=Heartbeat(TIMEOUT))
            dropping.watch(dead)
            time.sleep(0.01)
            dropping.drop(dead)
            dropping.close()
        fresh = transport.DealerPool(context, heartbeat=Heartbeat(TIMEOUT))
        fresh.watch(live)
        assert wait_for(fresh, live, LinkState.UP, 3.0) < 1.0
        fresh.close()


@pytest.mark.parametrize(
    ("queued_messages", "queued_bytes", "size", "refused"),
    [
        (0, 0, 100, None),
        (63, 0, 100, None),
        (64, 0, 100, "64 messages already wait for the connection"),
        (0, 1000, 24, None),
        (0, 1000, 25, "1025 bytes would wait for connections (at most 1024)"),
    ],
)
def test_outbox_refusal(queued_messages: int, queued_bytes: int, size: int, refused: str | None) -> None:
    assert outbox_refusal(queued_messages, queued_bytes, size, max_messages=64, max_bytes=1024) == refused


def test_posted_messages_wait_for_their_connection_in_order() -> None:
    """A DEALER pool's post never waits: messages posted while the connection is being made are queued and sent
    in order once it is up; to a refused or silent address they are given up on, with their contexts."""
    context = transport.Context()
    pool = transport.DealerPool(context, connect_timeout=1.0, heartbeat=Heartbeat(1.0))
    try:
        router, address = context.bind_router("tcp://127.0.0.1:0")
        started = time.monotonic()
        for index in range(3):
            pool.post(address, [str(index).encode()], context=index)
        assert time.monotonic() - started < 0.1
        deadline = time.monotonic() + 5
        while pool.waiting and time.monotonic() < deadline:
            assert pool.flush() == []
            time.sleep(0.01)
        received = [transport.recv_frames(router, 5) for _ in range(3)]
        assert [bytes(message[1][0]) for message in received if message is not None] == [b"0", b"1", b"2"]
        with socket.socket() as refusing, socket.socket() as silent:
            refusing.bind(("127.0.0.1", 0))
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            addresses = [f"tcp://127.0.0.1:{sock.getsockname()[1]}" for sock in (refusing, silent)]
            given_up: list[transport.Undelivered] = []
            for address_, label in zip(addresses, ("refused", "silent"), strict=True):
                try:
                    pool.post(address_, [b"lost"], context=label)
                except transport.TransportError:
                    # The refusal came back before post looked at the link: it says so at once instead of queueing.
                    assert label == "refused"
                    given_up.append(transport.Undelivered(address_, "refused", label))
            while len(given_up) < 2 and time.monotonic() < deadline + 5:
                given_up += pool.flush()
                time.sleep(0.01)
        assert sorted((item.address, item.context) for item in given_up) == sorted(
            zip(addresses, ("refused", "silent"), strict=True)
        )
    finally:
        pool.close()
        context.close(linger_ms=0)


def test_a_post_after_a_lost_connection_reaches_who_listens_there_now() -> None:
    """A client's reply port is the next client's once the first closes: a reply posted to that address after the
    first connection was lost goes to the new listener (it was refused as 'connection lost', and its client waited
    out its request timeout)."""
    context = transport.Context()
    pool = transport.DealerPool(context, connect_timeout=2.0, heartbeat=Heartbeat(1.0))
    deadline = time.monotonic() + 10

    def deliver(message: bytes, router: Any) -> None:
        pool.post(address, [message])
        while pool.waiting and time.monotonic() < deadline:
            assert pool.flush() == []
            time.sleep(0.01)
        received = transport.recv_frames(router, 5)
        assert received is not None and bytes(received[1][0]) == message

    try:
        first, address = context.bind_router("tcp://127.0.0.1:0")
        deliver(b"to the first", first)
        context.forget(first, 0)
        while (link := pool.link(address)) is not None and link.state is not LinkState.DOWN:
            assert time.monotonic() < deadline, "the closed listener's connection never counted as lost"
            time.sleep(0.01)
        second, _ = context.bind_router(address)
        deliver(b"to the second", second)
    finally:
        pool.close()
        context.close(linger_ms=0)
