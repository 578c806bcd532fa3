"""FrameSink against a real moto S3 server over loopback HTTP: keys, headers, URLs, errors,
configuration and credential hygiene."""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
import sink_helpers
from sink_helpers import (
    ACCESS_KEY,
    SECRET_KEY,
    FaultProxy,
    admin_client,
    image_result,
    settings_for,
)

from ray_dit.config import ConfigError, StorageSettings, storage_from_env
from ray_dit.sink import FrameSink, StorageError
from ray_dit.sink.s3 import S3Bucket

pytestmark = pytest.mark.timeout(120)


def _fetch(url: str) -> bytes:
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_objects_land_with_key_content_type_and_md5(
    proxy: FaultProxy, bucket: str, tmp_path: Path, sinks: list
) -> None:
    sink = FrameSink(settings_for(proxy.endpoint, bucket, str(tmp_path), key_prefix="gen/out"))
    sinks.append(sink)
    outputs = sink.store(image_result("reqpng", n=2), "png")
    outputs += sink.store(image_result("reqjpg"), "jpeg")
    outputs += sink.store(image_result("reqwebp"), "webp")
    outputs += sink.store(sink_helpers.video_result("reqmp4"), None)
    assert sink.drain(20)
    today = datetime.now(timezone.utc).strftime("%Y/%m/%d")
    admin = admin_client(proxy.endpoint)
    expected_types = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "mp4": "video/mp4"}
    for out in outputs:
        assert re.fullmatch(rf"gen/out/{today}/{out.request_id}_{out.index}\.{out.extension}", out.key)
        head = admin.head_object(Bucket=bucket, Key=out.key)
        assert head["ContentType"] == expected_types[out.extension] == out.content_type
        assert head["ETag"].strip('"') == out.md5
        assert head["ContentLength"] == out.num_bytes
        assert sink.status(out.key) == "uploaded"
    # What boto3 really sent: Content-MD5, and none of the checksum headers that break
    # third-party stores.
    puts = [r for r in proxy.requests if r.method == "PUT" and "/manifest/" not in r.path]
    assert len(puts) == len(outputs)
    by_path = {r.path.split("?")[0]: r for r in puts}
    for out in outputs:
        sent = by_path[f"/{bucket}/{out.key}"].headers
        assert base64.b64decode(sent["content-md5"]).hex() == out.md5
        assert sent["content-type"] == out.content_type
        assert not [h for h in sent if h.startswith("x-amz-checksum-") or h == "x-amz-sdk-checksum-algorithm"]
        assert "aws-chunked" not in sent.get("content-encoding", "")
        assert "x-amz-decoded-content-length" not in sent
        assert not sent.get("x-amz-content-sha256", "").startswith("STREAMING")
        assert "transfer-encoding" not in sent
    sink.close()
    # Manifest: one row per output, locally as a dataset and uploaded under {prefix}/manifest/.
    table = ds.dataset(tmp_path / "manifest", format="parquet").to_table()
    assert sorted(table.column("key").to_pylist()) == sorted(o.key for o in outputs)
    row = next(r for r in table.to_pylist() if r["key"] == outputs[-1].key)
    assert (row["format"], row["frames"], row["fps"], row["md5"]) == ("mp4", 5, 8, outputs[-1].md5)
    assert row["url"] and "X-Amz-Signature" not in row["url"] and ACCESS_KEY not in row["url"]
    listed = admin.list_objects_v2(Bucket=bucket, Prefix="gen/out/manifest/")
    assert [o["Key"] for o in listed.get("Contents", [])]
    admin.close()


