"""Readiness: ``/health`` is 200 only while every deployment of this app runs.

A replica that failed to start (a missing bucket, a bad ``SGLANG_*`` value) leaves its deployment
``DEPLOY_FAILED`` with a clear message, while the ingress itself runs: without this check
``/health`` would say ok and every generation would be a 503 with no reason. Serve's controller
is asked in a worker thread (its client blocks), at most every ``max_age_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray import serve

logger = logging.getLogger("ray.serve")
HEALTHY = "HEALTHY"


class Readiness:
    """The deployments of this app that are not running, with Serve's reason for each."""

    def __init__(self, max_age_s: float = 1.0) -> None:
        self.max_age_s = max_age_s
        self._checked_at = float("-inf")
        self._problems: dict[str, dict[str, str]] = {}
        self._lock = asyncio.Lock()

    async def problems(self) -> dict[str, dict[str, str]]:
        async with self._lock:  # concurrent probes share one question to the controller
            if time.monotonic() - self._checked_at > self.max_age_s:
                self._problems = await asyncio.to_thread(_problems_now)
                self._checked_at = time.monotonic()
            return self._problems


def _problems_now() -> dict[str, dict[str, str]]:
    try:
        app_name = serve.get_replica_context().app_name
        app = serve.status().applications[app_name]
    except Exception as exc:  # the controller is away: that is a problem too
        logger.warning("readiness: no status from Serve's controller: %s", type(exc).__name__)
        return {"serve": {"status": "UNKNOWN", "message": f"no status from Serve ({type(exc).__name__})"}}
    return {
        name: {"status": str(_value(deployment.status)), "message": deployment.message}
        for name, deployment in app.deployments.items()
        if str(_value(deployment.status)) != HEALTHY
    }


def _value(status: Any) -> Any:
    return getattr(status, "value", status)
