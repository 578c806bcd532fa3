"""The spool's limits through Serve (issue 15, items 1 and 5): a full disk and a full cap are a
503 ``spool_full`` with Retry-After, the cap holds under concurrent clients, and once S3 is back
every acknowledged output lands and the very next request is served. Real Ray cluster, real
moto server behind the fault proxy, a real 512 KiB tmpfs as the spool's disk."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serve_helpers import s3_env
from sink_helpers import FaultProxy, admin_client, wait_for

from ray_dit.serve import build_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "demo:flux-tiny"
BODY = {"prompt": "x", "size": "64x64", "num_inference_steps": 2, "response_format": "b64_json"}


def _outputs_in_s3(endpoint: str, bucket: str) -> set[str]:
    admin = admin_client(endpoint)
    try:
        listed = admin.list_objects_v2(Bucket=bucket).get("Contents", [])
        return {o["Key"].rsplit("/", 1)[1].split("_")[1] for o in listed if "/manifest/" not in o["Key"]}
    finally:
        admin.close()


def _app(proxy: FaultProxy, bucket: str, spool: Path, **extra: str):
    env = s3_env(proxy.endpoint, bucket, str(spool), RAY_DIT_S3_BACKOFF_MAX_S="1", **extra)
    return build_app({"model": MODEL, "device": "cpu", "sink_env_vars": env})


class _SpoolMeter:
    """The largest number of bytes ever seen under the spool directory (polled every 10 ms)."""

    def __init__(self, root: Path) -> None:
        self.root, self.peak = root, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            total = 0
            for path in self.root.rglob("*"):
                try:
                    total += path.stat().st_size if path.is_file() else 0
                except FileNotFoundError:
                    continue
            self.peak = max(self.peak, total)

    def __enter__(self) -> _SpoolMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _hex_id(response: httpx.Response) -> str:
    return response.json()["id"].split("_", 1)[1]


def test_a_full_disk_is_a_503_and_the_next_request_after_recovery_is_served(
    ray_serve, moto: str, proxy: FaultProxy, bucket: str, small_disk: Path
) -> None:
    from ray import serve

    proxy.set_down("reset")
    serve.run(_app(proxy, bucket, small_disk), name="disk", route_prefix="/disk")
    try:
        with httpx.Client(base_url=ray_serve.url + "/disk", timeout=60) as http:
            stored: set[str] = set()
            refused = None
            for _ in range(150):  # bounded: ~14 kB per output fills 512 KiB well before this ends
                resp = http.post("/v1/images/generations", json=BODY)
                if resp.status_code != 200:
                    refused = resp
                    break
                stored.add(_hex_id(resp))
            assert refused is not None and refused.status_code == 503, refused and refused.text
            assert refused.json()["error"]["code"] == "spool_full", refused.text
            assert int(refused.headers["retry-after"]) >= 1 and len(stored) > 10
            proxy.set_down(None)
            assert wait_for(lambda: _outputs_in_s3(moto, bucket) >= stored, 10)
            after = http.post("/v1/images/generations", json=BODY)
            assert after.status_code == 200, after.text
    finally:
        serve.delete("disk")


def test_the_cap_holds_under_concurrent_clients_and_clears_when_space_is_back(
    ray_serve, moto: str, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    from ray import serve

    cap = 60_000
    spool = tmp_path / "spool"
    proxy.set_down("reset")
    serve.run(_app(proxy, bucket, spool, RAY_DIT_SPOOL_MAX_BYTES=str(cap)), name="cap", route_prefix="/cap")
    try:
        with httpx.Client(base_url=ray_serve.url + "/cap", timeout=60) as http, _SpoolMeter(spool) as meter:

            def client(_: int) -> list[httpx.Response]:
                return [http.post("/v1/images/generations", json=BODY) for _ in range(8)]

            with ThreadPoolExecutor(4) as pool:
                answers = [r for batch in pool.map(client, range(4)) for r in batch]
            time.sleep(0.5)  # let the meter see the last writes
        codes = {r.status_code for r in answers}
        assert codes <= {200, 503} and 200 in codes and 503 in codes, codes
        assert all(r.json()["error"]["code"] == "spool_full" for r in answers if r.status_code == 503)
        # Admission reserved each request's bytes before its denoise: 4 clients at once never
        # pushed the spool (entries and all its bookkeeping) past the cap (2.5x before).
        assert meter.peak <= cap, (meter.peak, cap)
        stored = {_hex_id(r) for r in answers if r.status_code == 200}
        proxy.set_down(None)
        assert wait_for(lambda: _outputs_in_s3(moto, bucket) >= stored, 10)
        with httpx.Client(base_url=ray_serve.url + "/cap", timeout=60) as http:
            after = http.post("/v1/images/generations", json=BODY)  # no stale "full" flag
            assert after.status_code == 200, after.text
    finally:
        serve.delete("cap")
