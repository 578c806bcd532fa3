"""The app with S3 storage on (a real moto server): cloud URLs in responses, spool-full admission."""

from __future__ import annotations

import base64
import time

import httpx
import pytest
from serve_helpers import s3_env
from sink_helpers import admin_client, moto_server, new_bucket

from ray_dit.serve import build_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "demo:flux-tiny"


def _app(sink_env: dict[str, str]):
    return build_app({"model": MODEL, "device": "cpu", "sink_env_vars": sink_env})


def _s3_env(endpoint: str, bucket: str, spool: str, **extra: str) -> dict[str, str]:
    return s3_env(endpoint, bucket, spool, **extra)


def test_urls_point_at_s3_and_handles_get_them(ray_serve, tmp_path):
    from ray import serve

    with moto_server() as endpoint:
        bucket = new_bucket(endpoint)
        env = _s3_env(endpoint, bucket, str(tmp_path / "spool"), RAY_DIT_S3_URL_WAIT_S="10")
        handle = serve.run(_app(env), name="s3", route_prefix="/s3")
        try:
            with httpx.Client(base_url=ray_serve.url + "/s3", timeout=60) as http:
                resp = http.post("/v1/images/generations", json={"prompt": "x", "size": "64x64"})
                assert resp.status_code == 200, resp.text
                url = resp.json()["data"][0]["url"]
                assert url.startswith(endpoint), url  # a presigned S3 URL, not the server's own
                assert httpx.get(url, timeout=10).content[:4] == b"\x89PNG"
                b64 = http.post(
                    "/v1/images/generations",
                    json={"prompt": "x", "size": "64x64", "response_format": "b64_json"},
                )
                assert base64.b64decode(b64.json()["data"][0]["b64_json"])[:4] == b"\x89PNG"
            out = handle.generate.remote(prompt="y", size="64x64").result()
            assert out.urls[0] is not None and out.urls[0].startswith(endpoint)
            client = admin_client(endpoint)
            keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
            client.close()
            assert out.keys[0] in keys
        finally:
            serve.delete("s3")


def test_full_spool_refuses_new_work_with_503(ray_serve, tmp_path):
    """S3 unreachable and a tiny spool: once an output is spooled, new requests get 503."""
    from ray import serve
    from serve_helpers import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    env = _s3_env(
        dead,
        "no-such-bucket",
        str(tmp_path / "spool"),
        RAY_DIT_SPOOL_MAX_BYTES="1",
        RAY_DIT_S3_URL_WAIT_S="0.5",
    )
    serve.run(_app(env), name="full", route_prefix="/full")
    try:
        with httpx.Client(base_url=ray_serve.url + "/full", timeout=60) as http:
            body = {"prompt": "x", "size": "64x64", "response_format": "b64_json"}
            first = http.post("/v1/images/generations", json={**body, "response_format": "url"})
            assert first.status_code == 200, first.text  # a finished output is never dropped
            url = first.json()["data"][0]["url"]  # not uploaded: the server's own URL, with the key
            assert url.startswith(ray_serve.url + "/full/v1/images/") and "key=" in url
            fetched = http.get(url)
            assert fetched.status_code == 200 and fetched.content[:4] == b"\x89PNG"
            deadline = time.monotonic() + 20
            resp = first
            while time.monotonic() < deadline:
                resp = http.post("/v1/images/generations", json=body)
                if resp.status_code == 503:
                    break
                time.sleep(0.3)
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"]["code"] == "spool_full"
            assert int(resp.headers["retry-after"]) >= 1
    finally:
        serve.delete("full")
