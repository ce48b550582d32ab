"""Admission of sessions and batches on a peer: a pure policy, tested with tables of cases."""

from __future__ import annotations

import pytest

from swarm.peer.admission import (
    AdmissionLimits,
    Bucket,
    HeldSession,
    admit_batch,
    admit_session,
    admit_stateless,
    free_sessions,
    sessions_to_evict,
    stateless_groups,
    take_token,
)
from swarm.peer.sessions import SESSION_EXISTS, UNUSED_SESSION_GRACE_SECONDS, SessionTable

LIMITS = AdmissionLimits(max_sessions=3, max_session_tokens=100, max_total_tokens=200, max_batch=4)

# (reserved tokens of the open sessions, requested max_length, batch, admitted, code, reason fragment)
SESSION_CASES = [
    ([], 1, 1, True, "", ""),
    ([], 100, 1, True, "", ""),
    ([], 101, 1, False, "busy", "cap of 100 tokens"),
    ([50, 50], 100, 1, True, "", ""),
    ([50, 50, 10], 10, 1, False, "busy", "all 3 sessions"),
    ([100, 90], 10, 1, True, "", ""),
    ([100, 90], 11, 1, False, "busy", "only 10 cached tokens are free"),
    ([100, 100], 1, 1, False, "busy", "only 0 cached tokens"),
    ([], 0, 1, False, "bad_header", "at least 1"),
    ([], -5, 1, False, "bad_header", "at least 1"),
    # The batch counts: four sequences of 60 tokens reserve 240 cache tokens, more than the 200 there are.
    ([], 60, 4, False, "busy", "asks for 240 (4 x 60)"),
    ([], 50, 4, True, "", ""),
    ([], 10, 5, False, "bad_tensor", "batch of 5 exceeds"),
    ([], 10, 0, False, "bad_tensor", "at least one sequence"),
]


@pytest.mark.parametrize(("reserved", "max_length", "batch", "admitted", "code", "fragment"), SESSION_CASES)
def test_admit_session(
    reserved: list[int], max_length: int, batch: int, admitted: bool, code: str, fragment: str
) -> None:
    decision = admit_session(LIMITS, reserved, max_length, batch)
    assert decision.admitted is admitted
    assert decision.code == code
    assert fragment in decision.reason


def held(*sessions: tuple[str, int, float | None]) -> list[HeldSession]:
    return [HeldSession(*session) for session in sessions]


# (open sessions: id, reserved, unused seconds or None once stepped; new max_length, batch; expected evictions)
EVICTION_CASES = [
    # Admitted as it is: nothing goes, however stale.
    (held(("a", 50, 9.0)), 10, 1, []),
    # Every slot taken: the oldest unused session past the grace makes room, one is enough.
    (held(("a", 10, 5.0), ("b", 10, 9.0), ("c", 10, None)), 10, 1, ["b"]),
    # Sessions in use are never dropped, nor unused ones within the grace.
    (held(("a", 10, None), ("b", 10, 0.5), ("c", 10, None)), 10, 1, []),
    # The cache budget (200): the oldest stale session is enough for 90 tokens; for 100 both must go; the one in
    # use stays.
    (held(("a", 60, 3.0), ("b", 50, None), ("c", 80, 4.0)), 90, 1, ["c"]),
    (held(("a", 90, 3.0), ("b", 80, None), ("c", 30, 4.0)), 100, 1, ["c", "a"]),
    (held(("a", 60, 3.0), ("b", 20, None), ("c", 80, 4.0)), 100, 2, []),
    (held(("a", 60, 3.0), ("b", 20, 2.0), ("c", 80, 4.0)), 90, 2, ["c", "a"]),
    # Dropping every stale session would still not admit it: nothing is dropped for nothing.
    (held(("a", 100, None), ("b", 90, 3.0)), 101, 1, []),
    (held(("a", 150, None), ("b", 40, 3.0)), 100, 1, []),
    # A refusal that is not about room (a batch over the cap) drops nothing.
    (held(("a", 10, 5.0), ("b", 10, 9.0), ("c", 10, 7.0)), 10, 5, []),
]


@pytest.mark.parametrize(("sessions", "max_length", "batch", "evicted"), EVICTION_CASES)
def test_sessions_to_evict(sessions: list[HeldSession], max_length: int, batch: int, evicted: list[str]) -> None:
    assert sessions_to_evict(LIMITS, sessions, max_length, batch, grace=1.0) == evicted


