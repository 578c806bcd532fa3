"""Every route's input, fuzzed: nothing a client sends gets a 5xx or a traceback back.

The real FastAPI app (a frozen copy, as Serve serves it) and the real ``Ingress`` (auth, body
reading, schemas, admission, error mapping, responses) run in-process; only the deployments
behind it are stand-ins that answer at once, so thousands of requests fit in a CI run. What the
DiT and the sink do with a valid request is tested against real replicas elsewhere.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, urlencode

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ray import cloudpickle, serve
from starlette.testclient import TestClient

from ray_dit.api import CacheStats, GenerationRequest, StoredOutput, Timings
from ray_dit.serve import ingress as ingress_module
from ray_dit.serve.http import edge_settings
from ray_dit.serve.job_store import VideoJobs
from ray_dit.serve.types import ModelInfo, ResultMeta, StoreReply

EXAMPLES = 500  # per test; four tests: 2,000 requests a run
# An edit-capable image model: every route's validation runs, the edit route's included.
INFO = ModelInfo(
    model="demo:fuzz", kind="image", width=64, height=64, steps=2, fps=16, image_input="optional"
)


class _Method:
    def __init__(self, call: Any) -> None:
        self.remote = call


class _Handle:
    """A deployment handle whose methods answer at once."""

    def __init__(self, **methods: Any) -> None:
        for name, call in methods.items():
            setattr(self, name, _Method(call))

    def options(self, **_: Any) -> _Handle:
        return self


class _Accepted:
    """What ``dit.generate.remote`` gives: accepted at once; its "object ref" is the request."""

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request

    async def _to_object_ref(self) -> GenerationRequest:
        return self.request

    def cancel(self) -> None:
        pass


async def _answer(value: Any) -> Any:
    return value


def _stored(request: GenerationRequest, *_: Any) -> Any:
    width, height = request.width or INFO.width, request.height or INFO.height
    outputs = [
        StoredOutput(request.request_id, i, f"p/2026/11/30/{request.request_id}_{i}.png", "png", "image/png",
                     "png", 3, "0" * 32, width, height, 1, "local", data=b"png")
        for i in range(request.n)
    ]  # fmt: skip
    meta = ResultMeta(
        request.request_id, "image", request.seed, 2, width, height, 1, None, Timings(), CacheStats()
    )
    return _answer(StoreReply(outputs, meta))


def _jobs_handle() -> _Handle:
    store = VideoJobs.func_or_class()

    def answering(method: Any) -> Any:
        return lambda *args: _answer(method(*args))

    names = ("create", "get", "list", "delete", "finish", "touch", "progress")
    return _Handle(**{name: answering(getattr(store, name)) for name in names})


@pytest.fixture(scope="module")
def client():
    edge_settings.cache_clear()
    dit = _Handle(generate=lambda request, job_id=None: _Accepted(request), describe=lambda: _answer(INFO))
    sink = _Handle(store=_stored, is_full=lambda: _answer(False), content=lambda *a: _answer(None))
    routes_class = ingress_module.Ingress.func_or_class.__mro__[1]  # ours, under Serve's wrapper
    instance = routes_class.__new__(routes_class)
    routes_class.__init__(instance, dit, sink, _jobs_handle(), "demo:fuzz")
    context = SimpleNamespace(servable_object=instance, app_name="fuzz")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(serve, "get_replica_context", lambda: context)
        served = cloudpickle.loads(cloudpickle.dumps(ingress_module.app))  # what serve.ingress does
        with TestClient(served, raise_server_exceptions=False) as test_client:
            yield test_client


def _check(response: Any) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    assert "Traceback" not in response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["message"] and error["type"]


# -- what clients send --------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["64x64", "128x128", "0x0", "99999x99999", "auto", "png", "mp4", "b64_json", "url"]),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_FIELDS = (
    "prompt", "negative_prompt", "n", "size", "response_format", "output_format", "model", "seed",
    "num_inference_steps", "guidance_scale", "true_cfg_scale", "enable_cache_dit", "cache_dit_params",
    "seconds", "num_frames", "fps", "quality", "stream", "input_reference", "user",
)  # fmt: skip
_CACHE_KEYS = (
    "Fn_compute_blocks", "Bn_compute_blocks", "max_warmup_steps", "residual_diff_threshold",
    "max_continuous_cached_steps", "enable_taylorseer", "taylorseer_order", "scm_preset",
    "scm_policy", "scm_compute_bins", "scm_cache_bins", "secondary",
)  # fmt: skip
_cache_params = st.dictionaries(st.sampled_from(_CACHE_KEYS), _json, max_size=4)
_bodies = st.one_of(
    _json,
    st.fixed_dictionaries(
        {"prompt": st.text(max_size=30)},
        optional={name: st.one_of(_json, _cache_params) for name in _FIELDS if name != "prompt"},
    ),
)


def _encode(body: Any) -> bytes:
    # json.dumps writes NaN/Infinity as JSON's extension, which Python's parser reads back.
    return json.dumps(body).encode("utf-8", "surrogatepass")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_bodies, raw=st.none() | st.binary(max_size=64))
def test_image_generation_bodies(client, body, raw):
    data = raw if raw is not None else _encode(body)
    _check(client.post("/v1/images/generations", content=data, headers={"content-type": "application/json"}))


_form_keys = st.one_of(
    st.sampled_from(_FIELDS),
    st.builds("{}[{}]".format, st.sampled_from(_FIELDS), st.text(max_size=6)),
    st.builds("{}[{}][]".format, st.sampled_from(_FIELDS), st.sampled_from(_CACHE_KEYS)),
    st.text(max_size=12),
)
_forms = st.lists(st.tuples(_form_keys, st.text(max_size=12)), max_size=8)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_bodies, form=st.none() | _forms)
def test_video_bodies_as_json_and_forms(client, body, form):
    """JSON bodies, and the form encoding the openai SDK uses (``a[b]=1``, ``a[]=1``, repeats)."""
    if form is not None:
        headers = {"content-type": "application/x-www-form-urlencoded"}
        response = client.post("/v1/videos", content=urlencode(form).encode(), headers=headers)
    else:
        response = client.post(
            "/v1/videos", content=_encode(body), headers={"content-type": "application/json"}
        )
    _check(response)


_ids = st.one_of(st.text(max_size=30), st.sampled_from(["video_0123456789abcdef", "img_0123456789abcdef_0"]))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    video_id=_ids,
    query=st.dictionaries(st.sampled_from(["limit", "after", "order", "variant"]), _scalars, max_size=3),
)
def test_video_job_routes(client, video_id, query):
    path_id = quote(video_id, safe="") or "x"
    params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in query.items()}
    _check(client.get("/v1/videos", params=params))
    _check(client.get(f"/v1/videos/{path_id}", params=params))
    _check(client.get(f"/v1/videos/{path_id}/content", params=params))
    _check(client.delete(f"/v1/videos/{path_id}"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image_id=_ids, key=st.none() | st.text(max_size=60), model=_ids)
def test_content_and_model_routes(client, image_id, key, model):
    path_id = quote(image_id, safe="") or "x"
    _check(client.get(f"/v1/images/{path_id}/content", params={} if key is None else {"key": key}))
    _check(client.get(f"/v1/models/{quote(model, safe='') or 'x'}"))


def test_the_harness_reaches_the_generation(client):
    """The stand-ins are wired: a valid request is answered with an image, so the fuzz above
    exercises the whole path and not only the refusals."""
    started = time.monotonic()
    response = client.post(
        "/v1/images/generations", json={"prompt": "a red circle", "response_format": "b64_json"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["b64_json"] and time.monotonic() - started < 60
    job = client.post("/v1/videos", json={"prompt": "x"})
    assert job.status_code in (200, 400), job.text  # the stand-in model makes images
    assert np.isfinite(response.json()["timings"]["request_s"])


def _png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "blue").save(buffer, format="PNG")
    return buffer.getvalue()


_uploads = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([_png(8, 8), _png(64, 64), b"", b"\x89PNG\r\n\x1a\n" + b"\x00" * 30]),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(form=_forms, image=st.none() | _uploads, extra=st.sampled_from([None, "mask", "image", "other"]))
def test_image_edit_forms(client, form, image, extra):
    """OpenAI's multipart image edits: any fields, any file bytes, a mask, a second image."""
    files = []
    if image is not None:
        files.append(("image", ("in.png", image, "image/png")))
    if extra is not None:
        files.append((extra, ("x.png", _png(4, 4), "image/png")))
    response = client.post("/v1/images/edits", data=dict(form), files=files or None)
    _check(response)
    if image is None and extra != "image":  # nothing to edit: never served
        assert response.status_code >= 400, response.text


def test_image_edits_answer_with_the_edit_and_name_what_is_wrong(client):
    ok = client.post(
        "/v1/images/edits", data={"prompt": "make it red"}, files={"image": ("a.png", _png(8, 8))}
    )
    assert ok.status_code == 200, ok.text
    cases = [
        ({"prompt": "x"}, {}, "image"),
        ({"prompt": "x"}, {"image": ("a.gif", b"GIF89a....")}, "image"),
        ({"prompt": "x"}, {"image": ("a.png", _png(8, 8)), "mask": ("m.png", _png(8, 8))}, "mask"),
        ({}, {"image": ("a.png", _png(8, 8))}, "prompt"),
    ]
    for fields, files, param in cases:
        response = client.post("/v1/images/edits", data=fields, files=files or None)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param, response.text
    too_big = client.post(
        "/v1/images/edits", data={"prompt": "x"}, files={"image": ("a.png", b"\x00" * (21 * 1024 * 1024))}
    )
    assert too_big.status_code == 413 and "RAY_DIT_MAX_UPLOAD_BYTES" in too_big.text
