"""Video job state, shared by every ingress replica.

A job is accepted by one ingress replica but may be polled through any other, so its state lives
in this small single-replica deployment (a named actor that Serve health-checks and removes with
the app), not in an ingress's memory. State is in memory: a restart of this replica forgets the
jobs (their outputs stay in the spool/S3 under their keys).

A running job is kept alive by its owner: the ingress that accepted it touches it every few
seconds while it waits, and the DiT replica reports progress. If neither is heard from for
``RAY_DIT_VIDEO_JOB_STALE_S`` (the ingress replica died, its node went away), the job is marked
failed with code ``job_lost`` so clients polling through another replica stop waiting for it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from ray import serve

from ray_dit.config import server_from_env

TERMINAL = ("completed", "failed")


@serve.deployment(
    name="VideoJobs",
    num_replicas=1,
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0, "num_gpus": 0},
)
class VideoJobs:
    """Jobs by id, oldest first; finished ones beyond ``max_jobs`` are forgotten."""

    def __init__(self, max_jobs: int = 10_000, stale_after_s: float | None = None) -> None:
        self.max_jobs = max_jobs
        self.stale_after_s = server_from_env().job_stale_s if stale_after_s is None else stale_after_s
        self._jobs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._last_heard: dict[str, float] = {}  # job id -> monotonic time its owner last spoke

    def create(self, job: dict[str, Any]) -> dict[str, Any]:
        job = dict(job)
        job.setdefault("status", "queued")
        job.setdefault("progress", 0)
        job.setdefault("created_at", int(time.time()))
        self._jobs[job["id"]] = job
        self._last_heard[job["id"]] = time.monotonic()
        self._evict()
        return dict(job)

    def touch(self, job_id: str) -> bool:
        """The owner is alive; False if the job is gone or over (stop waiting for it)."""
        job = self._jobs.get(job_id)
        if job is None or job["status"] in TERMINAL:
            return False
        self._last_heard[job_id] = time.monotonic()
        return True

    def _expire(self) -> None:
        """Fail running jobs nobody has heard of for ``stale_after_s``."""
        now = time.monotonic()
        for job_id, heard in list(self._last_heard.items()):
            job = self._jobs.get(job_id)
            if job is None or job["status"] in TERMINAL:
                del self._last_heard[job_id]
            elif now - heard > self.stale_after_s:
                del self._last_heard[job_id]
                job.update(
                    status="failed",
                    completed_at=int(time.time()),
                    error={
                        "code": "job_lost",
                        "message": f"the server running this job stopped reporting for "
                        f"{self.stale_after_s:g} s (it was restarted or its node went away); "
                        "submit the job again",
                    },
                )

    def _evict(self) -> None:
        if len(self._jobs) <= self.max_jobs:
            return
        for job_id in [j for j, v in self._jobs.items() if v["status"] in TERMINAL]:
            if len(self._jobs) <= self.max_jobs:
                break
            del self._jobs[job_id]

    def progress(self, job_id: str, percent: int) -> bool:
        """Record progress; False tells the DiT replica the job is gone (stop denoising)."""
        job = self._jobs.get(job_id)
        if job is None:
            return False
        if job["status"] in TERMINAL:
            return True
        self._last_heard[job_id] = time.monotonic()
        job["status"] = "in_progress"
        job["progress"] = max(int(job.get("progress", 0)), max(0, min(99, int(percent))))
        return True

    def finish(self, job_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        """Mark completed or failed (``fields`` has ``status``); None if the job was deleted."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        self._last_heard.pop(job_id, None)
        job.update(fields)
        job.setdefault("completed_at", int(time.time()))
        if job["status"] == "completed":
            job["progress"] = 100
            job.pop("error", None)  # it finished after all, after being given up as lost
        return dict(job)

    def get(self, job_id: str) -> dict[str, Any] | None:
        self._expire()
        job = self._jobs.get(job_id)
        return None if job is None else dict(job)

    def delete(self, job_id: str) -> dict[str, Any] | None:
        """Forget a job; a running one is cancelled at its next progress report."""
        self._last_heard.pop(job_id, None)
        return self._jobs.pop(job_id, None)

    def list(
        self, limit: int = 20, after: str | None = None, order: str = "desc"
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page of at most ``limit`` jobs after ``after``, and whether more follow it."""
        self._expire()
        jobs = list(self._jobs.values())
        if order == "desc":
            jobs.reverse()
        if after is not None:
            ids = [job["id"] for job in jobs]
            jobs = jobs[ids.index(after) + 1 :] if after in ids else []
        return [dict(job) for job in jobs[:limit]], len(jobs) > limit
