"""Errors in OpenAI's shape, and the one place that maps any failure to an HTTP status.

Every error the HTTP API returns is ``{"error": {"message", "type", "param", "code"}}`` so the
official clients raise their usual exception classes. Messages are written for the caller: they
name the field and the limit, and never contain a traceback or a credential. :func:`to_api_error`
maps by exception type (``ray_dit.errors`` and Ray's own), never by message text or class name.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
    RequestCancelledError,
)

from ray_dit.errors import InvalidRequest, RequestCancelled, Unavailable

logger = logging.getLogger("ray.serve")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    500: "server_error",
}
#: Seconds a refused client should wait, given the queue ahead of it (None: not a queue).
RetryAfter = Callable[[int | None], float]
# A backend that is gone or not there yet: the client should retry (503 with Retry-After).
UNAVAILABLE = (
    Unavailable,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
    ActorDiedError,
    ActorUnavailableError,
)


class ApiError(Exception):
    """An HTTP error with OpenAI's body; raised anywhere in the ingress, rendered by one handler."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, param, code, headers)  # pickles through Ray as is
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
            "param": param,
            "code": code,
        }
    }


def invalid(param: str | None, message: str) -> ApiError:
    """A 400 naming the field at fault."""
    return ApiError(400, message, param=param, code="invalid_value")


def busy(message: str, code: str, retry_after_s: float) -> ApiError:
    """A 503 with Retry-After: the server is full or a backend is away, not broken. The openai
    SDKs read ``retry-after-ms`` first (sub-second precision), others the standard header."""
    headers = {
        "Retry-After": str(math.ceil(retry_after_s)),
        "retry-after-ms": str(round(retry_after_s * 1000)),
    }
    return ApiError(503, message, code=code, headers=headers)


def root_cause(exc: BaseException) -> BaseException:
    """The exception a replica raised, inside the RayTaskError(s) that carried it here."""
    for _ in range(5):
        cause = getattr(exc, "cause", None)
        if cause is None:
            break
        exc = cause
    return exc


def to_api_error(exc: BaseException, request_id: str, retry_after: RetryAfter) -> ApiError:
    """Any failure of a generation as an ApiError: 4xx for the caller's mistakes, 503 when busy
    (``retry_after(queued)`` says for how long: the queue's length when it is a full queue)."""
    cause = root_cause(exc)
    if isinstance(cause, ApiError):
        return cause
    if isinstance(exc, BackPressureError) or isinstance(cause, BackPressureError):
        full = exc if isinstance(exc, BackPressureError) else cause
        queued = full.args[0] if full.args and isinstance(full.args[0], int) else None
        return busy("the server is at capacity (queue full); retry later", "queue_full", retry_after(queued))
    if isinstance(cause, InvalidRequest):
        return invalid(cause.param, cause.message)
    if isinstance(cause, RequestCancelled | RequestCancelledError):
        return ApiError(499, "the request was cancelled", code="cancelled")
    name = type(cause).__name__
    if isinstance(cause, Unavailable):  # ours: the message is written for the client
        return busy(f"{cause}; retry later", cause.code, retry_after(None))
    if isinstance(cause, UNAVAILABLE):
        return busy(f"a backend is unavailable ({name}); retry later", "unavailable", retry_after(None))
    # Not the client's fault and not expected: the traceback goes to the log, under the request id.
    logger.error("request %s failed: %s", request_id, name, exc_info=cause)
    return ApiError(500, f"internal error ({name}); request id {request_id}", code="server_error")


def as_handle_error(err: ApiError) -> Exception:
    """What a notebook's handle call raises: InvalidRequest for the caller's mistakes (a ValueError
    naming the field), the ApiError itself otherwise (503 busy, 499 cancelled, 500)."""
    if err.status in (400, 404, 409, 413):
        return InvalidRequest(err.message, err.param)
    return err
