"""Settings of the HTTP edge: request limits, the API key and admission hints (``RAY_DIT_*``).

Limits may also come from the builder's ``args.limits`` (they win over the environment), so one
``serve_config.yaml`` states them next to the model. The API key only ever comes from the
environment: it must not sit in a config file or travel as a task argument.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from ray_dit.config.parsers import int_at_least, matching, number_above
from ray_dit.config.reader import as_secret, from_env, parse_items, read_env, secret_from_env
from ray_dit.errors import ConfigError

parse_base_url = matching(r"https?://.+", "an http:// or https:// URL", lambda text: text.rstrip("/"))


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for, so no client holds a GPU for long; over one is a 400 (413)."""

    max_pixels: int = from_env("RAY_DIT_MAX_PIXELS", int_at_least(1), 2048 * 2048)
    """Width x height per output: up to 2048x2048."""
    max_frames: int = from_env("RAY_DIT_MAX_FRAMES", int_at_least(1), 129)
    """Frames per video."""
    max_total_pixels: int = from_env("RAY_DIT_MAX_TOTAL_PIXELS", int_at_least(1), 1280 * 720 * 129)
    """Width x height x frames x n of one request: the per-field limits alone admit 2048x2048 x 129
    frames x 4 (6.5 GB of float32 frames, a dead replica). The default is a 129-frame 720p video."""
    max_steps: int = from_env("RAY_DIT_MAX_STEPS", int_at_least(1), 200)
    """``num_inference_steps``: far above any model's useful count, so only mistakes are refused."""
    max_n: int = from_env("RAY_DIT_MAX_N", int_at_least(1), 4)
    """Outputs per image request: ``n`` outputs hold one replica n times as long."""
    max_prompt_chars: int = from_env("RAY_DIT_MAX_PROMPT_CHARS", int_at_least(1), 4096)
    """Length of ``prompt`` and ``negative_prompt``: bounds the text a request has tokenized."""
    max_body_bytes: int = from_env("RAY_DIT_MAX_BODY_BYTES", int_at_least(1), 1024 * 1024)
    """Request body, refused with 413 as soon as it is over: bodies are JSON or small forms."""
    max_upload_bytes: int = from_env("RAY_DIT_MAX_UPLOAD_BYTES", int_at_least(1), 20 * 1024 * 1024)
    """A multipart body carrying an input image (image edits, image to video): a 2048x2048 PNG."""


@dataclass(frozen=True)
class ServerSettings:
    """Everything the ingress needs besides the model."""

    api_key: SecretStr | None = secret_from_env("RAY_DIT_API_KEY")  # noqa: RUF009 (a field())
    """When set, every route but /health needs ``Authorization: Bearer <key>``; unset = open."""
    url_signing_key: SecretStr | None = secret_from_env("RAY_DIT_URL_SIGNING_KEY")  # noqa: RUF009
    """Secret that signs the ``/content`` URLs the API hands out (with the API key set), so a
    browser can fetch them without the key; unset = derived from ``RAY_DIT_API_KEY``, so every
    replica with the same environment agrees (``serve/signing.py``)."""
    content_url_ttl_s: int = from_env("RAY_DIT_CONTENT_URL_TTL_S", int_at_least(1), 3600)
    """Lifetime of a signed ``/content`` URL: an hour, like ``RAY_DIT_S3_PRESIGN_TTL_S``'s default."""
    limits: ServeLimits = field(default_factory=ServeLimits)
    """Per-request limits: environment, then the builder's ``args.limits``."""
    max_queued_cost: float | None = from_env("RAY_DIT_MAX_QUEUED_COST", number_above(0), None)
    """Cost (in default requests: the model's default request is 1.0) one ingress replica may hold
    queued for the DiT before it answers 503 ``queue_full``; a request larger than this alone is
    still taken when nothing is queued. Unset: the app's ``max_queued_requests`` when the builder
    passes it, else no cost limit (Serve's request count still holds)."""
    retry_after_s: int = from_env("RAY_DIT_RETRY_AFTER_S", int_at_least(1), 2)
    """Base of ``Retry-After`` until a request was measured, and for 503s that are not a queue."""
    public_base_url: str | None = from_env("RAY_DIT_PUBLIC_BASE_URL", parse_base_url, None)
    """Base of the ``/content`` URLs the API returns; unset = the request's own (set it behind a proxy)."""
    job_stale_s: int = from_env("RAY_DIT_VIDEO_JOB_STALE_S", int_at_least(1), 120)
    """A running video job nobody reported on for this long (its ingress died) is failed."""

    def __post_init__(self) -> None:
        for name in ("api_key", "url_signing_key"):  # a plain str never stays bare
            object.__setattr__(self, name, as_secret(getattr(self, name)))

    @property
    def job_heartbeat_s(self) -> float:
        """How often the ingress owning a video job tells the job store it is alive."""
        return max(0.5, min(10.0, self.job_stale_s / 4))

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_key)


def limits_from_mapping(values: Mapping[str, Any] | None, base: ServeLimits | None = None) -> ServeLimits:
    """Apply ``args.limits`` from the builder; ConfigError names each bad or unknown key."""
    values = dict(values or {})
    known = [f.name for f in dataclasses.fields(ServeLimits)]
    problems = [
        f"limits.{key}: unknown limit; allowed: {', '.join(known)}"
        for key in sorted(set(values) - set(known))
    ]
    changes = parse_items(values, {key: int_at_least(1) for key in known}, "limits.", problems)
    if problems:
        raise ConfigError(problems, source="builder args")
    return dataclasses.replace(base or ServeLimits(), **changes)


def server_from_env(
    env: Mapping[str, str] | None = None, limit_overrides: Mapping[str, Any] | None = None
) -> ServerSettings:
    """Read the ``RAY_DIT_*`` edge settings, then apply the builder's limit overrides."""
    settings, limits = read_env(lambda reader: (reader.read(ServerSettings), reader.read(ServeLimits)), env)
    return dataclasses.replace(settings, limits=limits_from_mapping(limit_overrides, limits))
