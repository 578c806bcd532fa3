"""The application builder: ``import_path: ray_dit.serve.app:build_app``.

``args`` (from ``serve_config.yaml`` or a notebook) are validated here, in the process that
builds the app, so a typo fails ``serve run``/``serve deploy`` with one clear message instead of
a replica that crash-loops. Environment settings (SGLANG_*, RAY_DIT_*) are read by the replicas
themselves, because ``runtime_env.env_vars`` is applied to them, not to the builder.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ray.serve import Application

from ray_dit.api import parse_size
from ray_dit.config import limits_from_mapping
from ray_dit.errors import ConfigError
from ray_dit.serve.dit import DiTDeployment
from ray_dit.serve.frame_sink import FrameSinkDeployment
from ray_dit.serve.ingress import Ingress
from ray_dit.serve.job_store import VideoJobs

DEVICES = "auto, cpu, cuda, cuda:N or mps"
DTYPES = ("auto", "float32", "bfloat16", "float16")


class AppArgs(BaseModel):
    """Builder arguments; unknown keys are an error (Serve would not tell you about a typo)."""

    model_config = ConfigDict(extra="forbid")

    model: str = "demo:shapes"
    #: A transformer checkpoint to use instead of the pipeline's own (a directory or hub id:
    #: quantized and fine-tuned transformers ship apart from their pipeline).
    transformer: str | None = None
    served_model_name: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    num_gpus: float = Field(0, ge=0)
    dit_num_cpus: float = Field(1, ge=0)
    dit_replicas: int = Field(1, ge=1)
    sink_replicas: int = Field(1, ge=1)
    ingress_replicas: int = Field(1, ge=1)
    #: Requests one DiT replica holds at once: denoising, or waiting to join a batch. Raised to
    #: ``max_batch_size`` when left out (a batch can not be larger than what the replica holds).
    max_ongoing_requests: int = Field(1, ge=1, le=64)
    max_queued_requests: int = Field(8, ge=1)
    #: Outputs one pipeline call may denoise together; requests that can share a call are grouped
    #: (``serve/batching.py``). 1 turns batching off. Named as Ray Serve's ``@serve.batch`` names it.
    max_batch_size: int = Field(1, ge=1, le=64)
    #: How long the first request of a batch may wait for company; 0 only batches what queued
    #: while the replica was busy, so a lone request never waits.
    batch_wait_timeout_s: float = Field(0.0, ge=0, le=10)
    #: Run one small generation at start-up (at the default size and each ``warmup_sizes`` entry)
    #: before the replica reports ready, so the first user request costs what the second does.
    warmup: bool = True
    warmup_sizes: list[str] = Field(default_factory=list)
    #: Regional ``torch.compile`` of the transformer's repeated blocks (``engine/compile.py``).
    compile: bool = False
    limits: dict[str, Any] = Field(default_factory=dict)
    #: Environment variables for the frame sink replicas only, on top of the app's runtime_env:
    #: storage credentials then reach only the processes that upload.
    sink_env_vars: dict[str, str] = Field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a diffusers pipeline (hub id or local path) or demo:<name>")
        return value.strip()

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        ok = (
            value in ("auto", "cpu", "mps")
            or value == "cuda"
            or (value.startswith("cuda:") and value[5:].isdigit())
        )
        if not ok:
            raise ValueError(f"must be one of {DEVICES}")
        return value

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        if value not in DTYPES:
            raise ValueError(f"must be one of {', '.join(DTYPES)}")
        return value

    @field_validator("limits")
    @classmethod
    def _limits(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            limits_from_mapping(value)
        except ConfigError as exc:
            raise ValueError("; ".join(exc.problems)) from None
        return value

    @field_validator("warmup_sizes")
    @classmethod
    def _warmup_sizes(cls, value: list[str]) -> list[str]:
        for size in value:
            parse_size(size)  # ValueError names the size and the form
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AppArgs:
        if self.device.startswith("cuda") and self.num_gpus == 0:
            raise ValueError(
                "device is cuda but num_gpus is 0: set num_gpus (e.g. 1) to give the replica a GPU"
            )
        if (
            "max_ongoing_requests" in self.model_fields_set
            and self.max_ongoing_requests < self.max_batch_size
        ):
            raise ValueError(
                f"max_ongoing_requests={self.max_ongoing_requests} is below max_batch_size="
                f"{self.max_batch_size}: a replica can not batch more requests than it holds"
            )
        return self

    @property
    def dit_ongoing_requests(self) -> int:
        if "max_ongoing_requests" in self.model_fields_set:
            return self.max_ongoing_requests
        return max(self.max_ongoing_requests, self.max_batch_size)


def parse_args(args: dict[str, Any] | None) -> AppArgs:
    """Validate builder args; ValueError lists every problem with its key."""
    try:
        return AppArgs.model_validate(dict(args or {}))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            msg = "unknown key" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
            msg = msg.removeprefix("Value error, ")
            problems.append(f"args.{where}: {msg}" if where else f"args: {msg}")
        raise ValueError("invalid ray_dit app args:\n  - " + "\n  - ".join(problems)) from None


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Ingress -> (DiT, FrameSink, VideoJobs), sized from ``args`` (Serve's builder: one parameter)."""
    return compose(parse_args(args))


