"""Helpers for the serve tests: free ports and the environment every Ray process here gets."""

from __future__ import annotations

import socket

RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    # Serve gives a new HTTP proxy 3 x 5 s to report ready, then kills it; a loaded 2-core CI
    # box can take longer to start one, which failed every Serve test of a run.
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def s3_env(endpoint: str, bucket: str, spool: str, **extra: str) -> dict[str, str]:
    """The sink's environment for a moto server (path-style addressing, the admin credentials)."""
    return {
        "SGLANG_CLOUD_STORAGE_TYPE": "s3",
        "SGLANG_S3_BUCKET_NAME": bucket,
        "SGLANG_S3_ENDPOINT_URL": endpoint,
        "SGLANG_S3_ACCESS_KEY_ID": "admin",
        "SGLANG_S3_SECRET_ACCESS_KEY": "admin",
        "RAY_DIT_S3_ADDRESSING_STYLE": "path",
        "RAY_DIT_SPOOL_DIR": spool,
        **extra,
    }


def assert_a_disconnect_frees_the_dit(
    http, size: str = "768x768", headers: dict | None = None, steps: int = 200, rounds: int = 1
) -> None:
    """A client that goes away frees the DiT replica at the next step: the next request is served
    in about its own time, not after the abandoned request's ``steps`` steps. ``rounds`` > 1
    catches a proxy that loses only some disconnects."""
    import time

    import httpx
    import pytest

    slow = {"prompt": "x", "size": size, "num_inference_steps": steps, "response_format": "b64_json"}
    probe = {"prompt": "x", "size": "64x64", "num_inference_steps": 2, "response_format": "b64_json"}

    def per_step() -> float:
        resp = http.post("/v1/images/generations", json={**slow, "num_inference_steps": 8}, headers=headers)
        assert resp.status_code == 200, resp.text
        return resp.json()["timings"]["denoise_s"] / 8  # measured by the replica itself

    step_s = min(per_step(), per_step())
    full = step_s * steps
    assert full > 4, f"the slow request is too fast to tell ({full:.1f}s)"
    for round_ in range(rounds):
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/images/generations", json=slow, timeout=1.0, headers=headers)
        started = time.monotonic()
        resp = http.post("/v1/images/generations", json=probe, headers=headers)
        waited = time.monotonic() - started
        assert resp.status_code == 200, resp.text
        assert waited < full / 3, f"round {round_}: waited {waited:.1f}s; the full denoise takes ~{full:.1f}s"