def test_a_flood_of_opens_displaces_only_its_own_unused_sessions() -> None:
    clock = FakeClock()
    table = SessionTable(LIMITS, idle_timeout=300.0, clock=clock)
    used, _ = table.open("client", (0, 1), 50, 1, "secret-client", dict)
    assert used is not None
    used.next_step = 1  # its first step ran
    for index in range(20):
        table.open(f"flood{index}", (0, 1), 50, 1, "secret-flood", dict)
        clock.now += UNUSED_SESSION_GRACE_SECONDS / 2
    assert "client" in table and len(table) == LIMITS.max_sessions
    clock.now += UNUSED_SESSION_GRACE_SECONDS * 2
    newcomer, decision = table.open("newcomer", (0, 1), 50, 1, "secret-new", dict)
    assert newcomer is not None and decision.admitted
    assert "client" in table and "newcomer" in table


@pytest.mark.parametrize(
    ("batch", "admitted", "code"),
    [(1, True, ""), (4, True, ""), (5, False, "bad_tensor"), (0, False, "bad_tensor")],
)
def test_admit_batch(batch: int, admitted: bool, code: str) -> None:
    decision = admit_batch(LIMITS, batch)
    assert (decision.admitted, decision.code) == (admitted, code)


@pytest.mark.parametrize(
    ("batch", "tokens", "admitted", "code"),
    [(1, 100, True, ""), (4, 25, True, ""), (4, 26, False, "too_large"), (5, 1, False, "bad_tensor")],
)
def test_admit_stateless(batch: int, tokens: int, admitted: bool, code: str) -> None:
    decision = admit_stateless(LIMITS, batch, tokens)
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
        session, decision = table.open(name, (0, 1), 100, 1, "secret-" + name, dict)
        assert session is not None and decision.admitted
    assert table.reserved_tokens() == 200
    refused, decision = table.open("c", (0, 1), 1, 1, "secret-c", dict)
    assert refused is None and decision.code == "busy"
    clock.now += 6
    session = table.get("a")
    assert session is not None
    table.get("b")  # looking a session up (a message that may not be its owner's) does not keep it alive
    table.touch(session)  # a step that ran does
    clock.now += 6
    expired = table.expire()
    assert [session.session_id for session in expired] == ["b"]
    assert "b" not in table and "a" in table
    admitted, decision = table.open("c", (0, 1), 100, 1, "secret-c", dict)
    assert admitted is not None and decision.admitted


def test_an_open_session_is_never_replaced_and_belongs_to_its_opener() -> None:
    table = SessionTable(LIMITS, idle_timeout=10.0, clock=FakeClock())
    first, _ = table.open("a", (0, 1), 50, 2, "the-owners-secret", dict)
    assert first is not None and first.reserved == 100
    first.cached_tokens = 7
    again, decision = table.open("a", (0, 1), 10, 1, "someone-else", dict)
    assert again is None and decision.code == SESSION_EXISTS
    assert table.get("a") is first and first.cached_tokens == 7
    assert first.owned_by("the-owners-secret")
    assert not first.owned_by("someone-else") and not first.owned_by(None) and not first.owned_by(7)
    assert [session.session_id for session in table.drain()] == ["a"] and len(table) == 0


@pytest.mark.parametrize(
    ("bucket", "now", "allowed", "tokens_after"),
    [
        (None, 100.0, True, 2.0),  # a new source starts with a full burst
        (Bucket(0.5, 100.0), 100.0, False, 0.5),  # empty: refused, nothing taken
        (Bucket(0.5, 100.0), 110.0, True, 0.5),  # 10 s at 6 a minute brings one token back
        (Bucket(0.0, 0.0), 1000.0, True, 2.0),  # refills only up to the burst
        (Bucket(2.0, 50.0), 40.0, True, 1.0),  # a clock that went back adds nothing
    ],
)
def test_take_token(bucket: Bucket | None, now: float, allowed: bool, tokens_after: float) -> None:
    taken, after = take_token(bucket, now, per_minute=6, burst=3)
    assert (taken, after.tokens, after.updated) == (allowed, pytest.approx(tokens_after), now)


@pytest.mark.parametrize(
    ("shapes", "max_tokens", "groups"),
    [
        ([], 100, []),
        ([(1, 10)], 100, [[0]]),
        ([(1, 10), (1, 20), (1, 30)], 100, [[0, 1, 2]]),  # 3 rows x 30 = 90
        ([(1, 10), (1, 20), (1, 40)], 100, [[0, 1], [2]]),  # the third would pad all three to 40: 120
        ([(2, 50), (1, 10)], 100, [[0], [1]]),  # 3 rows x 50 = 150
        ([(1, 200), (1, 10), (1, 10)], 100, [[0], [1, 2]]),  # one over the cap alone runs alone
        ([(4, 25), (1, 1)], 100, [[0], [1]]),
        ([(1, 5)] * 4, 20, [[0, 1, 2, 3]]),
        ([(1, 5)] * 5, 20, [[0, 1, 2, 3], [4]]),
    ],
)
def test_stateless_requests_are_grouped_within_one_requests_cap(
    shapes: list[tuple[int, int]], max_tokens: int, groups: list[list[int]]
) -> None:
    assert stateless_groups(shapes, max_tokens) == groups
