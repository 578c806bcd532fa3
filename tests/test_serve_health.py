"""A failed start never looks healthy: /health names the deployment that did not start, and why."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

APP = "failed_start"
PREFIX = "/failed"


def test_a_sink_that_cannot_start_fails_health_with_its_reason(ray_serve):
    from ray import serve

    from ray_dit.serve import build_app

    # A storage type SGLang does not have: the frame sink's settings refuse it at start-up.
    bad = build_app(
        {"model": "demo:flux-tiny", "device": "cpu", "sink_env_vars": {"SGLANG_CLOUD_STORAGE_TYPE": "gcs"}}
    )
    try:
        with pytest.raises(RuntimeError):
            serve.run(bad, name=APP, route_prefix=PREFIX)
        body, status = None, None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            resp = httpx.get(ray_serve.url + PREFIX + "/health", timeout=10)
            body, status = resp.json(), resp.status_code
            if "FrameSink" in body.get("deployments", {}):
                break
            time.sleep(0.5)
        assert status == 503 and body["status"] == "unavailable", body
        sink = body["deployments"]["FrameSink"]
        assert (
            sink["status"] in ("DEPLOY_FAILED", "UNHEALTHY")
            and "SGLANG_CLOUD_STORAGE_TYPE" in sink["message"]
        )
        assert "Ingress" not in body["deployments"], "it answered: it runs, and is not reported"
        assert all(d["status"] != "HEALTHY" for d in body["deployments"].values())
    finally:
        serve.delete(APP)
