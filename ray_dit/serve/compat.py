"""Every use of a private API of Ray Serve or Starlette, in one place. Checked against Ray 2.60
(Serve) and Starlette 0.48-1.x; ``tests/test_serve_compat.py`` fails loudly if a release moves them.

- ``DeploymentHandle.options(_by_reference=True)``: under ``RAY_SERVE_THROUGHPUT_OPTIMIZED`` handles
  default to by-value gRPC calls, whose responses cannot become object references, so the frames
  would travel back through the ingress. By reference they go DiT -> object store -> sink.
- ``DeploymentResponse._to_object_ref()``: waits until a replica accepted the call (a full queue
  raises ``BackPressureError`` here) and gives the result's ``ObjectRef``, which the ingress passes
  to the sink call so Ray sends the frames on the moment they exist.
- ``Request._body``: Starlette's cache of a body already read. The ingress reads bodies itself
  (bounded, 413 beyond the limit), then lets ``request.form()`` parse what it read.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request


def by_reference(handle: Any) -> Any:
    """``handle`` whose calls return object references in every Serve mode."""
    return handle.options(_by_reference=True)


async def object_ref(response: Any) -> Any:
    """The ``ObjectRef`` of a handle call's result, once a replica accepted the call."""
    return await response._to_object_ref()


def cache_body(request: Request, body: bytes) -> None:
    """Make ``request.body()``/``request.form()`` return ``body`` (the stream is already consumed)."""
    request._body = body
