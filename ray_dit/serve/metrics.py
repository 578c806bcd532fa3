"""Prometheus metrics through ``ray.serve.metrics`` (exported by each node's metrics agent).

Serve adds the ``deployment``, ``replica`` and ``application`` tags itself. Metric objects are
created lazily, once per process, because they must be created inside the replica that records
them, not in the driver that imports this module.
"""

from __future__ import annotations

from functools import cache

from ray.serve import metrics

DENOISE_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300]
RATIO_BOUNDARIES = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0]


@cache
def requests_total() -> metrics.Counter:
    return metrics.Counter(
        "ray_dit_requests_total",
        description="HTTP requests answered by the ingress, by endpoint and status code.",
        tag_keys=("endpoint", "status"),
    )


@cache
def rejected_total() -> metrics.Counter:
    return metrics.Counter(
        "ray_dit_rejected_requests_total",
        description="Requests refused before any work: queue_full, spool_full, auth, limit, invalid.",
        tag_keys=("reason",),
    )


@cache
def cancelled_requests() -> metrics.Counter:
    return metrics.Counter(
        "ray_dit_cancelled_requests_total",
        description="Denoises stopped early because their caller went away or the job was deleted.",
    )


@cache
def denoise_seconds() -> metrics.Histogram:
    return metrics.Histogram(
        "ray_dit_denoise_seconds",
        description="Time spent in the denoising loop per request (DiT replica).",
        boundaries=DENOISE_BOUNDARIES,
    )


@cache
def steps_cached_ratio() -> metrics.Histogram:
    return metrics.Histogram(
        "ray_dit_steps_cached_ratio",
        description="Fraction of denoising steps served from Cache-DiT per request.",
        boundaries=RATIO_BOUNDARIES,
    )


@cache
def sink_queue_depth() -> metrics.Gauge:
    return metrics.Gauge(
        "ray_dit_sink_queue_depth",
        description="Outputs in this sink replica's spool that are not yet confirmed in storage.",
    )


@cache
def sink_spool_bytes() -> metrics.Gauge:
    return metrics.Gauge(
        "ray_dit_sink_spool_bytes",
        description="Bytes held in this sink replica's spool.",
    )
