"""A burst the server can absorb gets through with the openai SDK's default retries.

24 clients at once against one DiT replica with a queue of 8: 15 are refused at first. With a
fixed ``Retry-After`` they all came back in the same instant and 7 of 24 failed after their
three tries; ``Retry-After`` now spreads them over the measured time the queue takes to drain.
The queue limit counts cost in default requests (docs/serving.md), so the clients send the
model's default request: eight of them fill the queue, as eight requests did before.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

APP = "burst"
PREFIX = "/burst"
CLIENTS = 24
BODY = {"seed": 1}  # the model's default request (cost 1.0): the queue drains in seconds


def test_24_clients_with_default_retries_all_get_their_image(ray_serve):
    from openai import OpenAI
    from ray import serve

    from ray_dit.serve import build_app

    serve.run(build_app({"model": "demo:flux-tiny", "device": "cpu"}), name=APP, route_prefix=PREFIX)
    try:
        client = OpenAI(base_url=ray_serve.url + PREFIX + "/v1", api_key="unused")  # default retries
        assert client.max_retries == 2

        def one(index: int) -> int:
            body = {**BODY, "seed": index}
            result = client.images.generate(
                prompt=f"a red circle {index}", response_format="b64_json", extra_body=body
            )
            return len(result.data)

        one(0)  # the server measures a request before the burst
        with ThreadPoolExecutor(CLIENTS) as pool:
            outputs = list(pool.map(one, range(1, CLIENTS + 1)))
        assert outputs == [1] * CLIENTS
    finally:
        serve.delete(APP)
