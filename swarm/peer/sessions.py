"""Open inference sessions on a peer: one KV cache per session, bounded in count, length, batch and idle time.

A session belongs to whoever opened it: the opener chose a secret, and only messages carrying it touch the
session. An id already in use is refused (never silently replaced), and only steps that ran keep it alive."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from swarm.peer.admission import Admission, AdmissionLimits, HeldSession, admit_session, sessions_to_evict

log = logging.getLogger("swarm.peer")

# Refusal code for an open_session whose id is already open on this peer.
SESSION_EXISTS = "session_exists"
# Seconds a session may stay open without any step before a newcomer refused as busy may take its place. Clients
# step as soon as the open is confirmed (a round trip); at the default rate limit (10 new sessions a second from
# one source) a flood of opens can hold at most 10 such sessions, so it never fills the default 16 slots.
UNUSED_SESSION_GRACE_SECONDS = 1.0


@dataclass
class Session:
    """One client's generation state on this peer."""

    session_id: str
    # Blocks [start, end) this peer runs for the session (fixed at open: the cache holds only those layers).
    blocks: tuple[int, int]
    # Most tokens (prompt + generated) the cache may hold for each sequence; reserved at admission.
    max_length: int
    # Sequences in every step, declared at open (the cache reserved is max_length x batch).
    batch: int
    cache: Any
    last_used: float
    # What every message of the session must carry: proof that it comes from the session's opener.
    secret: str = ""
    # Where the session's results go, so a shutting-down peer can tell the client.
    reply_to: str | None = None
    request_id: str = "-"
    next_step: int = 0
    cached_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reserved(self) -> int:
        """Cache tokens the session holds back: its length for each of its sequences."""
        return self.max_length * self.batch

    def owned_by(self, secret: object) -> bool:
        return isinstance(secret, str) and hmac.compare_digest(secret.encode(), self.secret.encode())


class SessionTable:
    """Sessions by id, with admission on open and expiry after `idle_timeout` seconds without a message."""

    def __init__(self, limits: AdmissionLimits, idle_timeout: float, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def open(
        self,
        session_id: str,
        blocks: tuple[int, int],
        max_length: int,
        batch: int,
        secret: str,
        make_cache: Callable[[], Any],
    ) -> tuple[Session | None, Admission]:
        """Open a session, if admitted; an id in use is refused (a client that fails over opens a new one)."""
        if session_id in self._sessions:
            return None, Admission(False, SESSION_EXISTS, f"session {session_id!r} is already open")
        for evicted in sessions_to_evict(self.limits, self._held(), max_length, batch, UNUSED_SESSION_GRACE_SECONDS):
            del self._sessions[evicted]
            log.info("session %s dropped: unused for over %g s, and a new one needed its place", evicted,
                     UNUSED_SESSION_GRACE_SECONDS)  # fmt: skip
        reserved = [session.reserved for session in self._sessions.values()]
        admission = admit_session(self.limits, reserved, max_length, batch)
        if not admission.admitted:
            return None, admission
        session = Session(session_id, blocks, max_length, batch, make_cache(), self._clock(), secret=secret)
        self._sessions[session_id] = session
        return session, admission

    def _held(self) -> list[HeldSession]:
        now = self._clock()
        return [
            HeldSession(
                session.session_id, session.reserved, now - session.last_used if session.next_step == 0 else None
            )
            for session in self._sessions.values()
        ]

    def claimable(self) -> int:
        """Sessions a newcomer may take the place of: open for longer than the grace without any step."""
        return sum(
            1
            for held in self._held()
            if held.unused_seconds is not None and held.unused_seconds > UNUSED_SESSION_GRACE_SECONDS
        )

    def get(self, session_id: str) -> Session | None:
        """The open session (its idle timer is not reset: only a step that ran does that, see `touch`)."""
        return self._sessions.get(session_id)

    def touch(self, session: Session) -> None:
        session.last_used = self._clock()

    def close(self, session_id: str) -> Session | None:
        return self._sessions.pop(session_id, None)

    def expire(self) -> list[Session]:
        """Remove and return the sessions idle for longer than the timeout."""
        deadline = self._clock() - self.idle_timeout
        expired = [session for session in self._sessions.values() if session.last_used < deadline]
        for session in expired:
            del self._sessions[session.session_id]
        return expired

    def drain(self) -> list[Session]:
        """Remove and return every session (shutdown)."""
        sessions = list(self._sessions.values())
        self._sessions.clear()
        return sessions

    def reserved_tokens(self) -> int:
        return sum(session.reserved for session in self._sessions.values())
