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

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_key)

    def __repr__(self) -> str:
        auth = "on" if self.auth_enabled else "off"
        return (
            f"ServerSettings(auth={auth}, limits={self.limits!r}, retry_after_s={self.retry_after_s}, "
            f"public_base_url={self.public_base_url!r})"
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


def server_from_env(
    env: Mapping[str, str] | None = None, limit_overrides: Mapping[str, Any] | None = None
) -> ServerSettings:
    """Read ``RAY_DIT_*`` edge settings, then apply the builder's limit overrides."""
    env = os.environ if env is None else env
    problems: list[str] = []
    limits: dict[str, int] = {}
    for attr, name in LIMIT_ENV.items():
        raw = _get(env, name)
        if raw is not None:
            try:
                limits[attr] = int_at_least(1)(raw)
            except ValueError as exc:
                problems.append(f"{name}={raw!r}: must be {exc}")
    retry_after = 2
    raw_retry = _get(env, "RAY_DIT_RETRY_AFTER_S")
    if raw_retry is not None:
        try:
            retry_after = int_at_least(1)(raw_retry)
        except ValueError as exc:
            problems.append(f"RAY_DIT_RETRY_AFTER_S={raw_retry!r}: must be {exc}")
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
        public_base_url=base_url.rstrip("/") if base_url else None,
    )
