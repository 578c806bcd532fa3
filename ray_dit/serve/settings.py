"""Settings of the HTTP edge: request limits, the API key and admission hints.

They follow the project's rules for configuration (``ray_dit.config``): ``RAY_DIT_*`` names,
strict parsing, every problem reported at once in a :class:`ConfigError`. Limits can also come
from the builder's ``args.limits`` (they win over the environment) so that one
``serve_config.yaml`` states them next to the model. The API key only ever comes from the
environment: it must not sit in a config file or travel as a task argument.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ray_dit.config import ConfigError, int_at_least


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for. Over a limit is a 400 (413 for the body) naming it."""

    max_pixels: int = 2048 * 2048
    max_frames: int = 129
    max_steps: int = 200
    max_n: int = 4
    max_prompt_chars: int = 4096
    max_body_bytes: int = 1024 * 1024


LIMIT_ENV: dict[str, str] = {
    "max_pixels": "RAY_DIT_MAX_PIXELS",
    "max_frames": "RAY_DIT_MAX_FRAMES",
    "max_steps": "RAY_DIT_MAX_STEPS",
    "max_n": "RAY_DIT_MAX_N",
    "max_prompt_chars": "RAY_DIT_MAX_PROMPT_CHARS",
    "max_body_bytes": "RAY_DIT_MAX_BODY_BYTES",
}


@dataclass(frozen=True)
class ServerSettings:
    """Everything the ingress needs besides the model. The key is never shown in repr."""

    api_key: str | None = field(default=None, repr=False)
    limits: ServeLimits = field(default_factory=ServeLimits)
    retry_after_s: int = 2
    public_base_url: str | None = None
    job_stale_s: int = 120  # a running video job nobody reported on for this long is failed

    @property
    def job_heartbeat_s(self) -> float:
        """How often the ingress owning a video job tells the job store it is alive."""
        return max(0.5, min(10.0, self.job_stale_s / 4))

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_key)

    def __repr__(self) -> str:
        auth = "on" if self.auth_enabled else "off"
        return (
            f"ServerSettings(auth={auth}, limits={self.limits!r}, retry_after_s={self.retry_after_s}, "
            f"public_base_url={self.public_base_url!r}, job_stale_s={self.job_stale_s})"
        )


def limits_from_mapping(values: Mapping[str, Any] | None, base: ServeLimits | None = None) -> ServeLimits:
    """Apply ``args.limits`` from the builder; ConfigError names each bad or unknown key."""
    base = base or ServeLimits()
    values = dict(values or {})
    problems: list[str] = []
    known = [f.name for f in dataclasses.fields(ServeLimits)]
    for key in sorted(set(values) - set(known)):
        problems.append(f"limits.{key}: unknown limit; allowed: {', '.join(known)}")
    changes: dict[str, int] = {}
    for key in known:
        if key in values and values[key] is not None:
            try:
                changes[key] = int_at_least(1)(values[key])
            except ValueError as exc:
                problems.append(f"limits.{key}={values[key]!r}: must be {exc}")
    if problems:
        raise ConfigError(problems, source="builder args")
    return dataclasses.replace(base, **changes)


def _get(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    if raw is None or str(raw).strip() == "":
        return None
    return str(raw)


def _int_setting(env: Mapping[str, str], name: str, default: int, problems: list[str]) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        return int_at_least(1)(raw)
    except ValueError as exc:
        problems.append(f"{name}={raw!r}: must be {exc}")
        return default


def server_from_env(
    env: Mapping[str, str] | None = None, limit_overrides: Mapping[str, Any] | None = None
) -> ServerSettings:
    """Read ``RAY_DIT_*`` edge settings, then apply the builder's limit overrides."""
    env = os.environ if env is None else env
    problems: list[str] = []
    limits = {
        attr: _int_setting(env, name, getattr(ServeLimits, attr), problems)
        for attr, name in LIMIT_ENV.items()
    }
    retry_after = _int_setting(env, "RAY_DIT_RETRY_AFTER_S", ServerSettings.retry_after_s, problems)
    job_stale = _int_setting(env, "RAY_DIT_VIDEO_JOB_STALE_S", ServerSettings.job_stale_s, problems)
    base_url = _get(env, "RAY_DIT_PUBLIC_BASE_URL")
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        problems.append(f"RAY_DIT_PUBLIC_BASE_URL={base_url!r}: must be an http:// or https:// URL")
    api_key = _get(env, "RAY_DIT_API_KEY")
    if problems:
        raise ConfigError(problems)
    merged = limits_from_mapping(limit_overrides, dataclasses.replace(ServeLimits(), **limits))
    return ServerSettings(
        api_key=api_key.strip() if api_key else None,
        limits=merged,
        retry_after_s=retry_after,
        job_stale_s=job_stale,
        public_base_url=base_url.rstrip("/") if base_url else None,
    )
