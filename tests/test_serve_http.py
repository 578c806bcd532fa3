"""The HTTP edge without a cluster: every /v1 route asks for the key, and errors map by type."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from ray import cloudpickle
from ray.exceptions import ActorDiedError, RayTaskError
from ray.serve.exceptions import BackPressureError
from starlette.requests import Request
from starlette.testclient import TestClient

from ray_dit.errors import InvalidRequest, RequestCancelled, StorageUnavailable
from ray_dit.serve.admission import Backlog
from ray_dit.serve.errors import ApiError, to_api_error
from ray_dit.serve.http import _unexpected, edge_settings, read_json
from ray_dit.serve.ingress import app
from ray_dit.serve.uploads import form_to_dict
from ray_dit.sink.spool import SpoolError

KEY = "test-key-0123456789"


def _v1_routes() -> list[tuple[str, str]]:
    """Every (method, path) the app serves under /v1, read from the app itself."""
    found = []
    for template, methods in app.openapi()["paths"].items():
        if template.startswith("/v1"):
            path = re.sub(r"\{[^}]+\}", "img_0123456789abcdef_0", template)
            found += [(method.upper(), path) for method in sorted(methods)]
    return found


@pytest.fixture
def client(monkeypatch):
    """The app as a replica serves it: Serve's frozen copy, with the key in the environment."""
    monkeypatch.setenv("RAY_DIT_API_KEY", KEY)
    edge_settings.cache_clear()
    served = cloudpickle.loads(cloudpickle.dumps(app))  # what serve.ingress does with the app
    with TestClient(served, raise_server_exceptions=False) as test_client:
        yield test_client
    edge_settings.cache_clear()


def test_every_v1_route_refuses_a_missing_or_wrong_key(client):
    routes = _v1_routes()
    # The OpenAI routes of images, videos and models: a new route is covered without being listed.
    assert {path.split("/")[2] for _, path in routes} == {"images", "videos", "models"}
    assert len(routes) >= 9
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
            resp = client.request(method, path, headers=headers)
            assert resp.status_code == 401, (method, path, headers, resp.status_code)
            assert resp.json()["error"]["code"] == "invalid_api_key"
            assert KEY not in resp.text


def test_the_right_key_passes_the_check(client):
    # Past the check the route needs its replica, which a bare app has not: anything but 401.
    resp = client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status_code != 401


def _wait(queued: int | None) -> float:
    return 2.0


def _as_from_a_replica(exc: Exception) -> Exception:
    """What Ray raises in the caller when a replica raised ``exc``."""
    return RayTaskError("generate", "traceback", exc).as_instanceof_cause()


@pytest.mark.parametrize(
    ("raised", "status", "code", "param"),
    [
        (InvalidRequest("num_frames=7: must be 4k+1", "num_frames"), 400, "invalid_value", "num_frames"),
        (InvalidRequest("size: ...", "size"), 400, "invalid_value", "size"),
        (RequestCancelled("gone"), 499, "cancelled", None),
        (StorageUnavailable("S3 is away"), 503, "unavailable", None),
        (RuntimeError("boom"), 500, "server_error", None),
    ],
)
def test_errors_map_by_type_even_through_ray(raised, status, code, param):
    for exc in (raised, _as_from_a_replica(raised)):
        err = to_api_error(exc, "img_0123456789abcdef", lambda queued: 3.0)
        assert (err.status, err.code, err.param) == (status, code, param)
        assert "traceback" not in err.message
        if status == 503:
            assert err.headers == {"Retry-After": "3", "retry-after-ms": "3000"}


def test_a_full_queue_is_a_503_and_an_api_error_passes_through():
    assert (
        to_api_error(BackPressureError(num_queued_requests=8, max_queued_requests=8), "r", _wait).code
        == "queue_full"
    )
    mine = ApiError(404, "no such thing", code="not_found")
    assert to_api_error(mine, "r", _wait) is mine


