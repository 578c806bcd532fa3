"""The FastAPI app behind the ingress: error rendering, request metrics, auth and body reading.

Kept apart from the deployment class so the HTTP plumbing (OpenAI's error shape for every
failure, the bounded body read, constant-time bearer auth on every ``/v1`` route) can be read and
tested on its own.
"""

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import uuid
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from ray_dit.config import ServerSettings, server_from_env
from ray_dit.serve import metrics
from ray_dit.serve.compat import cache_body
from ray_dit.serve.errors import ApiError, error_body, to_api_error
from ray_dit.serve.signing import EXPIRES, SIGNATURE, SignatureRefused, UrlSigner, image_output

logger = logging.getLogger("ray.serve")


class _RequestMetrics:
    """ASGI middleware: counts answered requests by route template and status code."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": "500"}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            status["code"] = "499"  # client closed the request
            raise
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            with contextlib.suppress(Exception):
                metrics.requests_total().inc(tags={"endpoint": endpoint, "status": status["code"]})


app = FastAPI(
    title="ray_dit",
    description="OpenAI-compatible image and video generation with DiT models on Ray Serve.",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)
app.add_middleware(_RequestMetrics)


def _error_response(err: ApiError) -> JSONResponse:
    if err.status in (401, 403, 413, 503) or err.code in ("invalid_value", "invalid_json"):
        with contextlib.suppress(Exception):
            metrics.rejected_total().inc(tags={"reason": err.code or str(err.status)})
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


@app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return _error_response(exc)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    err = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
    name = ".".join(loc) or "request"
    return _error_response(
        ApiError(
            400, f"{name}: {err.get('msg', 'invalid')}", param=loc[0] if loc else None, code="invalid_value"
        )
    )


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404:
        message = f"unknown route: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code)


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Whatever a route did not translate (a job store that went away, a bug) goes through the
    same mapping as a generation's failures: 503 for what is away, else a logged 500."""
    error_id = f"{request.method} {request.url.path} {uuid.uuid4().hex[:12]}"
    floor_s = float(edge_settings().retry_after_s)
    return _error_response(to_api_error(exc, error_id, lambda queued: floor_s))


@functools.cache
def edge_settings() -> ServerSettings:
    """This process's ``RAY_DIT_*`` edge settings, read once. Not from the ingress object: Serve
    serves a frozen copy of ``app``, so state set on it after start-up would never be seen (auth
    would be silently off)."""
    return server_from_env()


def configured_api_key() -> SecretStr | None:
    return edge_settings().api_key


def edge_signer() -> UrlSigner | None:
    """The signer of this process's content URLs (None while auth is off); from the settings read
    once, so it follows ``edge_settings.cache_clear()``."""
    return UrlSigner.from_settings(edge_settings())


def _signed_output(request: Request) -> tuple[str, int] | None:
    """The output a signed content URL names: (output id, index) on the two ``/content`` routes
    when the query carries a signature or an expiry; None otherwise (the bearer key is needed)."""
    query = request.query_params
    if EXPIRES not in query and SIGNATURE not in query:
        return None
    template = getattr(request.scope.get("route"), "path", None)
    if template == "/v1/images/{image_id}/content":
        return image_output(request.path_params.get("image_id", "")) or ("", 0)  # "" never verifies
    if template == "/v1/videos/{video_id}/content":
        return request.path_params.get("video_id", ""), 0
    return None


def require_api_key(request: Request) -> None:
    """401 unless auth is off or the bearer token matches ``RAY_DIT_API_KEY``.

    A dependency of the whole ``/v1`` router, so a new route cannot forget it. The one exception:
    a ``/content`` route asked without an Authorization header but with a signed URL's query is
    let through when the signature is valid and unexpired, else refused with 403
    (``serve/signing.py`` says why).
    """
    key = configured_api_key()
    if not key:
        return
    output = _signed_output(request) if "authorization" not in request.headers else None
    signer = edge_signer() if output is not None else None
    if signer is not None and output is not None:
        try:
            signer.verify(*output, request.query_params)
        except SignatureRefused as refused:
            raise ApiError(403, refused.message, param=SIGNATURE, code=refused.code) from None
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", **_CHALLENGE)
    # Compare digests in constant time, so neither the content nor the length of the key leaks.
    given = hashlib.sha256(token.strip().encode()).digest()
    if not hmac.compare_digest(given, hashlib.sha256(key.get_secret_value().encode()).digest()):
        raise ApiError(401, "incorrect API key", **_CHALLENGE)


_CHALLENGE: dict[str, Any] = {"code": "invalid_api_key", "headers": {"WWW-Authenticate": "Bearer"}}
#: Every OpenAI-compatible route; the ingress mounts it on ``app`` once its routes are defined.
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


async def read_body(request: Request, limit: int, setting: str = "RAY_DIT_MAX_BODY_BYTES") -> bytes:
    """The whole body, refused with 413 as soon as it is over ``limit`` bytes (``setting``)."""
    too_big = ApiError(
        413,
        f"request body is over the limit of {limit} bytes ({setting})",
        code="body_too_large",
    )
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    body = b"".join(chunks)
    cache_body(request, body)  # lets request.form() parse what was read here
    return body


async def read_json(request: Request, limit: int) -> Any:
    body = await read_body(request, limit)
    try:
        return json.loads(body)
    except ValueError as exc:  # bad JSON, bad UTF-8, an integer over Python's digit limit
        raise ApiError(400, f"invalid JSON body: {exc}", code="invalid_json") from None
    except RecursionError:  # deeper than Python's parser goes; no API body nests like this
        raise ApiError(400, "invalid JSON body: nested too deeply", code="invalid_json") from None
