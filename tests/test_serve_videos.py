"""The video app: the openai SDK's videos API end to end, with job state shared by two ingresses."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

APP = "videos"
PREFIX = "/vid"


@pytest.fixture(scope="module")
def base_url(ray_serve):
    from ray import serve

    from ray_dit.serve import build_app

    serve.run(
        build_app({"model": "demo:wan-tiny", "device": "cpu", "ingress_replicas": 2}),
        name=APP,
        route_prefix=PREFIX,
    )
    try:
        yield ray_serve.url + PREFIX
    finally:
        serve.delete(APP)


def test_openai_videos_api(base_url):
    from openai import OpenAI

    client = OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    job = client.videos.create(prompt="a cat on a skateboard", size="64x64", seconds="1")
    assert job.id.startswith("video_") and job.status in ("queued", "in_progress")
    assert job.size == "64x64" and job.object == "video"
    done = client.videos.poll(job.id, poll_interval_ms=100)
    assert done.status == "completed", done.error
    assert done.progress == 100
    extras = done.model_extra or {}
    assert extras["steps"] > 0 and "denoise_s" in extras["timings"] and extras["batch_size"] == 1
    content = client.videos.download_content(job.id)
    data = content.read()
    assert data[4:8] == b"ftyp"  # an MP4 container
    listed = client.videos.list()
    assert job.id in [v.id for v in listed.data]
    deleted = client.videos.delete(job.id)
    assert deleted.deleted is True and deleted.id == job.id


def test_job_status_is_shared_by_every_ingress_replica(base_url):
    """Two ingress replicas: polls land on either, and every poll sees the job."""
    with httpx.Client(base_url=base_url, timeout=30) as http:
        resp = http.post("/v1/videos", json={"prompt": "x", "num_frames": 5, "num_inference_steps": 30})
        assert resp.status_code == 200, resp.text
        job_id = resp.json()["id"]
        seen: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            polled = http.get(f"/v1/videos/{job_id}", headers={"connection": "close"})
            assert polled.status_code == 200, polled.text
            job = polled.json()
            seen.add(job["status"])
            if job["status"] in ("completed", "failed"):
                break
            time.sleep(0.05)
        assert job["status"] == "completed", job
        assert http.get(f"/v1/videos/{job_id}/content").headers["content-type"] == "video/mp4"


def test_video_bad_inputs(base_url):
    with httpx.Client(base_url=base_url, timeout=30) as http:
        cases = [
            ({"prompt": "x", "num_frames": 6}, "num_frames"),
            ({"prompt": "x", "num_frames": 1000}, "num_frames"),
            ({"prompt": "x", "seconds": "forever"}, "seconds"),
            ({"prompt": "x", "seconds": "600"}, "seconds"),
            ({"prompt": "x", "size": "64"}, "size"),
            ({"prompt": "x", "output_format": "gif"}, "output_format"),
            ({"seconds": "4"}, "prompt"),
            ({"prompt": "x", "input_reference": {"image_url": "http://x/y.png"}}, "input_reference"),
        ]
        for body, param in cases:
            resp = http.post("/v1/videos", json=body)
            assert resp.status_code == 400, (body, resp.text)
            assert resp.json()["error"]["param"] == param, (body, resp.text)
        form = http.post("/v1/videos", data={"prompt": "x"}, files={"input_reference": ("a.png", b"png")})
        assert form.status_code == 400 and form.json()["error"]["param"] == "input_reference"
        assert http.get("/v1/videos/video_0123456789abcdef").status_code == 404
        assert http.delete("/v1/videos/video_0123456789abcdef").status_code == 404
        resp = http.post("/v1/images/generations", json={"prompt": "x"})  # a video model
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "model"


def _wait_done(http: httpx.Client, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/videos/{job_id}").json()
        if job["status"] in ("completed", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not done after {timeout}s")


def test_deleting_a_running_job_cancels_it(base_url):
    long_job = {"prompt": "x", "size": "128x128", "num_frames": 65, "num_inference_steps": 200}
    with httpx.Client(base_url=base_url, timeout=30) as http:
        probe = http.post("/v1/videos", json={**long_job, "num_inference_steps": 6}).json()
        step_s = _wait_done(http, probe["id"])["timings"]["denoise_s"] / 6
        full = 200 * step_s
        assert full > 3, f"the long job is too fast to tell ({full:.1f}s)"
        job_id = http.post("/v1/videos", json=long_job).json()["id"]
        deadline = time.monotonic() + 30
        while http.get(f"/v1/videos/{job_id}").json()["status"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http.delete(f"/v1/videos/{job_id}").json()["deleted"] is True
        deleted_at = time.monotonic()
        assert http.get(f"/v1/videos/{job_id}").status_code == 404
        # The replica is free again at once: a short job finishes long before 200 steps would.
        short = http.post(
            "/v1/videos", json={"prompt": "y", "num_frames": 5, "num_inference_steps": 2}
        ).json()
        assert _wait_done(http, short["id"])["status"] == "completed"
        waited = time.monotonic() - deleted_at
        assert waited < full / 2, f"waited {waited:.1f}s; the deleted job takes ~{full:.1f}s"


def test_handle_returns_video_frames(base_url):
    from ray import serve

    out = serve.get_app_handle(APP).generate.remote(prompt="x", num_frames=5, num_inference_steps=2).result()
    assert out.kind == "video" and out.frames.shape == (1, 5, 64, 64, 3)
    assert len(out.videos) == 1 and len(out.videos[0]) == 5
    assert out.keys[0].endswith(".mp4") and out.fps


def test_the_sdk_pages_through_every_job(base_url):
    """The openai SDK's auto-pagination over more jobs than one page holds sees each one once."""
    from openai import BadRequestError, OpenAI
    from ray import serve

    jobs = serve.get_deployment_handle("VideoJobs", APP)
    made = [f"video_{i:032x}" for i in range(105)]
    for job_id in made:
        jobs.create.remote({"id": job_id, "object": "video", "status": "completed"}).result()
    client = OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    seen = [video.id for video in client.videos.list(limit=100)]
    assert len(seen) == len(set(seen)) and set(made) <= set(seen)
    for bad in (0, 101):
        with pytest.raises(BadRequestError, match="limit"):
            client.videos.list(limit=bad)
    for job_id in made:
        jobs.delete.remote(job_id).result()
