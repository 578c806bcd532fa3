"""The private Ray Serve and Starlette APIs that ``ray_dit.serve.compat`` uses are still there.

Each test fails with a message naming what moved, so a Ray or Starlette upgrade that breaks the
frames' path (DiT -> object store -> sink) or the bounded body read is caught here, not in
production.
"""

from __future__ import annotations

import asyncio
import inspect

from ray.serve.handle import DeploymentHandle, DeploymentResponse
from starlette.requests import Request

from ray_dit.serve import compat


def test_handles_still_take_by_reference():
    assert "_by_reference" in inspect.signature(DeploymentHandle.options).parameters


def test_responses_still_become_object_refs():
    method = getattr(DeploymentResponse, "_to_object_ref", None)
    assert method is not None and inspect.iscoroutinefunction(method)


def test_a_cached_body_is_what_form_parses():
    async def receive() -> dict:
        raise AssertionError("the body was read again from the stream")

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"content-type", b"application/x-www-form-urlencoded")],
        "query_string": b"",
    }

    async def parse() -> dict:
        request = Request(scope, receive)
        compat.cache_body(request, b"prompt=a+cat&n=2")
        return dict(await request.form())

    assert asyncio.run(parse()) == {"prompt": "a cat", "n": "2"}