def _request(body: bytes, content_type: str = "application/json") -> Request:
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/v1/x", "query_string": b"", "app": app}
    scope["headers"] = [(b"content-type", content_type.encode())]
    return Request(scope, receive)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"prompt": "x", "cache_dit_params": ' + b"{" * 50_000 + b'"a": 1}',
        b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}",
        b'{"prompt": "\xff"}',
    ],
    ids=["brackets", "nested-cache-params", "huge-integer", "bad-utf8"],
)
def test_a_body_python_cannot_parse_is_a_400(body):
    with pytest.raises(ApiError) as err:
        asyncio.run(read_json(_request(body), limit=1 << 20))
    assert err.value.status == 400 and err.value.code == "invalid_json"


@pytest.mark.parametrize(
    "items",
    [
        [("prompt", "x"), ("prompt[a]", "y")],
        [("prompt[a]", "y"), ("prompt", "x")],
        [("size[]", "1"), ("size[a]", "2")],
        [("size[][a]", "1")],
    ],
)
def test_a_form_field_given_as_value_and_object_is_a_400(items):
    with pytest.raises(ApiError) as err:
        form_to_dict(items)
    assert err.value.status == 400 and err.value.param == items[0][0].split("[")[0]


def test_the_sdk_form_shapes_still_parse():
    items = [("prompt", "a cat"), ("cache_dit_params[scm_compute_bins][]", "8"), ("seconds", "4")]
    items.append(("cache_dit_params[scm_compute_bins][]", "3"))
    assert form_to_dict(items) == {
        "prompt": "a cat",
        "seconds": "4",
        "cache_dit_params": {"scm_compute_bins": ["8", "3"]},
    }


def test_a_full_disk_under_the_spool_is_a_503_not_a_500():
    err = to_api_error(_as_from_a_replica(SpoolError("no space left on device")), "img_0", _wait)
    assert (err.status, err.code, err.headers["Retry-After"]) == (503, "unavailable", "2")


def test_an_unexpected_error_logs_its_traceback_under_the_request_id(caplog):
    try:
        raise RuntimeError("a bug")
    except RuntimeError as exc:
        err = to_api_error(exc, "img_0123456789abcdef", _wait)
    assert err.status == 500 and "img_0123456789abcdef" in err.message and "a bug" not in err.message
    [record] = [r for r in caplog.records if "img_0123456789abcdef" in r.getMessage()]
    assert record.exc_info is not None and "a bug" in caplog.text


def test_a_route_that_lost_its_backend_answers_503_through_the_app_handler():
    """Errors no route translated (the job store's replica died) use the same mapping."""
    edge_settings.cache_clear()
    response = asyncio.run(_unexpected(_request(b""), ActorDiedError()))
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert json.loads(response.body)["error"]["code"] == "unavailable"


def test_retry_after_spreads_a_burst_over_the_backlog():
    """A refused client is told the queue's drain time, with jitter: a burst's clients come back
    spread out, not in the same instant (they all came back after 2 s and failed again)."""
    backlog = Backlog(floor_s=2, dit_replicas=2)
    assert 2 <= backlog.retry_after_s(8) < 4  # nothing measured yet: the floor, with jitter
    for seconds in (0.5, 0.5, 0.5):
        backlog.observe(seconds)
    waits = [backlog.retry_after_s(8) for _ in range(200)]
    drain = 9 * 0.5 / 2  # the 8 queued and the refused one, on two replicas
    assert all(drain <= wait < 2 * drain for wait in waits)
    assert max(waits) - min(waits) > drain / 2, "no jitter"
    err = to_api_error(
        BackPressureError(num_queued_requests=8, max_queued_requests=8), "r", backlog.retry_after_s
    )
    assert drain * 1000 <= int(err.headers["retry-after-ms"]) < 2 * drain * 1000
    assert 2 <= backlog.retry_after_s(None) < 4, "a full spool is not a queue: the floor"
