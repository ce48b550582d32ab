"""Open inference sessions on a peer: one KV cache per session, bounded in count, length and idle time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from swarm.peer.admission import Admission, AdmissionLimits, admit_session


@dataclass
class Session:
    """One client's generation state on this peer."""

    session_id: str
    # Blocks [start, end) this peer runs for the session (fixed at open: the cache holds only those layers).
    blocks: tuple[int, int]
    # Most tokens (prompt + generated) the cache may hold; reserved at admission.
    max_length: int
    cache: Any
    last_used: float
    # Where the session's results go, so a shutting-down peer can tell the client.
    reply_to: str | None = None
    request_id: str = "-"
    next_step: int = 0
    cached_tokens: int = 0
    # Fixed by the first step: every later step must carry the same number of sequences.
    batch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


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
        self, session_id: str, blocks: tuple[int, int], max_length: int, make_cache: Callable[[], Any]
    ) -> tuple[Session | None, Admission]:
        """Open (or reopen from scratch, as a client does after failing over) a session, if admitted."""
        # A reopened session gives its old reservation back first.
        previous = self._sessions.pop(session_id, None)
        reserved = [session.max_length for session in self._sessions.values()]
        admission = admit_session(self.limits, reserved, max_length)
        if not admission.admitted:
            if previous is not None:
                self._sessions[session_id] = previous
            return None, admission
        session = Session(
            session_id=session_id,
            blocks=blocks,
            max_length=max_length,
            cache=make_cache(),
            last_used=self._clock(),
        )
        self._sessions[session_id] = session
        return session, admission

    def get(self, session_id: str) -> Session | None:
        session = self._sessions.get(session_id)
        if session is not None:
            session.last_used = self._clock()
        return session

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
        return sum(session.max_length for session in self._sessions.values())
