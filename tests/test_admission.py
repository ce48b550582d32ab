"""Admission of sessions and batches on a peer: a pure policy, tested with tables of cases."""

from __future__ import annotations

import pytest

from swarm.peer.admission import AdmissionLimits, admit_batch, admit_session, free_sessions
from swarm.peer.sessions import SessionTable

LIMITS = AdmissionLimits(max_sessions=3, max_session_tokens=100, max_total_tokens=200, max_batch=4)

# (reserved tokens of the open sessions, requested max_length, admitted, code, reason fragment)
SESSION_CASES = [
    ([], 1, True, "", ""),
    ([], 100, True, "", ""),
    ([], 101, False, "busy", "cap of 100 tokens"),
    ([50, 50], 100, True, "", ""),
    ([50, 50, 10], 10, False, "busy", "all 3 sessions"),
    ([100, 90], 10, True, "", ""),
    ([100, 90], 11, False, "busy", "only 10 cached tokens are free"),
    ([100, 100], 1, False, "busy", "only 0 cached tokens"),
    ([], 0, False, "bad_header", "at least 1"),
    ([], -5, False, "bad_header", "at least 1"),
]


@pytest.mark.parametrize(("reserved", "max_length", "admitted", "code", "fragment"), SESSION_CASES)
def test_admit_session(reserved: list[int], max_length: int, admitted: bool, code: str, fragment: str) -> None:
    decision = admit_session(LIMITS, reserved, max_length)
    assert decision.admitted is admitted
    assert decision.code == code
    assert fragment in decision.reason


@pytest.mark.parametrize(
    ("batch", "admitted", "code"),
    [(1, True, ""), (4, True, ""), (5, False, "bad_tensor"), (0, False, "bad_tensor")],
)
def test_admit_batch(batch: int, admitted: bool, code: str) -> None:
    decision = admit_batch(LIMITS, batch)
    assert (decision.admitted, decision.code) == (admitted, code)


@pytest.mark.parametrize(("open_sessions", "expected"), [(0, 3), (2, 1), (3, 0), (7, 0)])
def test_free_sessions(open_sessions: int, expected: int) -> None:
    assert free_sessions(LIMITS, open_sessions) == expected


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_session_table_expires_idle_sessions_and_frees_their_reservation() -> None:
    clock = FakeClock()
    table = SessionTable(LIMITS, idle_timeout=10.0, clock=clock)
    for name in ("a", "b"):
        session, decision = table.open(name, (0, 1), 100, dict)
        assert session is not None and decision.admitted
    assert table.reserved_tokens() == 200
    refused, decision = table.open("c", (0, 1), 1, dict)
    assert refused is None and decision.code == "busy"
    clock.now += 6
    assert table.get("a") is not None  # touching "a" keeps it alive
    clock.now += 6
    expired = table.expire()
    assert [session.session_id for session in expired] == ["b"]
    assert "b" not in table and "a" in table
    admitted, decision = table.open("c", (0, 1), 100, dict)
    assert admitted is not None and decision.admitted


def test_reopening_a_session_replaces_it_and_keeps_it_when_refused() -> None:
    table = SessionTable(LIMITS, idle_timeout=10.0, clock=FakeClock())
    first, _ = table.open("a", (0, 1), 100, dict)
    assert first is not None
    first.cached_tokens = 7
    again, decision = table.open("a", (0, 1), 100, dict)
    assert decision.admitted and again is not None and again is not first and again.cached_tokens == 0
    # A refused reopen leaves the existing session untouched.
    refused, decision = table.open("a", (0, 1), 101, dict)
    assert refused is None and not decision.admitted
    assert table.get("a") is again
    assert [session.session_id for session in table.drain()] == ["a"] and len(table) == 0
