"""Video jobs outlive nobody: a job whose ingress replica died is failed as ``job_lost``, while a
job that merely waits in the queue is kept alive by its ingress's heartbeat."""

from __future__ import annotations

import time

import httpx
import pytest

from ray_dit.serve.job_store import VideoJobs

APP = "video_jobs"
PREFIX = "/jobs"
STALE_S = 1  # RAY_DIT_VIDEO_JOB_STALE_S for this app: the ingress reports every 0.5 s


def test_a_job_nobody_reports_on_fails_as_lost_and_can_still_complete():
    store = VideoJobs.func_or_class(stale_after_s=0.3)
    store.create({"id": "video_quiet"})
    store.create({"id": "video_owned"})
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:  # the owner of one job keeps reporting
        assert store.touch("video_owned")
        time.sleep(0.05)
    lost = store.get("video_quiet")
    assert lost["status"] == "failed" and lost["error"]["code"] == "job_lost"
    assert store.get("video_owned")["status"] == "queued"
    assert not store.touch("video_quiet"), "a lost job tells its owner to stop"
    assert not store.touch("video_nope")
    late = store.finish("video_quiet", {"status": "completed", "url": "u"})
    assert late["status"] == "completed" and "error" not in late and late["progress"] == 100
    assert [j["id"] for j in store.list()[0]] == ["video_owned", "video_quiet"]


def test_pages_cover_every_job_and_say_when_more_follow():
    """105 jobs in pages of 100: the first page says more follow (it said no, and the SDK's
    auto-pagination silently stopped at 100)."""
    store = VideoJobs.func_or_class()
    ids = [f"video_{i:032x}" for i in range(105)]
    for job_id in ids:
        store.create({"id": job_id})
    first, more = store.list(100)
    assert len(first) == 100 and more
    rest, more = store.list(100, after=first[-1]["id"])
    assert len(rest) == 5 and not more
    assert [j["id"] for j in first + rest] == ids[::-1]
    exact, more = store.list(105)
    assert len(exact) == 105 and not more
    oldest_first, _ = store.list(3, order="asc")
    assert [j["id"] for j in oldest_first] == ids[:3]


@pytest.fixture(scope="module")
def base_url(ray_serve):
    from ray import serve

    from ray_dit.serve.dit import DiTDeployment
    from ray_dit.serve.frame_sink import FrameSinkDeployment
    from ray_dit.serve.ingress import Ingress

    env = {"runtime_env": {"env_vars": {"RAY_DIT_VIDEO_JOB_STALE_S": str(STALE_S)}}}
    jobs = VideoJobs.options(ray_actor_options={"num_cpus": 0, **env}).bind()
    sink = FrameSinkDeployment.bind()
    dit = DiTDeployment.bind("demo:wan-tiny", "cpu", "auto", jobs, sink)
    ingress = Ingress.options(ray_actor_options={"num_cpus": 0.1, **env}).bind(
        dit, sink, jobs, "demo:wan-tiny"
    )
    serve.run(ingress, name=APP, route_prefix=PREFIX)
    try:
        yield ray_serve.url + PREFIX
    finally:
        serve.delete(APP)


def _poll(http: httpx.Client, job_id: str, timeout: float = 90) -> dict:
    """Poll until the job is terminal; tolerate the moments while Serve replaces an ingress."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            resp = http.get(f"/v1/videos/{job_id}")
        except httpx.HTTPError:
            resp = None
        if resp is not None and resp.status_code == 200 and resp.json()["status"] in ("completed", "failed"):
            return resp.json()
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not terminal after {timeout}s")


def _ingress_replicas() -> list[tuple[str, str]]:
    import ray

    prefix = f"SERVE_REPLICA::{APP}#Ingress#"
    return [
        (a["name"], a["namespace"])
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(prefix)
    ]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_queued_jobs_stay_alive_and_jobs_of_a_dead_ingress_are_lost(base_url):
    import ray

    body = {"prompt": "x", "size": "128x128", "num_frames": 65}  # slow enough per step on a CPU
    with httpx.Client(base_url=base_url, timeout=30) as http:
        for _ in range(2):  # the first denoise also warms the replica up: time the second
            probe = _poll(http, http.post("/v1/videos", json={**body, "num_inference_steps": 8}).json()["id"])
            assert probe["status"] == "completed", probe
        step_s = probe["timings"]["denoise_s"] / 8
        # One replica, one denoise at a time: the second job waits in the queue for the whole
        # first one, silent but for its ingress's heartbeat, and must not be given up. The wait
        # must span several stale periods; this VM's speed drifts, so a first job that ran too
        # fast to show it is sized again from its own pace (bounded tries).
        for _ in range(3):
            steps = min(400, max(8, int(4 * STALE_S / step_s)))
            first = http.post("/v1/videos", json={**body, "num_inference_steps": steps}).json()["id"]
            second = http.post("/v1/videos", json={**body, "num_inference_steps": 2}).json()["id"]
            done_first, done_second = _poll(http, first), _poll(http, second)
            assert done_first["status"] == "completed", done_first
            assert done_second["status"] == "completed", done_second
            if done_first["timings"]["denoise_s"] > 2 * STALE_S:
                break
            step_s = done_first["timings"]["denoise_s"] / steps
        else:
            raise AssertionError(
                f"precondition: no first job lasted {2 * STALE_S}s, the queue wait was short"
            )

        running = http.post("/v1/videos", json={**body, "num_inference_steps": steps}).json()["id"]
        replicas = _ingress_replicas()
        assert len(replicas) == 1, replicas
        ray.kill(ray.get_actor(*replicas[0]), no_restart=False)
        lost = _poll(http, running)
        assert lost["status"] == "failed" and lost["error"]["code"] == "job_lost", lost
        assert "submit the job again" in lost["error"]["message"]