def test_presigned_and_public_urls_fetch_the_bytes(
    proxy: FaultProxy, bucket: str, tmp_path: Path, sinks: list
) -> None:
    sink = FrameSink(settings_for(proxy.endpoint, bucket, str(tmp_path / "a"), presign_ttl_s=600))
    sinks.append(sink)
    out = sink.store(image_result("requrl"), include_data=True)[0]
    assert out.data is not None and out.url is None
    url = sink.wait_url(out.key, timeout=10)
    assert url is not None and "X-Amz-Signature=" in url and "X-Amz-Expires=600" in url
    assert _fetch(url) == out.data
    assert sink.url_for(out.key) is not None

    # Public mode is for buckets the operator made world-readable.
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket}/*",
            }
        ],
    }
    admin = admin_client(proxy.endpoint)
    admin.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    admin.close()
    public = FrameSink(settings_for(proxy.endpoint, bucket, str(tmp_path / "b"), url_mode="public"))
    sinks.append(public)
    out = public.store(image_result("reqpub"), include_data=True)[0]
    url = public.wait_url(out.key, timeout=10)
    assert url == f"{proxy.endpoint}/{bucket}/{out.key}"  # built by botocore, not by us
    assert _fetch(url) == out.data


def test_addressing_style_is_applied_by_botocore(tmp_path: Path) -> None:
    base = {"storage_type": "s3", "bucket": "my-bucket", "spool_dir": str(tmp_path), "url_mode": "public"}
    virtual = S3Bucket(
        StorageSettings(**base, endpoint_url="https://s3.example.test", addressing_style="virtual")
    )
    path = S3Bucket(StorageSettings(**base, endpoint_url="https://s3.example.test", addressing_style="path"))
    try:
        assert virtual.url("p/2026/01/02/r_0.png") == "https://my-bucket.s3.example.test/p/2026/01/02/r_0.png"
        assert path.url("p/2026/01/02/r_0.png") == "https://s3.example.test/my-bucket/p/2026/01/02/r_0.png"
    finally:
        virtual.close()
        path.close()


def test_url_response_falls_back_while_upload_is_pending(
    proxy: FaultProxy, bucket: str, tmp_path: Path, sinks: list
) -> None:
    sink = FrameSink(settings_for(proxy.endpoint, bucket, str(tmp_path)), backoff_base_s=0.1)
    sinks.append(sink)
    proxy.set_down("503")
    out = sink.store(image_result("reqwait"), include_data=True)[0]
    assert sink.wait_url(out.key, timeout=0.3) is None  # the ingress answers with its content URL
    assert sink.status(out.key) == "pending" and sink.url_for(out.key) is None
    assert sink.content("reqwait", 0) == (out.data, "image/png")  # served from the spool
    proxy.set_down(None)
    assert sink.wait_url(out.key, timeout=15) is not None
    assert sink.drain(10)
    assert sink.content("reqwait", 0) == (out.data, "image/png")  # now read back from S3
    assert sink.content("reqother", 0) is None
    # Another replica (which never stored it) can serve it when given the key.
    other = FrameSink(sink.settings, check_bucket=False, start=False)
    sinks.append(other)
    assert other.content("reqwait", 0) is None
    assert other.content("reqwait", 0, key=out.key) == (out.data, "image/png")
    with pytest.raises(ValueError, match="key"):
        other.content("reqother", 0, key=out.key)
    # Another deployment sharing the bucket under its own prefix: the same file name under its
    # prefix is not this deployment's to read (the name alone was checked before).
    foreign = "someone-else/private/2020/01/01/reqwait_0.png"
    admin_client(proxy.endpoint).put_object(Bucket=bucket, Key=foreign, Body=b"theirs")
    for key in (foreign, out.key.replace(sink.settings.key_prefix, "ray-dit/nested", 1)):
        with pytest.raises(ValueError, match="key prefix"):
            other.content("reqwait", 0, key=key)


def test_missing_bucket_fails_start_clearly(moto: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        FrameSink(settings_for(moto, "no-such-bucket-here", str(tmp_path)))
    assert not info.value.retryable
    assert "SGLANG_S3_BUCKET_NAME" in str(info.value) and "no-such-bucket-here" in str(info.value)


def test_unreachable_endpoint_does_not_fail_start(tmp_path: Path, bucket: str, sinks: list) -> None:
    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = FrameSink(settings_for(f"http://127.0.0.1:{port}", bucket, str(tmp_path)))
    sinks.append(sink)
    out = sink.store(image_result("reqdown"))[0]
    assert sink.status(out.key) == "pending"
    with pytest.raises(StorageError) as info:
        S3Bucket(settings_for(f"http://127.0.0.1:{port}", bucket, str(tmp_path))).check_bucket()
    assert info.value.retryable and "could not connect" in str(info.value)


def test_misconfiguration_is_one_error_naming_each_variable() -> None:
    cases = {
        "SGLANG_S3_BUCKET_NAME": {"SGLANG_CLOUD_STORAGE_TYPE": "s3"},
        "SGLANG_S3_ENDPOINT_URL": {"SGLANG_S3_ENDPOINT_URL": "minio:9000"},
        "RAY_DIT_S3_ADDRESSING_STYLE": {"RAY_DIT_S3_ADDRESSING_STYLE": "subdomain"},
        "RAY_DIT_S3_MAX_ATTEMPTS": {"RAY_DIT_S3_MAX_ATTEMPTS": "0"},
    }
    for name, env in cases.items():
        with pytest.raises(ConfigError) as info:
            storage_from_env(env)
        assert len(info.value.problems) == 1 and name in info.value.problems[0]
    combined = {k: v for env in cases.values() for k, v in env.items()}
    with pytest.raises(ConfigError) as info:
        storage_from_env(combined)
    assert len(info.value.problems) == 4
    assert all(name in str(info.value) for name in cases)


def test_settings_from_the_environment_drive_a_working_sink(
    moto: str, bucket: str, tmp_path: Path, sinks: list
) -> None:
    env = {
        "SGLANG_CLOUD_STORAGE_TYPE": "s3",
        "SGLANG_S3_BUCKET_NAME": bucket,
        "SGLANG_S3_ENDPOINT_URL": moto,
        "SGLANG_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "SGLANG_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        "RAY_DIT_S3_KEY_PREFIX": "from-env",
        "RAY_DIT_S3_ADDRESSING_STYLE": "path",
        "RAY_DIT_SPOOL_DIR": str(tmp_path),
    }
    settings = storage_from_env(env)
    assert SECRET_KEY not in repr(settings) and ACCESS_KEY not in repr(settings)
    sink = FrameSink(settings)
    sinks.append(sink)
    out = sink.store(image_result("reqenv"))[0]
    assert out.key.startswith("from-env/") and sink.wait_url(out.key, 10)


def test_storage_off_keeps_outputs_locally(tmp_path: Path, sinks: list) -> None:
    sink = FrameSink(StorageSettings(spool_dir=str(tmp_path)))
    sinks.append(sink)
    out = sink.store(image_result("reqlocal", n=2), include_data=True)
    assert [o.storage for o in out] == ["local", "local"] and all(o.url is None for o in out)
    assert sink.content("reqlocal", 1) == (out[1].data, "image/png")
    assert sink.wait_url(out[0].key, 0.1) is None and not sink.is_full()
    sink.close()
    table = ds.dataset(tmp_path / "manifest", format="parquet").to_table()
    assert table.column("storage").to_pylist() == ["local", "local"]


def test_png_compress_level_from_the_environment_reaches_the_stored_bytes(
    tmp_path: Path, sinks: list
) -> None:
    import numpy as np

    result = image_result("reqlevel", size=(48, 64))
    result.frames[...] = (np.arange(64, dtype=np.uint8) * 4)[None, None, None, :, None]  # a ramp
    stored = {}
    for level in ("0", "9"):
        settings = storage_from_env(
            {"RAY_DIT_SPOOL_DIR": str(tmp_path / level), "RAY_DIT_PNG_COMPRESS_LEVEL": level}
        )
        assert settings.png_compress_level == int(level)
        sink = FrameSink(settings)
        sinks.append(sink)
        stored[level] = sink.store(result, include_data=True)[0]
    raw = result.frames.nbytes
    assert stored["0"].num_bytes > raw > 10 * stored["9"].num_bytes, {
        k: v.num_bytes for k, v in stored.items()
    }


def test_outputs_of_one_request_are_stored_side_by_side_in_order(tmp_path: Path, sinks: list) -> None:
    """n outputs encode and spool in parallel threads; each keeps its own index, key and pixels."""
    import io

    import numpy as np
    from PIL import Image

    sink = FrameSink(StorageSettings(spool_dir=str(tmp_path)))
    sinks.append(sink)
    result = image_result("reqmany", n=4, size=(64, 48))
    out = sink.store(result, include_data=True)
    assert [o.index for o in out] == [0, 1, 2, 3]
    assert len({o.key for o in out}) == 4 and all(o.key.endswith(f"reqmany_{o.index}.png") for o in out)
    for o in out:
        pixels = np.asarray(Image.open(io.BytesIO(o.data)).convert("RGB"))
        assert np.array_equal(pixels, result.frames[o.index, 0]), f"output {o.index} holds other pixels"
        assert sink.content("reqmany", o.index) == (o.data, "image/png")
    sink.close()
    table = ds.dataset(tmp_path / "manifest", format="parquet").to_table()
    assert sorted(table.column("output_index").to_pylist()) == [0, 1, 2, 3]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.texts.append(text)
        self.names.append(record.name)


@pytest.fixture
def debug_logs() -> Iterator[_Capture]:
    names = ("botocore", "boto3", "urllib3", "s3transfer", "ray_dit")
    before = {n: logging.getLogger(n).level for n in names}
    capture = _Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield capture
    root.removeHandler(capture)
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


def test_credentials_never_reach_logs_errors_or_reprs(
    debug_logs: _Capture, proxy: FaultProxy, bucket: str, tmp_path: Path, sinks: list
) -> None:
    seen: list[Any] = []
    sink = FrameSink(settings_for(proxy.endpoint, bucket, str(tmp_path)), backoff_base_s=0.1)
    sinks.append(sink)
    # An AWS-style error body that echoes the access key and the signed request.
    proxy.fail_next(2, status=403, code="SignatureDoesNotMatch", echo_credentials=True)
    seen += [repr(sink), repr(sink.settings), str(sink.stats())]
    out = sink.store(image_result("reqlog"))[0]
    seen.append(repr(out))
    assert sink.wait_url(out.key, 15)
    # Someone turns botocore DEBUG back on after start: the redacting filter still applies.
    for name in ("botocore", "urllib3"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    out2 = sink.store(image_result("reqlog2"))[0]
    assert sink.wait_url(out2.key, 15)
    assert any(n.startswith("botocore") for n in debug_logs.names)  # DEBUG really was on
    assert any("<redacted>" in t for t in debug_logs.texts)  # ...and the key id was blanked
    s3 = S3Bucket(settings_for(proxy.endpoint, "no-such-bucket-log", str(tmp_path)))
    proxy.fail_next(1, status=403, code="SignatureDoesNotMatch", echo_credentials=True)
    for call in (s3.check_bucket, lambda: s3.put("p/2026/01/02/r_0.png", b"x", "image/png", "0" * 32)):
        with pytest.raises(StorageError) as info:
            call()
        seen += [str(info.value), repr(info.value), repr(info.value.__cause__), repr(info.value.__context__)]
    seen.append(repr(s3))
    s3.close()
    seen += [str(sink.stats())]
    texts = debug_logs.texts + [str(s) for s in seen]
    assert [t for t in texts if ACCESS_KEY in t] == []
    assert [t for t in texts if SECRET_KEY in t] == []


def test_store_rejects_bad_input_before_doing_work(tmp_path: Path, sinks: list) -> None:
    sink = FrameSink(StorageSettings(spool_dir=str(tmp_path)))
    sinks.append(sink)
    with pytest.raises(ValueError, match="output_format"):
        sink.store(image_result("reqbad"), "mp4")
    with pytest.raises(ValueError, match="request_id"):
        sink.store(image_result("../escape"))
    assert sink.stats()["spool_entries"] == 0
    generated = sink.store(image_result(""))[0]  # no id given: the server makes one
    assert re.fullmatch(r"[0-9a-f]{32}", generated.request_id)
