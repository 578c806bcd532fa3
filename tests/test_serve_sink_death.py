"""A frame-sink replica that dies while ``url`` requests wait for their uploads fails none of them.

Their outputs were spooled (acknowledged) before the wait began, so each request gets its answer:
the server's own content URL (signed: the API key is on), which serves the bytes from the spool
and, once S3 is back and the successor replica uploaded them, from S3. Before, the wait ran inside
the sink's ``store`` call and the replica's death turned every waiting request into a 503.

Real pieces only: the session's local Ray cluster, a moto S3 server behind the fault proxy (S3
"down" = every connection reset), the replica actor killed with ``ray.kill``.
"""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from serve_helpers import s3_env
from sink_helpers import FaultProxy, admin_client, moto_server, new_bucket, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

APP = "sinkdeath"
KEY = "test-key-0123456789"
REQUESTS = 3


def _sink_replica(app: str) -> tuple[str, str] | None:
    """(name, namespace) of the app's one live frame-sink replica actor, if there is one."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#FrameSink#"
    found = [
        (actor["name"], actor["namespace"])
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(prefix)
    ]
    assert len(found) <= 1, found
    return found[0] if found else None


def _pending(spool: Path) -> int:
    return len(list((spool / "pending").glob("*.json")))


def _in_s3(endpoint: str, bucket: str, keys: list[str]) -> bool:
    client = admin_client(endpoint)
    try:
        listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
        return set(keys) <= {obj["Key"] for obj in listed}
    finally:
        client.close()


def _s3_object(endpoint: str, bucket: str, key: str) -> bytes:
    client = admin_client(endpoint)
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    finally:
        client.close()


def test_url_requests_survive_the_sink_replica_dying_during_their_wait(ray_serve, tmp_path):
    import ray
    from ray import serve

    from ray_dit.serve.app import compose, parse_args

    spool = tmp_path / "spool"
    base = f"{ray_serve.url}/{APP}"
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"prompt": "x", "size": "64x64", "num_inference_steps": 2}
    with moto_server() as endpoint, FaultProxy(endpoint) as proxy:
        bucket = new_bucket(endpoint)
        env = s3_env(
            proxy.endpoint,
            bucket,
            str(spool),
            RAY_DIT_S3_URL_WAIT_S="30",  # far longer than the test waits before the kill
            RAY_DIT_S3_MAX_ATTEMPTS="1",
            RAY_DIT_S3_CONNECT_TIMEOUT_S="2",
            RAY_DIT_S3_BACKOFF_MAX_S="1",
        )
        cfg = parse_args({"model": "demo:flux-tiny", "device": "cpu", "sink_env_vars": env})
        serve.run(compose(cfg, ingress_env={"RAY_DIT_API_KEY": KEY}), name=APP, route_prefix=f"/{APP}")
        try:
            with (
                httpx.Client(base_url=base, timeout=120, headers=auth) as api,
                concurrent.futures.ThreadPoolExecutor(REQUESTS) as pool,
            ):
                warm = api.post("/v1/images/generations", json={**body, "response_format": "b64_json"})
                assert warm.status_code == 200, warm.text
                assert wait_for(lambda: _pending(spool) == 0, 30), "precondition: S3 works at first"
                replica = _sink_replica(APP)
                assert replica is not None

                proxy.set_down("reset")  # S3 away: every upload waits in the spool
                waiting = [
                    pool.submit(api.post, "/v1/images/generations", json=body) for _ in range(REQUESTS)
                ]
                assert wait_for(lambda: _pending(spool) == REQUESTS, 60), "the outputs were never spooled"
                time.sleep(1.0)  # the stores answered; the requests now wait for their URLs
                assert not any(f.done() for f in waiting), "precondition: they must still be waiting"
                ray.kill(ray.get_actor(replica[0], namespace=replica[1]), no_restart=False)

                answers = [f.result(timeout=90) for f in waiting]
            for resp in answers:
                assert resp.status_code == 200, resp.text
            urls = [resp.json()["data"][0]["url"] for resp in answers]
            for url in urls:  # not uploaded: the server's own URL, with the key, signed
                assert url.startswith(base + "/v1/images/"), url
                assert {"key", "expires", "signature"} <= set(parse_qs(urlsplit(url).query)), url
            keys = [parse_qs(urlsplit(url).query)["key"][0] for url in urls]
            assert _pending(spool) == REQUESTS, "acknowledged outputs must wait in the spool"

            proxy.set_down(None)  # S3 is back: Serve's new replica uploads what the dead one spooled
            assert wait_for(lambda: _in_s3(endpoint, bucket, keys), 60, interval=0.5), "not uploaded"
            assert wait_for(lambda: _pending(spool) == 0, 30, interval=0.5), "the spool did not drain"
            for url, key in zip(urls, keys, strict=True):
                fetched = httpx.get(url, timeout=30)  # no Authorization: the signature lets it in
                assert fetched.status_code == 200, fetched.text
                assert fetched.content[:4] == b"\x89PNG"
                assert fetched.content == _s3_object(endpoint, bucket, key)
        finally:
            proxy.set_down(None)
            serve.delete(APP)
