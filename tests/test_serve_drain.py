"""Outputs drain to S3 through the served app: a killed sink replica and an S3 outage lose nothing.

The app runs on the session's Ray cluster with S3 on for the sink replica only, through a fault
proxy in front of a real moto server. What the API acknowledged must end up in S3 exactly at its
key (checked with a plain admin client), and the spool must be empty afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from serve_helpers import s3_env
from sink_helpers import FaultProxy, admin_client, moto_server, new_bucket

from ray_dit.serve import build_app
from ray_dit.sink.keys import build_key, check_key

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "demo:flux-tiny"
PREFIX = "drain"
SINK_DEPLOYMENT = "FrameSink"


def _app(sink_env: dict[str, str]):
    return build_app({"model": MODEL, "device": "cpu", "sink_env_vars": sink_env})


def _s3_env(endpoint: str, bucket: str, spool: Path, **extra: str) -> dict[str, str]:
    """Short timeouts and backoff so the spool drains within seconds of S3 coming back."""
    return s3_env(
        endpoint,
        bucket,
        str(spool),
        RAY_DIT_S3_KEY_PREFIX=PREFIX,
        RAY_DIT_S3_MAX_ATTEMPTS="1",
        RAY_DIT_S3_CONNECT_TIMEOUT_S="2",
        RAY_DIT_S3_READ_TIMEOUT_S="10",
        RAY_DIT_S3_BACKOFF_MAX_S="1",
        **extra,
    )


@dataclass
class Acked:
    """One output the API acknowledged: where it must land, and its bytes when the test has them."""

    request_id: str
    index: int
    key: str | None  # known from a URL response; b64 responses only give the request id
    data: bytes | None
    sent: datetime
    done: datetime

    @property
    def name(self) -> str:
        return f"{self.request_id}_{self.index}.png"

    def candidate_keys(self) -> set[str]:
        """Server-built keys carry the UTC date of the store call, between ``sent`` and ``done``."""
        if self.key is not None:
            return {self.key}
        return {
            build_key(PREFIX, self.request_id, self.index, "png", when) for when in (self.sent, self.done)
        }


def _key_from_url(url: str, base: str, endpoint: str, bucket: str) -> str:
    """The object key an image URL names: the server's content URL carries it as ``key=``; an S3
    URL (path style) carries it as its path."""
    parts = urlsplit(url)
    if url.startswith(base):
        return parse_qs(parts.query)["key"][0]
    assert url.startswith(endpoint), url
    path = parts.path
    assert path.startswith(f"/{bucket}/"), url
    return path[len(bucket) + 2 :]


def _generate(http: httpx.Client, fmt: str, base: str, endpoint: str, bucket: str) -> tuple[Acked, str]:
    """One image request; returns what was acknowledged and the URL given (or "")."""
    sent = datetime.now(timezone.utc)
    resp = http.post(
        "/v1/images/generations", json={"prompt": "drain", "size": "64x64", "response_format": fmt}
    )
    done = datetime.now(timezone.utc)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    request_id = body["id"]
    item = body["data"][0]
    if fmt == "b64_json":
        data = base64.b64decode(item["b64_json"])
        assert data[:4] == b"\x89PNG"
        return Acked(request_id, 0, None, data, sent, done), ""
    url = item["url"]
    key = _key_from_url(url, base, endpoint, bucket)
    check_key(key)
    assert key.startswith(PREFIX + "/") and key.endswith(f"/{request_id}_0.png"), key
    return Acked(request_id, 0, key, None, sent, done), url


def _pending(spool: Path) -> list[Path]:
    """Spool records not yet confirmed by S3 (every live or dead sink replica's)."""
    return sorted((spool / "pending").glob("*.json"))


def _quarantined(spool: Path) -> list[str]:
    quarantine = spool / "quarantine"
    return sorted(p.name for p in quarantine.iterdir()) if quarantine.exists() else []


def _objects(endpoint: str, bucket: str) -> dict[str, str]:
    """Output objects in the bucket (manifest parts left out): key -> ETag without quotes."""
    client = admin_client(endpoint)
    try:
        found: dict[str, str] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                if not obj["Key"].startswith(f"{PREFIX}/manifest/"):
                    found[obj["Key"]] = obj["ETag"].strip('"')
        return found
    finally:
        client.close()


def _landed(acked: list[Acked], objects: dict[str, str]) -> bool:
    names = {key.rsplit("/", 1)[-1] for key in objects}
    return all(a.name in names for a in acked)


def _wait_drained(
    acked: list[Acked], endpoint: str, bucket: str, spool: Path, timeout: float
) -> dict[str, str]:
    """Bounded poll until every acknowledged output is in S3 and the spool is empty."""
    deadline = time.monotonic() + timeout
    objects = _objects(endpoint, bucket)
    while time.monotonic() < deadline:
        if _landed(acked, objects) and not _pending(spool):
            break
        time.sleep(0.5)
        objects = _objects(endpoint, bucket)
    return objects


def _check_landed(acked: list[Acked], endpoint: str, bucket: str, objects: dict[str, str]) -> None:
    """Each acknowledged output is in S3 once, exactly at its key, with the acknowledged bytes."""
    missing = [a.name for a in acked if a.name not in {k.rsplit("/", 1)[-1] for k in objects}]
    assert not missing, f"acknowledged but not in S3: {missing}; bucket has {sorted(objects)}"
    client = admin_client(endpoint)
    try:
        for a in acked:
            keys = [k for k in objects if k.rsplit("/", 1)[-1] == a.name]
            assert len(keys) == 1, keys
            assert keys[0] in a.candidate_keys(), (keys[0], a.candidate_keys())
            got = client.get_object(Bucket=bucket, Key=keys[0])
            body = got["Body"].read()
            assert got["ContentType"] == "image/png"
            assert objects[keys[0]] == hashlib.md5(body).hexdigest()
            if a.data is not None:
                assert body == a.data, f"{keys[0]}: S3 holds other bytes than the API returned"
    finally:
        client.close()


def _sink_replicas(app: str) -> list[tuple[str, str]]:
    """(name, namespace) of the live frame-sink replica actors of ``app``."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#{SINK_DEPLOYMENT}#"
    return [
        (actor["name"], actor["namespace"])
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(prefix)
    ]


def _post_until_ok(http: httpx.Client, body: dict, timeout: float) -> httpx.Response:
    """Bounded retries while Serve replaces a replica (a request routed to the dead one fails)."""
    deadline = time.monotonic() + timeout
    resp = http.post("/v1/images/generations", json=body)
    while resp.status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
        resp = http.post("/v1/images/generations", json=body)
    return resp


def test_killed_sink_replica_loses_nothing(ray_serve, tmp_path):
    """Uploads in flight (slow S3) when the sink replica is killed: its successor, on the same
    spool, uploads everything the API acknowledged."""
    import ray
    from ray import serve

    app = "drainkill"
    spool = tmp_path / "spool"
    with moto_server() as endpoint, FaultProxy(endpoint) as proxy:
        bucket = new_bucket(endpoint)
        env = _s3_env(
            proxy.endpoint,
            bucket,
            spool,
            RAY_DIT_S3_URL_WAIT_S="0.2",
            RAY_DIT_S3_UPLOAD_CONCURRENCY="2",
        )
        serve.run(_app(env), name=app, route_prefix=f"/{app}")
        try:
            base = f"{ray_serve.url}/{app}"
            acked: list[Acked] = []
            with httpx.Client(base_url=base, timeout=120) as http:
                proxy.set_latency(4.0)  # every PUT waits 4 s before reaching S3: uploads pile up
                for i in range(6):
                    out, url = _generate(http, "url" if i % 2 else "b64_json", base, proxy.endpoint, bucket)
                    if url.startswith(base):  # not uploaded yet: the spool serves the bytes
                        fetched = http.get(url)
                        assert fetched.status_code == 200 and fetched.content[:4] == b"\x89PNG"
                        out.data = fetched.content
                    acked.append(out)

                in_flight = _pending(spool)
                assert in_flight, "precondition: the replica must die with uploads outstanding"
                assert proxy.count("forwarded", "PUT") >= 1, "precondition: a PUT is under way"
                replicas = _sink_replicas(app)
                assert len(replicas) == 1, replicas
                name, namespace = replicas[0]
                ray.kill(ray.get_actor(name, namespace=namespace), no_restart=False)
                proxy.set_latency(0.2)  # the successor's uploads: still slow-ish, not 4 s

                # Serve replaces the replica (bounded wait), and requests are served again.
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    now = _sink_replicas(app)
                    if now and name not in {n for n, _ in now}:
                        break
                    time.sleep(0.5)
                assert _sink_replicas(app) and name not in {n for n, _ in _sink_replicas(app)}
                sent = datetime.now(timezone.utc)
                resp = _post_until_ok(
                    http, {"prompt": "after", "size": "64x64", "response_format": "b64_json"}, 60
                )
                assert resp.status_code == 200, resp.text
                data = base64.b64decode(resp.json()["data"][0]["b64_json"])
                acked.append(Acked(resp.json()["id"], 0, None, data, sent, datetime.now(timezone.utc)))

            objects = _wait_drained(acked, endpoint, bucket, spool, timeout=60)
            _check_landed(acked, endpoint, bucket, objects)
            # Only a live sink removes spool entries: the dead replica's were taken over.
            assert not _pending(spool), [p.name for p in _pending(spool)]
            assert not _quarantined(spool)
        finally:
            serve.delete(app)


def test_requests_are_served_during_an_outage(ray_serve, tmp_path):
    """S3 resets every connection for 20 s: b64_json and url requests all succeed (url falls back
    to the server's own content URL), and everything lands in S3 once it is back."""
    from ray import serve

    app = "drainout"
    spool = tmp_path / "spool"
    outage_s = 20.0
    with moto_server() as endpoint, FaultProxy(endpoint) as proxy:
        bucket = new_bucket(endpoint)
        env = _s3_env(proxy.endpoint, bucket, spool, RAY_DIT_S3_URL_WAIT_S="1")
        serve.run(_app(env), name=app, route_prefix=f"/{app}")
        try:
            base = f"{ray_serve.url}/{app}"
            acked: list[Acked] = []
            during = {"b64_json": 0, "url": 0}
            with httpx.Client(base_url=base, timeout=120) as http:
                warm, _ = _generate(http, "b64_json", base, proxy.endpoint, bucket)
                acked.append(warm)

                ends = time.monotonic() + outage_s  # S3 is down at least until then
                proxy.set_down("reset", outage_s)
                refused_before = proxy.count("refused")
                i = 0
                # Leave a margin so the last request also completes inside the outage.
                while time.monotonic() < ends - 4 and i < 12:
                    fmt = "url" if i % 2 else "b64_json"
                    out, url = _generate(http, fmt, base, proxy.endpoint, bucket)
                    if time.monotonic() < ends:  # answered while S3 was down
                        during[fmt] += 1
                        if fmt == "url":
                            assert url.startswith(base), f"S3 is down, yet a cloud URL: {url}"
                    if url.startswith(base):  # the server's own URL: the spool serves the bytes
                        fetched = http.get(url)
                        assert fetched.status_code == 200, fetched.text
                        assert fetched.content[:4] == b"\x89PNG"
                        out.data = fetched.content
                    acked.append(out)
                    i += 1
                    time.sleep(0.3)
                assert during["b64_json"] >= 1 and during["url"] >= 1, during
                assert proxy.count("refused") > refused_before  # uploads were tried and refused

            # The outage ends by itself; then the spool drains (bounded).
            objects = _wait_drained(
                acked, endpoint, bucket, spool, timeout=max(ends - time.monotonic(), 0) + 60
            )
            _check_landed(acked, endpoint, bucket, objects)
            assert not _pending(spool), [p.name for p in _pending(spool)]
            assert not _quarantined(spool)
        finally:
            serve.delete(app)


def test_sink_replica_killed_while_a_denoise_runs(ray_serve, tmp_path):
    """The sink call is routed while the DiT denoises; when that sink replica dies meanwhile, the
    call goes to its successor once the frames exist, and the finished output is still returned
    and stored (no client retry)."""
    import concurrent.futures

    import ray
    from ray import serve

    app = "drainmid"
    spool = tmp_path / "spool"
    serve.run(_app({"RAY_DIT_SPOOL_DIR": str(spool)}), name=app, route_prefix=f"/{app}")
    try:
        base = f"{ray_serve.url}/{app}"
        body = {
            "prompt": "slow",
            "size": "256x256",
            "num_inference_steps": 200,
            "response_format": "b64_json",
        }
        with (
            httpx.Client(base_url=base, timeout=120) as http,
            concurrent.futures.ThreadPoolExecutor(1) as pool,
        ):
            assert http.post("/v1/images/generations", json={"prompt": "warm"}).status_code == 200
            replicas = _sink_replicas(app)
            assert len(replicas) == 1, replicas
            name, namespace = replicas[0]
            slow = pool.submit(http.post, "/v1/images/generations", json=body)
            time.sleep(0.5)  # the request is in the DiT: 200 steps at 256x256 take seconds here
            assert not slow.done(), "precondition: the denoise must outlive the kill"
            ray.kill(ray.get_actor(name, namespace=namespace), no_restart=False)
            resp = slow.result(timeout=110)
            assert resp.status_code == 200, resp.text
            data = base64.b64decode(resp.json()["data"][0]["b64_json"])
            assert data[:4] == b"\x89PNG"
            now = _sink_replicas(app)
            assert now and name not in {n for n, _ in now}, "the successor stored it"
            stored = http.get(f"/v1/images/{resp.json()['id']}_0/content")
            assert stored.status_code == 200 and stored.content == data
    finally:
        serve.delete(app)
