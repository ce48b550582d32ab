"""Whether a peer takes on a new session or a step (pure policy: no I/O, table-tested).

Every open session reserves its declared `max_length` tokens of KV cache up front, so admitted sessions
can always run to their end: a peer refuses work it could not finish rather than failing it midway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
    # New sessions one source address may open a minute, after a burst of `session_burst` (0: no limit).
    sessions_per_minute: float = 0.0
    session_burst: int = 0


def kv_bytes_per_token(config: Mapping[str, Any], layers: int, itemsize: int) -> int:
    """Bytes one token of one sequence takes in a KV cache of `layers` layers: keys and values, per KV head."""
    heads = int(config.get("num_attention_heads") or config.get("n_head") or 1)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    width = int(config.get("hidden_size") or config.get("n_embd") or 0)
    head_dim = int(config.get("head_dim") or (width // heads if heads else 0))
    return max(1, 2 * layers * kv_heads * head_dim * itemsize)


def cache_token_budget(token_cap: int, budget_bytes: int | None, bytes_per_token: int) -> int:
    """Cache tokens (batch counted) all sessions may reserve together: the token cap, and within `budget_bytes`
    when one is set (at least one token, so that the refusal names the budget rather than failing oddly)."""
    if budget_bytes is None:
        return token_cap
    return max(1, min(token_cap, budget_bytes // max(1, bytes_per_token)))


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


@dataclass(frozen=True)
class HeldSession:
    """An open session as admission sees it: what it reserves, and for how long it has gone unused."""

    session_id: str
    reserved: int
    # Seconds since it opened while no step has run in it; None once one has.
    unused_seconds: float | None


def sessions_to_evict(
    limits: AdmissionLimits, held: Sequence[HeldSession], max_length: int, batch: int, grace: float
) -> list[str]:
    """The sessions to drop so that a new one that `admit_session` refused as busy gets in: the fewest of those
    opened more than `grace` seconds ago and never used, oldest first. Empty when the new one is admitted as it is,
    or when dropping every such session would still not admit it.

    A client sends its first step as soon as the open is confirmed, so a session still unused after `grace` is
    abandoned or a flood's: a flood of opens then only displaces its own sessions, never ones in use."""
    reserved = [session.reserved for session in held]
    if admit_session(limits, reserved, max_length, batch).code != BUSY:
        return []
    stale = sorted(
        (session for session in held if session.unused_seconds is not None and session.unused_seconds > grace),
        key=lambda session: -(session.unused_seconds or 0.0),
    )
    kept = {session.session_id: session.reserved for session in held}
    evicted: list[str] = []
    for session in stale:
        del kept[session.session_id]
        evicted.append(session.session_id)
        if admit_session(limits, list(kept.values()), max_length, batch).admitted:
            return evicted
    return []


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


def stateless_groups(shapes: Sequence[tuple[int, int]], max_tokens: int) -> list[list[int]]:
    """Stateless requests of (batch, tokens) each, in order, grouped into forwards whose padded size (rows x the
    longest) stays within `max_tokens`: running them together costs no more memory than one request may. A request
    that alone exceeds it (admitted under another cap) runs alone."""
    groups: list[list[int]] = []
    rows = longest = 0
    for index, (batch, tokens) in enumerate(shapes):
        if groups and (rows + batch) * max(longest, tokens) <= max_tokens:
            groups[-1].append(index)
            rows, longest = rows + batch, max(longest, tokens)
        else:
            groups.append([index])
            rows, longest = batch, tokens
    return groups


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


# Error code of a refusal because one source opened too many sessions too fast; the client backs off as for busy.
RATE_LIMITED = "rate_limited"


@dataclass(frozen=True)
class Bucket:
    """A token bucket: `tokens` left at time `updated` (seconds)."""

    tokens: float
    updated: float


def take_token(bucket: Bucket | None, now: float, per_minute: float, burst: int) -> tuple[bool, Bucket]:
    """Whether one more event (a new session) is allowed from a source whose bucket is `bucket` (None: a source
    not seen yet, whose bucket is full), and the bucket after it. Tokens come back at `per_minute`, up to `burst`."""
    if bucket is None:
        bucket = Bucket(float(burst), now)
    refilled = min(float(burst), bucket.tokens + max(0.0, now - bucket.updated) * per_minute / 60.0)
    if refilled < 1.0:
        return False, Bucket(refilled, now)
    return True, Bucket(refilled - 1.0, now)
