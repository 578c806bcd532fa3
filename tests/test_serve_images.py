"""The image app on real local Ray: OpenAI client, handle calls, bad input, backpressure, disconnects."""

from __future__ import annotations

import asyncio
import base64
import io
import time

import httpx
import pytest
from PIL import Image
from serve_helpers import assert_a_disconnect_frees_the_dit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

APP = "images"
PREFIX = "/img"


@pytest.fixture(scope="module")
def app(ray_serve):
    from ray import serve

    from ray_dit.serve import build_app

    handle = serve.run(
        build_app({"model": "demo:flux-tiny", "device": "cpu", "max_queued_requests": 2}),
        name=APP,
        route_prefix=PREFIX,
    )
    try:
        yield handle, ray_serve.url + PREFIX
    finally:
        serve.delete(APP)


@pytest.fixture(scope="module")
def http(app):
    with httpx.Client(base_url=app[1], timeout=60) as client:
        yield client


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def test_openai_client_b64_json_and_url(app, http):
    from openai import OpenAI

    client = OpenAI(base_url=app[1] + "/v1", api_key="unused", max_retries=0)
    resp = client.images.generate(
        prompt="a red square on a blue background",
        size="64x64",
        n=2,
        response_format="b64_json",
        extra_body={"num_inference_steps": 4, "seed": 7},
    )
    assert len(resp.data) == 2
    images = [_png(base64.b64decode(item.b64_json)) for item in resp.data]
    assert all(image.size == (64, 64) for image in images)
    extras = resp.model_extra or {}
    assert extras["steps"] == 4 and extras["seed"] == 7
    assert extras["timings"]["denoise_s"] > 0
    assert extras["cache"]["total_steps"] == 4

    resp = client.images.generate(prompt="a green circle", response_format="url")
    url = resp.data[0].url
    assert url.startswith(app[1] + "/v1/images/") and url.endswith("/content")
    fetched = http.get(url)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert _png(fetched.content).size == (128, 128)  # the demo model's default size


def test_cache_overrides_and_formats(http):
    body = {
        "prompt": "x",
        "size": "64x64",
        "num_inference_steps": 8,
        "output_format": "jpeg",
        "response_format": "b64_json",
        "enable_cache_dit": True,
        "cache_dit_params": {"residual_diff_threshold": 1.0, "max_warmup_steps": 2},
    }
    resp = http.post("/v1/images/generations", json=body)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["cache"]["enabled"] is True and data["cache"]["total_steps"] == 8
    assert data["output_format"] == "jpeg"
    assert Image.open(io.BytesIO(base64.b64decode(data["data"][0]["b64_json"]))).format == "JPEG"


def test_handle_returns_images_and_stats(app):
    from ray import serve

    handle = serve.get_app_handle(APP)
    out = handle.generate.remote(prompt="blue circle", size="64x64", n=2, num_inference_steps=3).result()
    assert out.warnings == []  # only demo:shapes knows a vocabulary; FLUX takes any text
    assert out.kind == "image" and len(out.images) == 2
    assert out.images[0].size == (64, 64)
    assert out.frames.shape == (2, 1, 64, 64, 3)
    assert out.steps == 3 and out.cache.total_steps == 3
    assert out.timings["denoise_s"] > 0 and "store_s" in out.timings
    assert out.urls == [None, None]  # storage is local: no cloud URLs
    assert len(out.keys) == 2 and out.keys[0].endswith("_0.png")
    with pytest.raises(ValueError, match="size"):
        app[0].generate.remote(prompt="x", size="100").result()


BAD_INPUTS = [
    ({"prompt": "x", "size": "big"}, "size"),
    ({"prompt": "x", "size": "100x"}, "size"),
    ({"prompt": "x", "size": "8192x8192"}, "size"),
    ({"prompt": "x", "size": "100x100"}, "size"),
    ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps"),
    ({"prompt": "x", "num_inference_steps": 10**6}, "num_inference_steps"),
    ({"prompt": "x", "num_inference_steps": "many"}, "num_inference_steps"),
    ({"prompt": "x", "n": 50}, "n"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "cache_dit_params": {"nope": 1}}, "cache_dit_params"),
    ({"prompt": "x", "cache_dit_params": {"residual_diff_threshold": -1}}, "cache_dit_params"),
    ({"prompt": "x", "enable_cache_dit": "maybe"}, "enable_cache_dit"),
    ({"size": "64x64"}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x" * 5000}, "prompt"),
    ({"prompt": "x", "response_format": "png"}, "response_format"),
    ({"prompt": "x", "output_format": "gif"}, "output_format"),
    ({"prompt": "x", "guidance_scale": -1}, "guidance_scale"),
    ({"prompt": "x", "seed": -5}, "seed"),
    ({"prompt": "x", "frobnicate": 1}, "frobnicate"),
    ({"prompt": "x", "stream": True}, "stream"),
]


