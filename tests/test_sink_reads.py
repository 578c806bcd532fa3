"""Reads never delay writes: ``/content`` reads that a hanging S3 holds leave the stores alone.

The frame sink deployment's class runs in-process against a real S3 server (moto) behind the
fault proxy; only Serve is absent. Before, stores and reads shared one pool of four threads, and
six reads of uploaded outputs during a hanging outage held it: a b64_json request waited 60 s.
"""

from __future__ import annotations

import asyncio

import pytest
from sink_helpers import ACCESS_KEY, SECRET_KEY, image_result

from ray_dit.errors import StorageUnavailable
from ray_dit.serve.frame_sink import FrameSinkDeployment


@pytest.fixture
def sink_env(monkeypatch, proxy, bucket, tmp_path):
    env = {
        "SGLANG_CLOUD_STORAGE_TYPE": "s3",
        "SGLANG_S3_BUCKET_NAME": bucket,
        "SGLANG_S3_ENDPOINT_URL": proxy.endpoint,
        "SGLANG_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "SGLANG_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        "RAY_DIT_S3_ADDRESSING_STYLE": "path",
        "RAY_DIT_SPOOL_DIR": str(tmp_path / "spool"),
        "RAY_DIT_S3_MAX_ATTEMPTS": "2",
        "RAY_DIT_S3_READ_TIMEOUT_S": "2",
        "RAY_DIT_CONTENT_WAIT_S": "1",
        "RAY_DIT_SINK_NICE": "0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_reads_held_by_a_hanging_s3_never_delay_a_store(sink_env, proxy):
    deployment = FrameSinkDeployment.func_or_class()

    async def scenario() -> None:
        stored = []
        for i in range(6):  # uploaded and gone from the spool: only S3 has them now
            reply = await deployment.store(image_result(f"img_{i:032x}"), wait_url=True)
            stored.append(reply.outputs[0])
        assert deployment.sink.drain(10)
        proxy.set_latency(30)  # S3 hangs
        reads = [asyncio.ensure_future(deployment.content(o.request_id, 0, o.key)) for o in stored]
        await asyncio.sleep(0.3)  # the reads reach S3 and hang there
        reply = await deployment.store(image_result("img_" + "f" * 32), include_data=True)
        pending = [read for read in reads if not read.done()]
        assert reply.outputs[0].data, "the store answered"
        assert len(pending) == 4, "the store waited for reads (or reads were not bounded to the threads)"
        for read in reads:  # refused at once beyond the four threads, else given up after 1 s
            with pytest.raises(StorageUnavailable):
                await read

    try:
        asyncio.run(scenario())
    finally:
        proxy.set_latency(0)
        deployment.sink.close(timeout=10)
