"""Offline generation on Ray Data (ray_dit.batch): Parquet on S3 in, outputs + manifest on S3 out.

Real parts throughout: the session's local Ray cluster, a moto S3 server over HTTP on loopback,
the trained demo:shapes pipeline, the openai client against a served app. The module's job is
the issue's hardest case, run once: 200 good rows plus planted bad, repeated and conflicting
rows; a CLI job whose driver is SIGKILLed (by its pid) after its first manifest part; one stored
output deleted; the same job run again. Every test reads what that left, or re-runs cheaply.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from serve_helpers import RAY_ENV, s3_env
from sink_helpers import admin_client, new_bucket

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SHAPES = ["red circle", "blue square", "green triangle", "yellow star"]
DEFAULTS = {"size": "64x64", "num_inference_steps": 2}
GOOD = [
    {"id": f"row-{i:03d}", "prompt": f"a {SHAPES[i % 4]} on a white background", "seed": i, **DEFAULTS}
    for i in range(200)
]
# Runs alone (its size and steps match no other row): its pixels equal the HTTP API's.
SOLO = {"id": "solo", "prompt": "a blue square", "seed": 7, "size": "48x48", "num_inference_steps": 3}
# No id and no seed: its id comes from its content, its seed from its id (recorded in `input`).
SEEDLESS = {"prompt": "a green circle on a red background", **DEFAULTS}
REPEAT = dict(GOOD[3])  # the same id and fields again: one request, generated once
# Planted bad rows: the errors table must hold exactly these, with the API's messages.
BAD = {
    "bad-field": ({"prompt": "a red circle", "colour": "red"}, "colour: unknown parameter"),
    "bad-size": ({"prompt": "a red circle", "size": "4096x4096"}, "RAY_DIT_MAX_PIXELS"),
    "bad-n": ({"prompt": "a red circle", "n": 9}, "n=9: must be between 1 and 4"),
}
TWINS = [
    {"id": "twin", "prompt": "a red star", **DEFAULTS},
    {"id": "twin", "prompt": "a blue star", **DEFAULTS},
]
REQUESTS = len(GOOD) + 2  # with SOLO and SEEDLESS
FAILED = len(BAD) + len(TWINS)
STARTED = "2025-12-31T23:59:59.5+00:00"
COLUMNS = ("id", "prompt", "seed", "size", "num_inference_steps", "n", "colour")


@dataclass
class Job:
    endpoint: str
    bucket: str
    env: dict[str, str]
    prefix: str = "out"
    summary: Any = None
    killed_at: int = 0  # outputs recorded when the first driver was killed
    kept: set[str] = field(default_factory=set)  # row ids recorded then, and not deleted
    lost: str = ""  # the key deleted between the two runs
    lost_bytes: bytes = b""
    after: dict[str, bytes] = field(default_factory=dict)  # every object once the job ran again

    @property
    def source(self) -> str:
        return f"s3://{self.bucket}/in/prompts.parquet"

    @property
    def output(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def keys(self) -> list[str]:
        client = admin_client(self.endpoint)
        try:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}/"
            )
            return [o["Key"] for page in pages for o in page.get("Contents", [])]
        finally:
            client.close()

    def objects(self) -> dict[str, bytes]:
        keys = self.keys()
        client = admin_client(self.endpoint)
        try:
            return {k: client.get_object(Bucket=self.bucket, Key=k)["Body"].read() for k in keys}
        finally:
            client.close()

    def manifest(self, objects: dict[str, bytes] | None = None) -> list[dict[str, Any]]:
        objects = self.objects() if objects is None else objects
        parts = sorted(k for k in objects if k.startswith(f"{self.prefix}/manifest/part-"))
        return [row for k in parts for row in pq.read_table(io.BytesIO(objects[k])).to_pylist()]

    def run(self, **kwargs: Any) -> Any:
        from ray_dit.batch import generate

        options = {"device": "cpu", "dtype": "float32", "batch_size": 8, "max_batch_size": 4, **kwargs}
        return generate(self.source, self.output, env=self.env, **options)


def _outputs(objects: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in objects.items() if k.endswith(".png")}


def _input_table() -> pa.Table:
    rows = [*GOOD, SOLO, SEEDLESS, REPEAT, *TWINS]
    rows += [{"id": rid, **row} for rid, (row, _) in BAD.items()]
    return pa.Table.from_pylist([{c: row.get(c) for c in COLUMNS} for row in rows])


def _alive_map_workers() -> int:
    import ray._private.state as state  # the GCS's actor table (no dashboard in the test cluster)

    table = state.actors()
    return sum(
        1 for a in table.values() if a["State"] == "ALIVE" and "MapWorker" in (a.get("ActorClassName") or "")
    )


def _kill_after_first_part(job: Job) -> None:
    """Start the job from the CLI in its own driver process and SIGKILL it (by its pid) as soon as
    its first manifest part is in S3; wait until Ray has stopped the dead driver's actors."""
    import ray

    env = {**os.environ, **RAY_ENV, **job.env, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    argv = ["batch", job.source, "--output", job.output, "--device", "cpu", "--batch-size", "8"]
    code = f"import sys; from ray_dit.cli import main; sys.exit(main({argv!r}))"
    driver = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = admin_client(job.endpoint)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and driver.poll() is None:
            listed = client.list_objects_v2(Bucket=job.bucket, Prefix=f"{job.prefix}/manifest/part-")
            if listed.get("KeyCount", 0):
                break
            time.sleep(0.05)
        assert driver.poll() is None, "the job ended before it could be killed"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 60
        while _alive_map_workers() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _alive_map_workers() == 0
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        client.close()


@pytest.fixture(scope="module")
def job(ray_serve: Any, moto: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Job]:
    bucket = new_bucket(moto)
    buffer = io.BytesIO()
    pq.write_table(_input_table(), buffer)
    client = admin_client(moto)
    client.put_object(Bucket=bucket, Key="in/prompts.parquet", Body=buffer.getvalue())
    env = s3_env(moto, bucket, str(tmp_path_factory.mktemp("batch_spool")))
    made = Job(moto, bucket, env)
    # As if the job's first run had started before midnight: its keys carry that day, every run.
    started = {"model": "demo:shapes", "started": STARTED}
    client.put_object(Bucket=bucket, Key="out/job.json", Body=json.dumps(started).encode())
    _kill_after_first_part(made)
    recorded = made.manifest()
    made.killed_at = len(recorded)
    # An output recorded and then lost (an operator's delete): the re-run must store it again.
    made.lost = recorded[0]["key"]
    made.kept = {row["row_id"] for row in recorded[1:]}
    made.lost_bytes = client.get_object(Bucket=bucket, Key=made.lost)["Body"].read()
    client.delete_object(Bucket=bucket, Key=made.lost)
    client.close()
    made.summary = made.run()
    made.after = made.objects()
    yield made


def test_a_killed_job_run_again_stores_and_records_every_output_once(job: Job) -> None:
    summary = job.summary
    assert 0 < job.killed_at < REQUESTS, job.killed_at  # killed part-way
    assert summary.rows == len(_input_table())
    assert (summary.failed, summary.repeats) == (FAILED, 1)
    assert summary.done + summary.skipped == REQUESTS
    assert summary.skipped == job.killed_at - 1  # all that was recorded, but the lost one
    assert summary.outputs == summary.done and summary.outputs_per_s > 0
    assert summary.engine_cpu_s > 0 and summary.writer_cpu_s > 0 and 0 < summary.writer_share < 1
    solo_done_now = "solo" not in job.kept
    assert summary.cache["total_steps"] == 2 * summary.done + (1 if solo_done_now else 0)  # SOLO: 3
    outputs, manifest = _outputs(job.after), job.manifest(job.after)
    keys = [row["key"] for row in manifest]
    assert sorted(set(keys)) == sorted(outputs)  # every object recorded, every record stored
    assert len(keys) == len(outputs) + 1  # each once, but the lost output: recorded when redone
    assert len(outputs) == REQUESTS
    assert outputs[job.lost] == job.lost_bytes  # redone from its seed: the same image
    row_ids = {row["row_id"] for row in manifest}
    assert row_ids >= {row["id"] for row in GOOD} | {"solo"} and len(row_ids) == REQUESTS


def test_every_object_has_its_manifest_rows_bytes_and_checksum(job: Job) -> None:
    outputs = _outputs(job.after)
    assert not [key for key in job.after if key.endswith("/")]  # no directory marker objects
    for row in job.manifest(job.after):
        data = outputs[row["key"]]
        assert row["bytes"] == len(data)
        assert row["md5"] == hashlib.md5(data).hexdigest()
        assert row["storage"] == "s3" and row["bucket"] == job.bucket and row["width"] in (48, 64)
        assert row["key"].endswith(f"/{row['request_id']}_0.png")
        assert json.loads(row["input"])["prompt"]
    # Every key carries the job's date from job.json, whichever day each run stored it on.
    assert all(key.startswith(f"{job.prefix}/2025/12/31/") for key in outputs), sorted(outputs)[:3]


def test_a_row_without_seed_is_recorded_with_the_seed_it_drew(job: Job) -> None:
    from ray_dit.batch.rows import content_id, row_seed

    seedless = [r for r in job.manifest(job.after) if json.loads(r["input"])["prompt"] == SEEDLESS["prompt"]]
    assert len(seedless) == 1
    rid = content_id(SEEDLESS)
    assert seedless[0]["request_id"] == seedless[0]["row_id"] == rid
    assert json.loads(seedless[0]["input"])["seed"] == seedless[0]["seed"] == row_seed(rid)


def test_errors_table_holds_exactly_the_bad_and_conflicting_rows(job: Job) -> None:
    table = pq.read_table(io.BytesIO(job.after[f"{job.prefix}/errors/errors.parquet"])).to_pylist()
    assert sorted(r["row_id"] for r in table) == sorted([*BAD, "twin", "twin"])
    for row in table:
        assert row["stage"] == "validate"
        expected = BAD[row["row_id"]][1] if row["row_id"] in BAD else "id='twin': given to 2 rows"
        assert expected in row["error"], row


def test_a_row_gives_the_pixels_the_http_api_gives(job: Job, ray_serve: Any) -> None:
    """SOLO ran alone in its pipeline call; sent to a served demo:shapes app with the openai
    client (one thread per replica, as Ray gives a 1-CPU actor), the same seed gives the same
    PNG bytes. A row that shared its call may differ by 1/255 (batched matmuls sum in another order)."""
    import base64

    from openai import OpenAI
    from ray import serve

    from ray_dit.serve import build_app

    serve.run(
        build_app({"model": "demo:shapes", "device": "cpu"}), name="batch-parity", route_prefix="/parity"
    )
    try:
        client = OpenAI(base_url=f"{ray_serve.url}/parity/v1", api_key="unused", max_retries=0, timeout=120)
        by_row = {r["row_id"]: r for r in job.manifest(job.after)}
        outputs = _outputs(job.after)
        for row, tolerance in ((SOLO, 0), (GOOD[5], 1)):
            resp = client.images.generate(
                model="demo:shapes",
                prompt=row["prompt"],
                size=row["size"],
                response_format="b64_json",
                extra_body={"seed": row["seed"], "num_inference_steps": row["num_inference_steps"]},
            )
            served_png, stored_png = (
                base64.b64decode(resp.data[0].b64_json),
                outputs[by_row[row["id"]]["key"]],
            )
            if tolerance == 0:  # the same pixels through the same encoder: the same bytes
                assert served_png == stored_png, row["id"]
            served, stored = _pixels(served_png), _pixels(stored_png)
            assert served.shape == stored.shape
            assert np.abs(served.astype(int) - stored.astype(int)).max() <= tolerance, row["id"]
    finally:
        serve.delete("batch-parity")


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_the_cli_reruns_a_finished_job_storing_nothing_and_names_bad_arguments(
    job: Job, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ray_dit.cli import main

    for name, value in job.env.items():
        monkeypatch.setenv(name, value)
    before = job.keys()
    # The job is finished: run again, it stores nothing and starts no engine.
    assert main(["batch", job.source, "--output", job.output, "--device", "cpu", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["done"], summary["skipped"], summary["failed"], summary["outputs"]) == (
        0,
        REQUESTS,
        FAILED,
        0,
    )
    assert job.keys() == before
    assert summary["errors"] == f"s3://{job.bucket}/{job.prefix}/errors/errors.parquet"
    assert main(["batch", job.source, "--output", job.output, "--engines", "0"]) == 2
    assert "engines=0: must be at least 1" in capsys.readouterr().err
    assert main(["batch", job.source, "--output", job.output, "--engine-cpus", "0"]) == 2
    assert "engine_cpus=0.0: must be more than 0" in capsys.readouterr().err
    assert main(["batch", job.source, "--output", "s3://Bad_Bucket/x"]) == 2
    assert "output='s3://Bad_Bucket/x'" in capsys.readouterr().err
    assert main(["batch", job.source, "--output", job.output, "--model", "demo:flux-tiny"]) == 2
    err = capsys.readouterr().err
    assert "holds the outputs of model 'demo:shapes'" in err and "demo:flux-tiny" in err