@pytest.mark.parametrize(("body", "param"), BAD_INPUTS, ids=[p for _, p in BAD_INPUTS])
def test_bad_input_is_4xx_naming_the_field(http, body, param):
    resp = http.post("/v1/images/generations", json=body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param
    assert param in error["message"]
    assert error["type"] == "invalid_request_error"
    assert "Traceback" not in resp.text


def test_malformed_requests(http):
    resp = http.post(
        "/v1/images/generations", content=b'{"prompt": ', headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    resp = http.post("/v1/images/generations", content=b'{"prompt": "\\ud800"}')
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "prompt"
    resp = http.post("/v1/images/generations", content=b'{"prompt": "x", "guidance_scale": NaN}')
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "guidance_scale"
    resp = http.post("/v1/images/generations", json=["not", "an", "object"])
    assert resp.status_code == 400
    resp = http.post("/v1/images/generations", content=b"x" * (1024 * 1024 + 1))
    assert resp.status_code == 413 and "RAY_DIT_MAX_BODY_BYTES" in resp.json()["error"]["message"]
    resp = http.post("/v1/images/generations", json={"prompt": "x", "model": "dall-e-3"})
    assert resp.status_code == 404 and resp.json()["error"]["param"] == "model"
    resp = http.get("/v1/images/img_0123456789abcdef_0/content")
    assert resp.status_code == 404
    resp = http.get("/v1/images/../../etc/passwd/content")
    assert resp.status_code == 404
    resp = http.get("/v1/nothing")
    assert resp.status_code == 404 and "error" in resp.json()
    resp = http.post("/v1/videos", json={"prompt": "x"})  # an image model
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "model"


def test_models_and_health(http):
    models = http.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "demo:flux-tiny"
    assert http.get("/v1/models/demo:flux-tiny").status_code == 200
    assert http.get("/health").json()["status"] == "ok"


def test_full_queue_gives_503_and_the_rest_succeed(app):
    """max_ongoing 1 + max_queued 2: a burst of 10 slow requests gets some 503s, no hangs."""

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=app[1], timeout=120) as client:
            body = {"prompt": "x", "num_inference_steps": 40, "response_format": "b64_json"}
            return await asyncio.gather(
                *(client.post("/v1/images/generations", json=body) for _ in range(10))
            )

    started = time.monotonic()
    responses = asyncio.run(burst())
    elapsed = time.monotonic() - started
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) >= 1 and codes.count(200) >= 1, codes
    for resp in responses:
        if resp.status_code == 503:
            assert int(resp.headers["retry-after"]) >= 1
            assert resp.json()["error"]["code"] == "queue_full"
        else:
            assert len(resp.json()["data"]) == 1
    assert elapsed < 90


def test_client_disconnect_stops_the_denoise(app, http):
    """In Serve's default mode (tests/test_serve_run.py checks the same behind HAProxy)."""
    assert_a_disconnect_frees_the_dit(http)


def _metric_lines(port: int) -> list[str]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return [line for line in resp.read().decode().splitlines() if line.startswith("ray_ray_dit_")]


def test_metrics_of_this_app_reach_prometheus(app, http):
    """A request answered, one refused and one cancelled show up in the node's Prometheus
    endpoint, tagged by Serve with this application."""
    import ray

    ok = {"prompt": "x", "size": "64x64", "num_inference_steps": 2, "response_format": "b64_json"}
    assert http.post("/v1/images/generations", json=ok).status_code == 200
    assert http.post("/v1/images/generations", json={**ok, "size": "big"}).status_code == 400
    slow = {**ok, "size": "768x768", "num_inference_steps": 200}
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/images/generations", json=slow, timeout=1.0)
    port = ray._private.worker._global_node.metrics_export_port
    wanted = {
        "answered": lambda line: (
            line.startswith("ray_ray_dit_requests_total{")
            and 'endpoint="/v1/images/generations"' in line
            and 'status="200"' in line
        ),
        "refused": lambda line: (
            line.startswith("ray_ray_dit_rejected_requests_total{") and 'reason="invalid_value"' in line
        ),
        "cancelled": lambda line: line.startswith("ray_ray_dit_cancelled_requests_total{"),
        "denoise": lambda line: line.startswith("ray_ray_dit_denoise_seconds_count{"),
        "cached ratio": lambda line: line.startswith("ray_ray_dit_steps_cached_ratio_count{"),
        "batch size": lambda line: line.startswith("ray_ray_dit_batch_size_count{"),
        "queued cost": lambda line: line.startswith("ray_ray_dit_queued_cost{"),
        "spool bytes": lambda line: line.startswith("ray_ray_dit_sink_spool_bytes{"),
        "sink queue": lambda line: line.startswith("ray_ray_dit_sink_queue_depth{"),
    }
    found: dict[str, str] = {}
    deadline = time.monotonic() + 60  # the metrics agent exports every few seconds
    while time.monotonic() < deadline and len(found) < len(wanted):
        for line in _metric_lines(port):
            if f'application="{APP}"' not in line:
                continue
            for name, matches in wanted.items():
                if name not in found and matches(line):
                    found[name] = line
        if len(found) < len(wanted):
            time.sleep(1)
    assert set(found) == set(wanted), f"missing: {set(wanted) - set(found)}"
    assert all(float(found[name].rsplit(" ", 1)[1]) >= 1 for name in ("answered", "refused", "denoise"))


def _orphans_stored() -> int:
    """How often a DiT replica stored an output whose caller had gone (from its log)."""
    import glob
    import os

    import ray

    session = ray._private.worker._global_node.get_session_dir_path()  # this test session's logs
    count = 0
    for path in glob.glob(os.path.join(session, "logs", "serve", "*DiT*")):
        with open(path, errors="replace") as f:
            count += f.read().count("finished before its cancellation: stored")
    return count


def test_output_finished_before_a_disconnect_is_still_stored(http):
    """Cancel while the VAE decodes (all steps done): the replica hands the frames to the sink."""
    body = {"prompt": "x", "size": "1024x1024", "num_inference_steps": 1, "response_format": "b64_json"}
    full = http.post("/v1/images/generations", json=body)
    assert full.status_code == 200
    timings = full.json()["timings"]
    before = _orphans_stored()
    for fraction in (0.5, 0.3, 0.7):
        cut = timings["queue_s"] + timings["denoise_s"] + fraction * timings["decode_s"]
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/images/generations", json=body, timeout=max(cut, 0.2))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _orphans_stored() == before:
            time.sleep(0.2)
        if _orphans_stored() > before:
            return
    pytest.fail(f"no orphaned output was stored (timings {timings})")
