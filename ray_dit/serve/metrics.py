"""Prometheus metrics through ``ray.serve.metrics`` (exported by each node's metrics agent).

Serve adds the ``deployment``, ``replica`` and ``application`` tags itself. Each metric is
created on first use, once per process: it must be created inside the replica that records it,
not in the driver that imports this module.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

from ray.serve import metrics

from ray_dit.serve.autoscaling import QUEUED_COST, RUNNING_COST

M = TypeVar("M")

DENOISE_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300]
RATIO_BOUNDARIES = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0]


def _lazy(kind: Callable[..., M], name: str, description: str, **options: Any) -> Callable[[], M]:
    return cache(lambda: kind(name, description=description, **options))


requests_total = _lazy(
    metrics.Counter,
    "ray_dit_requests_total",
    "HTTP requests answered by the ingress, by endpoint and status code.",
    tag_keys=("endpoint", "status"),
)
rejected_total = _lazy(
    metrics.Counter,
    "ray_dit_rejected_requests_total",
    "Requests refused before any work: queue_full, spool_full, auth, limit, invalid.",
    tag_keys=("reason",),
)
cancelled_requests = _lazy(
    metrics.Counter,
    "ray_dit_cancelled_requests_total",
    "Denoises stopped early because their caller went away or the job was deleted.",
)
denoise_seconds = _lazy(
    metrics.Histogram,
    "ray_dit_denoise_seconds",
    "Time spent in the denoising loop per request (DiT replica).",
    boundaries=DENOISE_BOUNDARIES,
)
steps_cached_ratio = _lazy(
    metrics.Histogram,
    "ray_dit_steps_cached_ratio",
    "Fraction of denoising steps served from Cache-DiT per request.",
    boundaries=RATIO_BOUNDARIES,
)
batch_size = _lazy(
    metrics.Histogram,
    "ray_dit_batch_size",
    "Outputs in the pipeline call that denoised each request (1: alone; DiT replica).",
    boundaries=[1, 2, 4, 8, 16, 32, 64],
)
sink_queue_depth = _lazy(
    metrics.Gauge,
    "ray_dit_sink_queue_depth",
    "Outputs in this sink replica's spool that are not yet confirmed in storage.",
)
sink_spool_bytes = _lazy(
    metrics.Gauge, "ray_dit_sink_spool_bytes", "Bytes held in this sink replica's spool."
)
queued_cost = _lazy(
    metrics.Gauge,
    QUEUED_COST,
    "Cost this ingress replica admitted that no DiT replica accepted yet, in default requests "
    "(the model's default request is 1.0): what its queue limit counts and autoscaling reads.",
)
running_cost = _lazy(
    metrics.Gauge,
    RUNNING_COST,
    "Cost this ingress replica admitted that a DiT replica accepted and has not finished, in "
    "default requests.",
)


def report_cost(queued: float, running: float) -> None:
    """Set both cost gauges (the ingress's ledger calls this after every change)."""
    queued_cost().set(queued)
    running_cost().set(running)
