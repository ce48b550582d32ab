"""Whether a peer takes on a new session or a step (pure policy: no I/O, table-tested).

Every open session reserves its declared `max_length` tokens of KV cache up front, so admitted sessions
can always run to their end: a peer refuses work it could not finish rather than failing it midway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Error code of a refusal; the client tries another peer.
BUSY = "busy"


@dataclass(frozen=True)
class AdmissionLimits:
    max_sessions: int
    # Longest session (prompt + new tokens) one cache may hold.
    max_session_tokens: int
    # Tokens all open sessions may reserve together.
    max_total_tokens: int
    max_batch: int


@dataclass(frozen=True)
class Admission:
    admitted: bool
    code: str = ""
    reason: str = ""


ADMITTED = Admission(True)


def admit_session(
    limits: AdmissionLimits, reserved_tokens: Sequence[int], max_length: int, batch: int = 1
) -> Admission:
    """Admit a new session of `batch` sequences of up to `max_length` tokens each, given the cache tokens the open
    sessions reserved (each its length times its batch)."""
    if max_length < 1:
        return Admission(False, "bad_header", f"max_length must be at least 1, got {max_length}")
    batched = admit_batch(limits, batch)
    if not batched.admitted:
        return batched
    if max_length > limits.max_session_tokens:
        return Admission(
            False, BUSY, f"max_length {max_length} exceeds this peer's cap of {limits.max_session_tokens} tokens"
        )
    if len(reserved_tokens) >= limits.max_sessions:
        return Admission(False, BUSY, f"all {limits.max_sessions} sessions are in use")
    reserved = sum(reserved_tokens)
    wanted = max_length * batch
    if reserved + wanted > limits.max_total_tokens:
        free = max(0, limits.max_total_tokens - reserved)
        return Admission(
            False, BUSY, f"only {free} cached tokens are free, the session asks for {wanted} ({batch} x {max_length})"
        )
    return ADMITTED


def admit_stateless(limits: AdmissionLimits, batch: int, tokens: int) -> Admission:
    """Admit a request without a session (a whole sequence at once): its batch x tokens may not exceed one
    session's length, so one message cannot cost more than a full session does."""
    batched = admit_batch(limits, batch)
    if not batched.admitted:
        return batched
    if batch * tokens > limits.max_session_tokens:
        return Admission(
            False,
            "too_large",
            f"{batch} x {tokens} tokens exceed this peer's cap of {limits.max_session_tokens} tokens per request",
        )
    return ADMITTED


def admit_batch(limits: AdmissionLimits, batch: int) -> Admission:
    """Admit a step or a stateless request over `batch` sequences."""
    if batch < 1:
        return Admission(False, "bad_tensor", "a batch needs at least one sequence")
    if batch > limits.max_batch:
        return Admission(False, "bad_tensor", f"batch of {batch} exceeds this peer's cap of {limits.max_batch}")
    return ADMITTED


def free_sessions(limits: AdmissionLimits, open_sessions: int) -> int:
    """Sessions a peer can still open (reported in `info`)."""
    return max(0, limits.max_sessions - open_sessions)