def compose(
    cfg: AppArgs, *, dit_class: type | None = None, ingress_env: dict[str, str] | None = None
) -> Application:
    """The app for validated ``cfg``. ``dit_class`` replaces the DiT replica's class (a subclass of
    ``DiTDeployment``'s); it exists for benchmarks that stand in for an accelerator, and cannot
    come from a config file. ``ingress_env`` adds environment variables for the ingress replicas
    only (tests run an app with ``RAY_DIT_API_KEY`` on a shared cluster this way); a deployment
    sets them in its process or pod environment, never in a config file.
    """
    given = cfg.model_fields_set

    def replicas(name: str) -> dict[str, int]:
        # Only pin num_replicas when asked: a config may give the deployment autoscaling_config.
        return {"num_replicas": getattr(cfg, name)} if name in given else {}

    jobs = VideoJobs.bind()
    sink_options: dict[str, Any] = replicas("sink_replicas")
    if cfg.sink_env_vars:
        actor = dict(FrameSinkDeployment.ray_actor_options or {})
        sink_options["ray_actor_options"] = {**actor, "runtime_env": {"env_vars": dict(cfg.sink_env_vars)}}
    sink = FrameSinkDeployment.options(**sink_options).bind()
    dit = DiTDeployment.options(
        max_ongoing_requests=cfg.dit_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
        ray_actor_options={"num_cpus": cfg.dit_num_cpus, "num_gpus": cfg.num_gpus},
        **({"func_or_class": dit_class} if dit_class is not None else {}),
        **replicas("dit_replicas"),
    ).bind(
        cfg.model,
        cfg.device,
        cfg.dtype,
        jobs,
        sink,
        **({"transformer": cfg.transformer} if cfg.transformer else {}),
        **_replica_options(cfg),
    )
    # The DiT replica count sizes Retry-After; under autoscaling it is unknown, and 1 errs long.
    dit_replicas = cfg.dit_replicas if "dit_replicas" in given else 1
    ingress_options: dict[str, Any] = replicas("ingress_replicas")
    if ingress_env:
        actor = dict(Ingress.ray_actor_options or {})
        ingress_options["ray_actor_options"] = {**actor, "runtime_env": {"env_vars": dict(ingress_env)}}
    return Ingress.options(**ingress_options).bind(
        dit,
        sink,
        jobs,
        cfg.model,
        cfg.served_model_name,
        cfg.limits or None,
        dit_replicas,
        # The queue limit counts cost (docs/serving.md): max_queued_requests default requests.
        max_queued_cost=float(cfg.max_queued_requests),
    )


#: DiT replica arguments that come straight from the app args.
REPLICA_OPTIONS = ("max_batch_size", "batch_wait_timeout_s", "warmup", "warmup_sizes", "compile")


def _replica_options(cfg: AppArgs) -> dict[str, Any]:
    """Those of :data:`REPLICA_OPTIONS` that differ from their defaults (a replica class that
    stands in for the DiT in benchmarks need not take them)."""
    defaults = AppArgs()
    return {n: getattr(cfg, n) for n in REPLICA_OPTIONS if getattr(cfg, n) != getattr(defaults, n)}


__all__ = ["AppArgs", "build_app", "compose", "parse_args"]
