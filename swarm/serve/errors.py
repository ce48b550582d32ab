"""Errors in the OpenAI API's shape, and which HTTP status each failure of the swarm gets.

Pure: an exception in, a status and an error body out.
"""

from __future__ import annotations

from typing import Any

from swarm.client.routing import BUSY, RATE_LIMITED, TIMEOUT, BusyError, PeerFailure, UncoveredError
from swarm.errors import SwarmError

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
RATE_LIMIT = "rate_limit_error"
SERVER = "server_error"
TIMEOUT_TYPE = "timeout_error"


class ApiError(Exception):
    """A request that ends with an HTTP error: status, OpenAI error type, message, optional code and param."""

    def __init__(
        self, status: int, message: str, error_type: str, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, INVALID_REQUEST, code, param)


def _causes(error: BaseException) -> list[BaseException]:
    """The error and the errors it was raised from (a failover that ran out of routes wraps the last failure)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__
    return chain


def from_swarm(error: SwarmError) -> bool:
    """Whether the error is a failure of peers (rather than of the request)."""
    return any(isinstance(cause, (PeerFailure, BusyError, UncoveredError)) for cause in _causes(error))


def swarm_failure(error: SwarmError) -> ApiError:
    """The HTTP error for a request the swarm could not answer: 503 while peers are busy or blocks have no server,
    504 when a peer did not answer in time, 502 for any other failure of a peer."""
    message = str(error)
    for cause in _causes(error):
        if isinstance(cause, BusyError) or (isinstance(cause, PeerFailure) and cause.code in (BUSY, RATE_LIMITED)):
            return ApiError(503, message, SERVER, "swarm_busy")
        if isinstance(cause, UncoveredError):
            return ApiError(503, message, SERVER, "swarm_uncovered")
        if isinstance(cause, PeerFailure) and cause.code == TIMEOUT:
            return ApiError(504, message, TIMEOUT_TYPE, "peer_timeout")
    return ApiError(502, message, SERVER, "swarm_failed")
