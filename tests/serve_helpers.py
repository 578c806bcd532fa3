"""Helpers for the serve tests: free ports and the environment every Ray process here gets."""

from __future__ import annotations

import socket

RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    # Serve gives a new HTTP proxy 3 x 5 s to report ready, then kills it; a loaded 2-core CI
    # box can take longer to start one, which failed every Serve test of a run.
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def app_with_sink_env(
    model: str, sink_env: dict[str, str], max_queued_requests: int = 8, dit_class=None, device: str = "cpu"
):
    """The builder's graph, with storage settings given to the sink replica only (and, for
    benchmarks, another class in the DiT deployment)."""
    from ray_dit.serve.dit import DiTDeployment
    from ray_dit.serve.frame_sink import FrameSinkDeployment
    from ray_dit.serve.ingress import Ingress
    from ray_dit.serve.jobs import VideoJobs

    jobs = VideoJobs.bind()
    sink = FrameSinkDeployment.options(
        ray_actor_options={"num_cpus": 0.5, "num_gpus": 0, "runtime_env": {"env_vars": sink_env}}
    ).bind()
    options: dict = {"func_or_class": dit_class} if dit_class is not None else {}
    if device.startswith("cuda"):
        options["ray_actor_options"] = {"num_gpus": 1}
    dit = DiTDeployment.options(max_queued_requests=max_queued_requests, **options).bind(
        model, device, "auto", jobs, sink
    )
    return Ingress.bind(dit, sink, jobs, model)


def s3_env(endpoint: str, bucket: str, spool: str, **extra: str) -> dict[str, str]:
    """The sink's environment for a moto server (path-style addressing, the admin credentials)."""
    return {
        "SGLANG_CLOUD_STORAGE_TYPE": "s3",
        "SGLANG_S3_BUCKET_NAME": bucket,
        "SGLANG_S3_ENDPOINT_URL": endpoint,
        "SGLANG_S3_ACCESS_KEY_ID": "admin",
        "SGLANG_S3_SECRET_ACCESS_KEY": "admin",
        "RAY_DIT_S3_ADDRESSING_STYLE": "path",
        "RAY_DIT_SPOOL_DIR": spool,
        **extra,
    }
