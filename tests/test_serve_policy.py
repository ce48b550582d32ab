"""The server's pure parts as tables of cases: stop strings over streamed pieces, and the HTTP status of each
failure of the swarm."""

from __future__ import annotations

import pytest

from swarm.client.routing import BusyError, PeerFailure, UncoveredError
from swarm.errors import SwarmError
from swarm.serve.errors import from_swarm, swarm_failure
from swarm.serve.stops import StopScanner


@pytest.mark.parametrize(
    ("stops", "pieces", "shown", "stopped"),
    [
        ([], ["a", "b"], "ab", False),
        (["\n"], ["one", " two\nthree"], "one two", True),
        # A stop string split over pieces is still found, and nothing of it is shown.
        (["END"], ["abc E", "N", "D tail"], "abc ", True),
        # A held-back tail that turns out not to be a stop string is shown in the end.
        (["END"], ["abc EN", "X"], "abc ENX", False),
        (["END"], ["abc EN"], "abc EN", False),
        # The earliest of several stop strings wins.
        (["cd", "b"], ["abcd"], "a", True),
        (["", "x"], ["aaxbb"], "aa", True),
        # After a stop nothing more is shown.
        (["!"], ["hi!", "more"], "hi", True),
    ],
)
def test_stop_scanner(stops: list[str], pieces: list[str], shown: str, stopped: bool) -> None:
    scanner = StopScanner(stops)
    text = "".join(scanner.push(piece) for piece in pieces) + scanner.finish()
    assert (text, scanner.stopped) == (shown, stopped)


def wrapped(cause: SwarmError) -> SwarmError:
    """As a failover that runs out of routes raises it: a plain SwarmError from the last failure."""
    try:
        raise SwarmError(f"no other route: {cause}") from cause
    except SwarmError as error:
        return error


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (BusyError("every peer is busy"), 503, "swarm_busy"),
        (PeerFailure("busy", "tcp://a:1", "busy"), 503, "swarm_busy"),
        (PeerFailure("too fast", "tcp://a:1", "rate_limited"), 503, "swarm_busy"),
        (UncoveredError("no peer serves blocks 2:4"), 503, "swarm_uncovered"),
        (PeerFailure("no answer", "tcp://a:1", "timeout"), 504, "peer_timeout"),
        (PeerFailure("gone", "tcp://a:1", "unreachable"), 502, "swarm_failed"),
        (wrapped(PeerFailure("no answer", "tcp://a:1", "timeout")), 504, "peer_timeout"),
        (wrapped(UncoveredError("no peer serves blocks 2:4")), 503, "swarm_uncovered"),
        (SwarmError("peer returned nonsense"), 502, "swarm_failed"),
    ],
)
def test_swarm_failures_get_their_status(error: SwarmError, status: int, code: str) -> None:
    failure = swarm_failure(error)
    assert (failure.status, failure.code) == (status, code)
    assert failure.body()["error"]["message"] == str(error)


def test_request_errors_are_not_swarm_failures() -> None:
    assert not from_swarm(SwarmError("the prompt is too long"))
    assert from_swarm(wrapped(BusyError("busy")))
