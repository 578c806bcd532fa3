"""Dynamic batching through Ray Serve over HTTP (issue 17): concurrent clients share pipeline
calls, each gets what it would have got alone (within the documented tolerance), and a client
that disconnects does not cancel its batch-mates. The queue's rules and the engine's batched call
are tested in ``tests/test_batching.py``; throughput is measured by ``benchmarks/batching.py``.
"""

from __future__ import annotations

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

APP = "batching"
PREFIX = "/batching"
#: Long enough that clients started together all join the first call, short next to a request.
WAIT_S = 0.5
MAX_PIXEL_DIFF = 2  # as tests/test_batching.py: a larger batch sums in another order on a CPU
MAX_STEPS = 2000


@pytest.fixture(scope="module")
def batching_app(ray_serve):
    from ray import serve

    from ray_dit.serve import build_app

    args = {
        "model": "demo:shapes",
        "device": "cpu",
        "max_batch_size": 8,
        "batch_wait_timeout_s": WAIT_S,
        "limits": {"max_steps": MAX_STEPS},
        # The queue limit counts cost (default requests); the long requests below cost ~10 each.
        "max_queued_requests": 64,
    }
    serve.run(build_app(args), name=APP, route_prefix=PREFIX)
    try:
        yield ray_serve.url + PREFIX
    finally:
        serve.delete(APP)


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(int)


def test_concurrent_clients_share_a_call_and_get_what_they_get_alone(batching_app):
    from openai import OpenAI

    client = OpenAI(base_url=batching_app + "/v1", api_key="unused", max_retries=0)

    def one(index: int) -> tuple[np.ndarray, int]:
        raw = client.images.with_raw_response.generate(
            prompt=f"a red circle on a blue background {index}",
            size="64x64",
            response_format="b64_json",
            extra_body={"seed": 100 + index},
        )
        body = raw.http_response.json()
        return _pixels(body["data"][0]["b64_json"]), int(body["batch_size"])

    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(one, range(6)))
    sizes = [size for _, size in together]
    assert max(sizes) >= 2, sizes  # they waited for each other and shared calls
    assert all(1 <= size <= 8 for size in sizes), sizes
    alone, size_alone = one(3)
    assert size_alone == 1
    assert np.abs(alone - together[3][0]).max() <= MAX_PIXEL_DIFF


def test_a_client_that_disconnects_does_not_cancel_its_batch_mates(batching_app):
    body = {"prompt": "a green square", "size": "64x64", "response_format": "b64_json"}
    with httpx.Client(base_url=batching_app, timeout=120) as http:
        probe = http.post("/v1/images/generations", json={**body, "num_inference_steps": 20}).json()
        step_s = probe["timings"]["denoise_s"] / 20
        steps = min(MAX_STEPS, int((WAIT_S + 3.0) / step_s))  # a batch that outlives the leaver
        body["num_inference_steps"] = steps

        def stays(seed: int) -> dict:
            resp = http.post("/v1/images/generations", json={**body, "seed": seed})
            assert resp.status_code == 200, resp.text
            return resp.json()

        def leaves() -> str:
            try:
                http.post("/v1/images/generations", json={**body, "seed": 9}, timeout=WAIT_S + 1.0)
            except httpx.ReadTimeout:
                return "left"
            return "finished"

        with ThreadPoolExecutor(3) as pool:
            stayed = [pool.submit(stays, 1), pool.submit(stays, 2)]
            time.sleep(0.05)
            left = pool.submit(leaves)
            answers = [f.result() for f in stayed]
        assert left.result() == "left"
        for answer in answers:
            assert answer["steps"] == steps and answer["batch_size"] == 3, answer


def test_a_prompt_outside_the_vocabulary_is_served_with_a_warning(batching_app):
    """demo:shapes knows a dozen words: a prompt outside them still generates (it is no error),
    and the response says which words it does not know, over HTTP and to a notebook's handle."""
    from openai import OpenAI
    from ray import serve

    client = OpenAI(base_url=batching_app + "/v1", api_key="unused", max_retries=0)
    known = client.images.generate(prompt="a red circle on a blue background", response_format="b64_json")
    assert (known.model_extra or {})["warnings"] == []
    cat = client.images.generate(prompt="a cat", response_format="b64_json")
    (warning,) = (cat.model_extra or {})["warnings"]
    assert warning.startswith("unknown word 'cat': demo:shapes draws 'a|an <color> <shape>"), warning
    out = serve.get_app_handle(APP).generate.remote(prompt="a pink circle", num_inference_steps=2).result()
    assert len(out.warnings) == 1 and "'pink'" in out.warnings[0]
