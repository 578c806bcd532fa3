"""Errors in OpenAI's shape, and the exceptions that carry them across deployments.

Every error the HTTP API returns is ``{"error": {"message", "type", "param", "code"}}`` so the
official clients raise their usual exception classes. Messages are written for the caller: they
name the field and the limit, and never contain a traceback or a credential.
"""

from __future__ import annotations

import re
from typing import Any

from ray_dit.errors import InvalidRequest, RequestCancelled

_PARAM_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.\[\]]*)\s*=")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    500: "server_error",
}


class ApiError(Exception):
    """An HTTP error with OpenAI's body; raised anywhere in the ingress, rendered by one handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)

    def __reduce__(self) -> tuple:
        return (_make_api_error, (self.status, self.message, self.param, self.code, self.headers))


def _make_api_error(
    status: int, message: str, param: str | None, code: str | None, headers: dict
) -> ApiError:
    return ApiError(status, message, param=param, code=code, headers=headers)


__all__ = ["ApiError", "InvalidRequest", "RequestCancelled", "error_body"]


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
            "param": param,
            "code": code,
        }
    }


def param_from_message(message: str, default: str | None = None) -> str | None:
    """'width=100: must be ...' -> 'width' (the engine and config name fields this way)."""
    first = message.split(";")[0]
    match = _PARAM_RE.match(first)
    if match:
        return match.group(1).split(".")[0].split("[")[0]
    return default
