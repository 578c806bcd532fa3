"""Offline generation on Ray Data (ray_dit.batch): Parquet on S3 in, outputs + manifest on S3 out.

Real parts throughout: the session's local Ray cluster, a moto S3 server over HTTP on loopback,
the trained demo:shapes pipeline. One job runs once per module; the tests read what it left.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from serve_helpers import s3_env
from sink_helpers import admin_client, new_bucket

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SHAPES = ["red circle", "blue square", "green triangle", "yellow star"]
GOOD = [
    {"id": f"row-{i:02d}", "prompt": f"a {SHAPES[i % 4]} on a white background", "seed": i} for i in range(24)
]
# Runs alone (its size and steps match no other row): its bytes equal a solo Engine.generate's.
SOLO = {"id": "solo", "prompt": "a blue square", "seed": 7, "size": "48x48", "num_inference_steps": 3}
# Bad rows, planted: the errors table must hold exactly these, with the API's messages.
BAD = {
    "bad-field": ({"prompt": "a red circle", "colour": "red"}, "colour: unknown parameter"),
    "bad-size": ({"prompt": "a red circle", "size": "4096x4096"}, "RAY_DIT_MAX_PIXELS"),
    "bad-n": ({"prompt": "a red circle", "n": 9}, "n=9: must be between 1 and 4"),
}
DEFAULTS = {"size": "64x64", "num_inference_steps": 2}


@dataclass
class Job:
    endpoint: str
    bucket: str
    env: dict[str, str]
    output: str
    summary: Any

    def objects(self) -> dict[str, bytes]:
        client = admin_client(self.endpoint)
        try:
            found = client.list_objects_v2(Bucket=self.bucket, Prefix="out/").get("Contents", [])
            return {
                o["Key"]: client.get_object(Bucket=self.bucket, Key=o["Key"])["Body"].read() for o in found
            }
        finally:
            client.close()

    def manifest(self) -> list[dict[str, Any]]:
        objects = self.objects()
        parts = [k for k in objects if k.startswith("out/manifest/part-")]
        rows = [row for k in parts for row in pq.read_table(io.BytesIO(objects[k])).to_pylist()]
        return rows

    def run(self, **kwargs: Any) -> Any:
        from ray_dit.batch import generate

        return generate(
            f"s3://{self.bucket}/in/prompts.parquet",
            self.output,
            device="cpu",
            dtype="float32",
            env=self.env,
            batch_size=8,
            max_batch_size=4,
            **kwargs,
        )


def _input_table() -> pa.Table:
    rows = [{**DEFAULTS, **row} for row in GOOD] + [SOLO]
    rows += [{"id": rid, **row} for rid, (row, _) in BAD.items()]
    columns = ("id", "prompt", "seed", "size", "num_inference_steps", "n", "colour")
    return pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])


@pytest.fixture(scope="module")
def job(ray_serve: Any, moto: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Job]:
    bucket = new_bucket(moto)
    buffer = io.BytesIO()
    pq.write_table(_input_table(), buffer)
    client = admin_client(moto)
    client.put_object(Bucket=bucket, Key="in/prompts.parquet", Body=buffer.getvalue())
    client.close()
    env = s3_env(moto, bucket, str(tmp_path_factory.mktemp("batch_spool")))
    made = Job(moto, bucket, env, f"s3://{bucket}/out", None)
    made.summary = made.run()
    yield made


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _outputs(objects: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in objects.items() if k.endswith(".png")}


def test_every_output_is_stored_once_with_the_manifests_bytes(job: Job) -> None:
    summary = job.summary
    assert (summary.rows, summary.done, summary.skipped, summary.failed) == (28, 25, 0, 3)
    assert summary.outputs == 25 and summary.outputs_per_s > 0
    assert summary.cache["total_steps"] == 24 * 2 + 3
    assert summary.manifest == f"s3://{job.bucket}/out/manifest"
    manifest, outputs = job.manifest(), _outputs(job.objects())
    assert sorted(r["key"] for r in manifest) == sorted(outputs)  # one row per object, no more
    assert sorted(r["row_id"] for r in manifest) == sorted([r["id"] for r in GOOD] + ["solo"])
    for row in manifest:
        data = outputs[row["key"]]
        assert row["bytes"] == len(data)
        assert row["md5"] == hashlib.md5(data).hexdigest()
        assert row["storage"] == "s3" and row["bucket"] == job.bucket and row["width"] in (48, 64)
        assert json.loads(row["input"])["prompt"]
        assert row["key"].endswith(f"/{row['request_id']}_0.png")


def test_errors_table_holds_exactly_the_bad_rows(job: Job) -> None:
    table = pq.read_table(io.BytesIO(job.objects()["out/errors/errors.parquet"])).to_pylist()
    assert sorted(r["row_id"] for r in table) == sorted(BAD)
    for row in table:
        assert row["stage"] == "validate"
        assert BAD[row["row_id"]][1] in row["error"], row


def test_a_row_gives_the_bytes_engine_generate_gives(job: Job) -> None:
    import torch

    from ray_dit.engine import Engine, EngineOptions

    engine = Engine(EngineOptions(model="demo:shapes", device="cpu", dtype="float32"))
    # Ray gives a 1-CPU actor OMP_NUM_THREADS=1, and the thread count changes how float sums
    # are split: the reference runs with the same one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _compare(engine, job)
    finally:
        torch.set_num_threads(threads)


def _compare(engine: Any, job: Job) -> None:
    from ray_dit.api import GenerationRequest
    from ray_dit.sink.encode import encode_output

    by_row = {r["row_id"]: r for r in job.manifest()}
    outputs = _outputs(job.objects())
    solo = engine.generate(
        GenerationRequest(prompt=SOLO["prompt"], seed=7, width=48, height=48, num_inference_steps=3)
    )
    expected = encode_output(solo.frames[0], "image", "png", png_level=1).data
    assert outputs[by_row["solo"]["key"]] == expected  # the same row alone: the same bytes
    # A row that shared a pipeline call: batched matmuls on the CPU may round 1/255 apart.
    row = GOOD[5]
    alone = engine.generate(
        GenerationRequest(prompt=row["prompt"], seed=row["seed"], width=64, height=64, num_inference_steps=2)
    )
    stored = _pixels(outputs[by_row[row["id"]]["key"]])
    diff = np.abs(stored.astype(int) - alone.frames[0, 0].astype(int))
    assert diff.max() <= 1, diff.max()


def test_a_rerun_skips_what_is_stored_and_redoes_what_is_missing(job: Job) -> None:
    before = job.objects()
    again = job.run()
    assert (again.done, again.skipped, again.failed, again.outputs) == (0, 25, 3, 0)
    assert job.objects().keys() == before.keys()
    # Outputs lost from the bucket (a job killed after its manifest part, an operator's delete):
    # the re-run generates exactly those rows again.
    by_row = {r["row_id"]: r["key"] for r in job.manifest()}
    lost = [by_row["solo"], by_row["row-05"]]
    client = admin_client(job.endpoint)
    for key in lost:
        client.delete_object(Bucket=job.bucket, Key=key)
    client.close()
    redo = job.run()
    assert (redo.done, redo.skipped, redo.failed) == (2, 23, 3)
    after = job.objects()
    assert _outputs(after).keys() == _outputs(before).keys()
    assert after[by_row["solo"]] == before[by_row["solo"]]  # alone both times: the same bytes
    # row-05 shared its first call with 3 rows and its second with none: within 1/255.
    first, second = (_pixels(o[by_row["row-05"]]) for o in (before, after))
    assert np.abs(first.astype(int) - second.astype(int)).max() <= 1
    keys = [r["key"] for r in job.manifest()]
    assert sorted(set(keys)) == sorted(_outputs(after))
    assert len(keys) == len(set(keys)) + 2  # the two redone outputs are recorded twice


def test_the_cli_runs_the_job_and_prints_its_summary(
    job: Job, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ray_dit.cli import main

    for name, value in job.env.items():
        monkeypatch.setenv(name, value)
    source = f"s3://{job.bucket}/in/prompts.parquet"
    assert main(["batch", source, "--output", job.output, "--device", "cpu", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (0, 25, 3)  # all stored already
    assert summary["errors"] == f"s3://{job.bucket}/out/errors/errors.parquet"
    assert main(["batch", source, "--output", job.output, "--engines", "0"]) == 2
    assert "--engines=0: must be at least 1" in capsys.readouterr().err
    assert main(["batch", source, "--output", "s3://Bad_Bucket/x"]) == 2
    assert "output='s3://Bad_Bucket/x'" in capsys.readouterr().err


def _alive_map_workers() -> int:
    import ray._private.state as state  # the GCS's actor table (no dashboard in the test cluster)

    table = state.actors()
    return sum(
        1 for a in table.values() if a["State"] == "ALIVE" and "MapWorker" in (a.get("ActorClassName") or "")
    )


def test_a_job_killed_part_way_and_run_again_stores_every_output_once(job: Job) -> None:
    """The driver of a CLI job is killed (SIGKILL, by its pid) once its first manifest part is in
    S3; the same job run again finishes the rest, and every output is stored and recorded once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import ray
    from serve_helpers import RAY_ENV

    output = f"s3://{job.bucket}/killed"
    env = {**os.environ, **RAY_ENV, **job.env, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    source = f"s3://{job.bucket}/in/prompts.parquet"
    argv = ["batch", source, "--output", output, "--device", "cpu", "--batch-size", "4"]
    code = f"import sys; from ray_dit.cli import main; sys.exit(main({argv!r}))"
    driver = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = admin_client(job.endpoint)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and driver.poll() is None:
            found = client.list_objects_v2(Bucket=job.bucket, Prefix="killed/manifest/").get("KeyCount", 0)
            if found:
                break
            time.sleep(0.1)
        assert driver.poll() is None, "the job ended before it could be killed"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 60  # Ray stops the dead driver's actors: wait for it
        while _alive_map_workers() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _alive_map_workers() == 0
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        client.close()
    killed = Job(job.endpoint, job.bucket, job.env, output, None)
    rest = killed.run()
    assert rest.skipped >= 1 and rest.done + rest.skipped == 25 and rest.failed == 3
    objects = admin_client(job.endpoint)
    try:
        found = objects.list_objects_v2(Bucket=job.bucket, Prefix="killed/").get("Contents", [])
    finally:
        objects.close()
    stored = sorted(o["Key"] for o in found if o["Key"].endswith(".png"))
    manifest = [
        row
        for o in found
        if o["Key"].startswith("killed/manifest/part-")
        for row in pq.read_table(io.BytesIO(_get(job, o["Key"]))).to_pylist()
    ]
    assert sorted(r["key"] for r in manifest) == stored  # each output once, in S3 and in the manifest
    assert len(stored) == 25


def _get(job: Job, key: str) -> bytes:
    client = admin_client(job.endpoint)
    try:
        return client.get_object(Bucket=job.bucket, Key=key)["Body"].read()
    finally:
        client.close()
