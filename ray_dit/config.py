"""Environment -> typed, validated settings.

The replica reads its configuration from the process environment, which Ray sets from
``runtime_env.env_vars``. Names and defaults of the ``SGLANG_*`` variables are exactly SGLang's,
so a deployment that worked with SGLang's diffusion server keeps working here. Parsing is strict:
every problem is collected and reported in one :class:`ConfigError` that names the variable, the
value it had and what is allowed, instead of SGLang's silent fallbacks.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

SCM_PRESETS = ("none", "slow", "medium", "fast", "ultra")
SCM_POLICIES = ("dynamic", "static")
TS_ORDERS = (1, 2)
TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")
BOOL_ALLOWED = "one of true/false/1/0/yes/no (any case)"

CACHE_PREFIX = "SGLANG_CACHE_DIT_"
SECONDARY_PREFIX = "SGLANG_CACHE_DIT_SECONDARY_"


class ConfigError(ValueError):
    """One or more settings are invalid; ``problems`` lists each as a sentence."""

    def __init__(self, problems: list[str], source: str = "environment") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid ray_dit configuration ({source}):\n{lines}")


# ---------------------------------------------------------------------------------------------
# Value parsers. Each returns the parsed value or raises ValueError(<what is allowed>); the caller
# adds the variable's name and the offending value.


def parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError(BOOL_ALLOWED)


def _parse_int(raw: Any, minimum: int) -> int:
    if isinstance(raw, bool | float):
        raise ValueError(f"an integer >= {minimum}")
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ValueError(f"an integer >= {minimum}") from None
    if value < minimum:
        raise ValueError(f"an integer >= {minimum}")
    return value


def int_between(lowest: int, highest: int, allowed: str) -> Callable[[Any], int]:
    """An integer in [lowest, highest]; ``allowed`` says what the ends mean, for the error."""

    def parse(raw: Any) -> int:
        try:
            value = _parse_int(raw, lowest)
        except ValueError:
            raise ValueError(allowed) from None
        if value > highest:
            raise ValueError(allowed)
        return value

    return parse


_parse_nice = int_between(0, 19, "an integer from 0 (normal priority) to 19 (lowest)")
_parse_png_level = int_between(0, 9, "an integer from 0 (no compression, fastest) to 9 (smallest)")


def int_at_least(minimum: int) -> Callable[[Any], int]:
    return lambda raw: _parse_int(raw, minimum)


def parse_positive_float(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError("a number > 0")
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ValueError("a number > 0") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError("a number > 0")
    return value


def parse_ts_order(raw: Any) -> int:
    try:
        value = _parse_int(raw, 1)
    except ValueError:
        value = -1
    if value not in TS_ORDERS:
        raise ValueError("1 or 2")
    return value


def one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        text = str(raw).strip().lower()
        if text not in choices:
            raise ValueError("one of " + "/".join(choices))
        return text

    return parse


def parse_bins(raw: Any) -> tuple[int, ...]:
    """Comma-separated positive ints (a list is accepted too, for request overrides)."""
    allowed = "comma-separated positive integers, e.g. 8,3,3,2,2"
    parts = list(raw) if isinstance(raw, list | tuple) else str(raw).split(",")
    values = []
    for part in parts:
        if isinstance(part, bool | float):
            raise ValueError(allowed)
        try:
            value = int(str(part).strip())
        except ValueError:
            raise ValueError(allowed) from None
        if value <= 0:
            raise ValueError(allowed)
        values.append(value)
    if not values:
        raise ValueError(allowed)
    return tuple(values)


# ---------------------------------------------------------------------------------------------
# Cache-DiT settings


@dataclass(frozen=True)
class DBCacheKnobs:
    """The knobs that exist once per transformer (the SECONDARY twins cover the second expert)."""

    fn: int = 1
    bn: int = 0
    warmup: int = 4
    rdt: float = 0.24
    mc: int = 3
    taylorseer: bool = False
    ts_order: int = 1


@dataclass(frozen=True)
class KnobSpec:
    """How one per-transformer knob is spelled in the environment and in request overrides."""

    attr: str
    env_suffix: str
    request_key: str
    parse: Callable[[Any], Any]
    allowed: str


KNOB_SPECS: tuple[KnobSpec, ...] = (
    KnobSpec("fn", "FN", "Fn_compute_blocks", int_at_least(0), "an integer >= 0"),
    KnobSpec("bn", "BN", "Bn_compute_blocks", int_at_least(0), "an integer >= 0"),
    KnobSpec("warmup", "WARMUP", "max_warmup_steps", int_at_least(0), "an integer >= 0"),
    KnobSpec("rdt", "RDT", "residual_diff_threshold", parse_positive_float, "a number > 0"),
    KnobSpec(
        "mc",
        "MC",
        "max_continuous_cached_steps",
        int_at_least(-1),
        "an integer >= -1 (-1 = unlimited)",
    ),
    KnobSpec("taylorseer", "TAYLORSEER", "enable_taylorseer", parse_bool, BOOL_ALLOWED),
    KnobSpec("ts_order", "TS_ORDER", "taylorseer_order", parse_ts_order, "1 or 2"),
)

# Request-override keys that apply to the whole request (not per expert).
SCM_REQUEST_KEYS = ("scm_preset", "scm_policy", "scm_compute_bins", "scm_cache_bins")
REQUEST_KEYS = tuple(s.request_key for s in KNOB_SPECS) + SCM_REQUEST_KEYS + ("secondary",)


@dataclass(frozen=True)
class CacheDitSettings:
    """Cache-DiT configuration for one request: primary knobs, second-expert knobs and SCM."""

    enabled: bool = False
    primary: DBCacheKnobs = field(default_factory=DBCacheKnobs)
    secondary: DBCacheKnobs = field(default_factory=DBCacheKnobs)
    scm_preset: str = "none"
    scm_policy: str = "dynamic"
    scm_compute_bins: tuple[int, ...] | None = None
    scm_cache_bins: tuple[int, ...] | None = None

    @property
    def scm_enabled(self) -> bool:
        return self.scm_compute_bins is not None or self.scm_preset != "none"

    def with_overrides(
        self, enable_cache_dit: bool | None, cache_dit_params: Mapping[str, Any] | None
    ) -> CacheDitSettings:
        """Apply a request's ``enable_cache_dit`` / ``cache_dit_params`` (SGLang's key names).

        Request values beat environment values; a secondary knob inherits the request's primary
        value unless the request sets it under ``secondary``. Raises ConfigError naming each bad key.
        """
        problems: list[str] = []
        enabled = self.enabled
        if enable_cache_dit is not None:
            try:
                enabled = parse_bool(enable_cache_dit)
            except ValueError as exc:
                problems.append(f"enable_cache_dit={enable_cache_dit!r}: must be {exc}")
        params = dict(cache_dit_params or {})
        if cache_dit_params is not None and not isinstance(cache_dit_params, Mapping):
            raise ConfigError(
                [f"cache_dit_params must be an object with keys from: {', '.join(REQUEST_KEYS)}"],
                source="request",
            )
        unknown = sorted(set(params) - set(REQUEST_KEYS))
        if unknown:
            problems.append(
                f"cache_dit_params has unknown keys {unknown}; allowed keys: {', '.join(REQUEST_KEYS)}"
            )
        primary_changes = _knob_changes(params, "cache_dit_params", problems)
        secondary_raw = params.get("secondary") or {}
        secondary_changes: dict[str, Any] = {}
        if not isinstance(secondary_raw, Mapping):
            problems.append("cache_dit_params.secondary must be an object")
        else:
            knob_keys = tuple(s.request_key for s in KNOB_SPECS)
            bad = sorted(set(secondary_raw) - set(knob_keys))
            if bad:
                problems.append(
                    f"cache_dit_params.secondary has unknown keys {bad}; allowed keys: {', '.join(knob_keys)}"
                )
            secondary_changes = _knob_changes(secondary_raw, "cache_dit_params.secondary", problems)
        scm = {
            "scm_preset": self.scm_preset,
            "scm_policy": self.scm_policy,
            "scm_compute_bins": self.scm_compute_bins,
            "scm_cache_bins": self.scm_cache_bins,
        }
        scm_parsers = {
            "scm_preset": (one_of(SCM_PRESETS), "one of " + "/".join(SCM_PRESETS)),
            "scm_policy": (one_of(SCM_POLICIES), "one of " + "/".join(SCM_POLICIES)),
            "scm_compute_bins": (parse_bins, "a list of positive integers"),
            "scm_cache_bins": (parse_bins, "a list of positive integers"),
        }
        for key, (parse, allowed) in scm_parsers.items():
            if key in params and params[key] is not None:
                try:
                    scm[key] = parse(params[key])
                except ValueError:
                    problems.append(f"cache_dit_params.{key}={params[key]!r}: must be {allowed}")
        if ("scm_compute_bins" in params) != ("scm_cache_bins" in params):
            problems.append("cache_dit_params.scm_compute_bins and scm_cache_bins must be given together")
        if problems:
            raise ConfigError(problems, source="request")
        primary = dataclasses.replace(self.primary, **primary_changes)
        # The secondary expert follows request-level primary values unless told otherwise.
        secondary = dataclasses.replace(self.secondary, **{**primary_changes, **secondary_changes})
        return CacheDitSettings(enabled=enabled, primary=primary, secondary=secondary, **scm)

    def describe(self) -> str:
        """A short, stable label in cache-dit's ``strify`` spirit, for logs and stats."""
        if not self.enabled:
            return "NONE"
        k = self.primary
        label = f"DBCache_F{k.fn}B{k.bn}_W{k.warmup}MC{k.mc}_R{k.rdt:g}"
        if k.taylorseer:
            label += f"_TS{k.ts_order}"
        if self.scm_compute_bins is not None:
            label += f"_SCM-custom-{self.scm_policy}"
        elif self.scm_preset != "none":
            label += f"_SCM-{self.scm_preset}-{self.scm_policy}"
        return label


def _knob_changes(params: Mapping[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for spec in KNOB_SPECS:
        if spec.request_key in params and params[spec.request_key] is not None:
            raw = params[spec.request_key]
            try:
                changes[spec.attr] = spec.parse(raw)
            except ValueError:
                problems.append(f"{where}.{spec.request_key}={raw!r}: must be {spec.allowed}")
    return changes


# ---------------------------------------------------------------------------------------------
# Storage settings


URL_MODES = ("presigned", "public")
ADDRESSING_STYLES = ("auto", "path", "virtual")


@dataclass(frozen=True)
class StorageSettings:
    """Where finished outputs go. Credentials are kept out of repr and never logged."""

    storage_type: str | None = None
    bucket: str | None = None
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    key_prefix: str = "ray-dit"
    url_mode: str = "presigned"
    presign_ttl_s: int = 3600
    addressing_style: str = "auto"
    spool_dir: str = "/tmp/ray_dit/spool"
    spool_max_bytes: int = 2 * 1024**3
    url_wait_s: float = 2.0
    # S3 client and upload loop (RAY_DIT_S3_*): explicit retries and timeouts, because botocore's
    # defaults (legacy retries, 60 s timeouts) are wrong for a background drain loop.
    max_attempts: int = 3
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    upload_concurrency: int = 4
    backoff_max_s: float = 30.0
    verify_etag: bool = True
    manifest_flush_s: float = 30.0
    # Niceness of the sink replica's process: its encoding and uploads yield the CPU to the
    # node's DiT replicas (whose host threads feed the GPU) whenever the two compete.
    sink_nice: int = 10
    # zlib level of PNG outputs. Encoding is on every response's path: level 1 stores a 1024x1024
    # photo-like image in 28% less time than PIL's default 6, for 9% more bytes
    # (benchmarks/sink_store.py).
    png_compress_level: int = 1

    @property
    def s3_enabled(self) -> bool:
        return self.storage_type == "s3"

    def __repr__(self) -> str:  # credentials are summarised, never shown
        shown = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("access_key_id", "secret_access_key")
        }
        creds = "static" if self.access_key_id else "default-chain"
        body = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"StorageSettings({body}, credentials={creds})"


# ---------------------------------------------------------------------------------------------
# Reading the environment


def _sensitive(name: str, raw: Any) -> bool:
    """Credentials, or an endpoint URL that embeds user:password@, are never echoed."""
    return "SECRET" in name or "ACCESS_KEY" in name or ("ENDPOINT" in name and "@" in str(raw))


@dataclass
class _EnvReader:
    """Reads variables, collecting every problem instead of stopping at the first."""

    env: Mapping[str, str]
    problems: list[str] = field(default_factory=list)

    def get(self, name: str, parse: Callable[[Any], T], default: T) -> T:
        raw = self.env.get(name)
        if raw is None or (isinstance(raw, str) and raw.strip() == ""):
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            shown = "<redacted>" if _sensitive(name, raw) else repr(raw)
            self.problems.append(f"{name}={shown}: must be {exc}")
            return default

    def has(self, name: str) -> bool:
        raw = self.env.get(name)
        return raw is not None and str(raw).strip() != ""


def _read_knobs(reader: _EnvReader, prefix: str, fallback: DBCacheKnobs) -> DBCacheKnobs:
    values = {}
    for spec in KNOB_SPECS:
        values[spec.attr] = reader.get(prefix + spec.env_suffix, spec.parse, getattr(fallback, spec.attr))
    return DBCacheKnobs(**values)


def _read_cache_dit(reader: _EnvReader) -> CacheDitSettings:
    enabled = reader.get(CACHE_PREFIX + "ENABLED", parse_bool, False)
    primary = _read_knobs(reader, CACHE_PREFIX, DBCacheKnobs())
    secondary = _read_knobs(reader, SECONDARY_PREFIX, primary)
    preset = reader.get(CACHE_PREFIX + "SCM_PRESET", one_of(SCM_PRESETS), "none")
    policy = reader.get(CACHE_PREFIX + "SCM_POLICY", one_of(SCM_POLICIES), "dynamic")
    compute_name, cache_name = CACHE_PREFIX + "SCM_COMPUTE_BINS", CACHE_PREFIX + "SCM_CACHE_BINS"
    compute_bins = reader.get(compute_name, parse_bins, None)
    cache_bins = reader.get(cache_name, parse_bins, None)
    if reader.has(compute_name) != reader.has(cache_name):
        reader.problems.append(f"{compute_name} and {cache_name} must be set together (or neither)")
    return CacheDitSettings(
        enabled=enabled,
        primary=primary,
        secondary=secondary,
        scm_preset=preset,
        scm_policy=policy,
        scm_compute_bins=compute_bins,
        scm_cache_bins=cache_bins,
    )


def _parse_endpoint(raw: Any) -> str:
    from urllib.parse import urlparse

    allowed = "an http:// or https:// URL with a host, e.g. http://minio:9000"
    text = str(raw).strip()
    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(allowed)
    if "@" in parsed.netloc:
        raise ValueError(allowed + ", without user:password@ (credentials go in SGLANG_S3_*_KEY*)")
    if parsed.query or parsed.fragment or parsed.params:
        raise ValueError(allowed + ", without ?query or #fragment")
    try:
        parsed.port  # noqa: B018  (raises on a non-numeric or out-of-range port)
    except ValueError:
        raise ValueError(allowed + ", with a numeric port 1-65535") from None
    return text.rstrip("/")


def _parse_region(raw: Any) -> str:
    import re

    text = str(raw).strip()
    if not re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", text):
        raise ValueError("a region name of letters, digits, '-' and '_', e.g. us-east-1")
    return text


def _parse_abs_path(raw: Any) -> str:
    import os.path

    text = str(raw).strip()
    if not os.path.isabs(text) or "\x00" in text:
        raise ValueError("an absolute directory path, e.g. /var/lib/ray_dit/spool")
    return os.path.normpath(text)


def _parse_bucket(raw: Any) -> str:
    import re

    text = str(raw).strip()
    if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", text):
        raise ValueError("a valid S3 bucket name (3-63 chars: lowercase letters, digits, '.', '-')")
    return text


def _parse_prefix(raw: Any) -> str:
    import re

    text = str(raw).strip().strip("/")
    if not re.fullmatch(r"[A-Za-z0-9._\-]+(/[A-Za-z0-9._\-]+)*", text) or ".." in text:
        raise ValueError("path segments of letters, digits, '.', '_' and '-' separated by '/'")
    return text


def _read_storage(reader: _EnvReader) -> StorageSettings:
    default = StorageSettings()
    storage_type = reader.get("SGLANG_CLOUD_STORAGE_TYPE", one_of(("s3",)), None)
    settings = StorageSettings(
        storage_type=storage_type,
        bucket=reader.get("SGLANG_S3_BUCKET_NAME", _parse_bucket, None),
        endpoint_url=reader.get("SGLANG_S3_ENDPOINT_URL", _parse_endpoint, None),
        region=reader.get("SGLANG_S3_REGION_NAME", _parse_region, default.region),
        access_key_id=reader.get("SGLANG_S3_ACCESS_KEY_ID", lambda r: str(r).strip(), None),
        secret_access_key=reader.get("SGLANG_S3_SECRET_ACCESS_KEY", lambda r: str(r), None),
        key_prefix=reader.get("RAY_DIT_S3_KEY_PREFIX", _parse_prefix, default.key_prefix),
        url_mode=reader.get("RAY_DIT_S3_URL_MODE", one_of(URL_MODES), default.url_mode),
        presign_ttl_s=reader.get("RAY_DIT_S3_PRESIGN_TTL_S", int_at_least(1), default.presign_ttl_s),
        addressing_style=reader.get(
            "RAY_DIT_S3_ADDRESSING_STYLE", one_of(ADDRESSING_STYLES), default.addressing_style
        ),
        spool_dir=reader.get("RAY_DIT_SPOOL_DIR", _parse_abs_path, default.spool_dir),
        spool_max_bytes=reader.get("RAY_DIT_SPOOL_MAX_BYTES", int_at_least(1), default.spool_max_bytes),
        url_wait_s=reader.get("RAY_DIT_S3_URL_WAIT_S", _parse_nonneg_float, default.url_wait_s),
        max_attempts=reader.get("RAY_DIT_S3_MAX_ATTEMPTS", int_at_least(1), default.max_attempts),
        connect_timeout_s=reader.get(
            "RAY_DIT_S3_CONNECT_TIMEOUT_S", parse_positive_float, default.connect_timeout_s
        ),
        read_timeout_s=reader.get("RAY_DIT_S3_READ_TIMEOUT_S", parse_positive_float, default.read_timeout_s),
        upload_concurrency=reader.get(
            "RAY_DIT_S3_UPLOAD_CONCURRENCY", int_at_least(1), default.upload_concurrency
        ),
        backoff_max_s=reader.get("RAY_DIT_S3_BACKOFF_MAX_S", parse_positive_float, default.backoff_max_s),
        verify_etag=reader.get("RAY_DIT_S3_VERIFY_ETAG", parse_bool, default.verify_etag),
        manifest_flush_s=reader.get(
            "RAY_DIT_MANIFEST_FLUSH_S", parse_positive_float, default.manifest_flush_s
        ),
        sink_nice=reader.get("RAY_DIT_SINK_NICE", _parse_nice, default.sink_nice),
        png_compress_level=reader.get(
            "RAY_DIT_PNG_COMPRESS_LEVEL", _parse_png_level, default.png_compress_level
        ),
    )
    if (
        settings.s3_enabled
        and not settings.bucket
        and "SGLANG_S3_BUCKET_NAME" not in " ".join(reader.problems)
    ):
        reader.problems.append(
            "SGLANG_S3_BUCKET_NAME is not set: it is required when SGLANG_CLOUD_STORAGE_TYPE=s3"
        )
    if bool(settings.access_key_id) != bool(settings.secret_access_key):
        reader.problems.append(
            "SGLANG_S3_ACCESS_KEY_ID and SGLANG_S3_SECRET_ACCESS_KEY must be set together "
            "(or neither, to use boto3's default credential chain)"
        )
    return settings


def _parse_nonneg_float(raw: Any) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ValueError("a number >= 0") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError("a number >= 0")
    return value


@dataclass(frozen=True)
class Settings:
    cache_dit: CacheDitSettings
    storage: StorageSettings


def cache_dit_from_env(env: Mapping[str, str] | None = None) -> CacheDitSettings:
    """Cache-DiT settings only (what the DiT replica and the CLI need)."""
    reader = _EnvReader(os.environ if env is None else env)
    settings = _read_cache_dit(reader)
    if reader.problems:
        raise ConfigError(reader.problems)
    return settings


def storage_from_env(env: Mapping[str, str] | None = None) -> StorageSettings:
    """Storage settings only (what the frame sink needs)."""
    reader = _EnvReader(os.environ if env is None else env)
    settings = _read_storage(reader)
    if reader.problems:
        raise ConfigError(reader.problems)
    return settings


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """All settings, with every problem across both groups reported in one error."""
    reader = _EnvReader(os.environ if env is None else env)
    settings = Settings(cache_dit=_read_cache_dit(reader), storage=_read_storage(reader))
    if reader.problems:
        raise ConfigError(reader.problems)
    return settings


# The seed table: variable -> default as written in SGLang's documentation ("" = not set).
SEED_DEFAULTS: dict[str, str] = {
    "SGLANG_CACHE_DIT_ENABLED": "false",
    "SGLANG_CACHE_DIT_FN": "1",
    "SGLANG_CACHE_DIT_BN": "0",
    "SGLANG_CACHE_DIT_WARMUP": "4",
    "SGLANG_CACHE_DIT_RDT": "0.24",
    "SGLANG_CACHE_DIT_MC": "3",
    "SGLANG_CACHE_DIT_TAYLORSEER": "false",
    "SGLANG_CACHE_DIT_TS_ORDER": "1",
    "SGLANG_CACHE_DIT_SCM_PRESET": "none",
    "SGLANG_CACHE_DIT_SCM_POLICY": "dynamic",
    "SGLANG_CACHE_DIT_SCM_COMPUTE_BINS": "",
    "SGLANG_CACHE_DIT_SCM_CACHE_BINS": "",
    "SGLANG_CLOUD_STORAGE_TYPE": "",
    "SGLANG_S3_BUCKET_NAME": "",
    "SGLANG_S3_ENDPOINT_URL": "",
    "SGLANG_S3_REGION_NAME": "us-east-1",
    "SGLANG_S3_ACCESS_KEY_ID": "",
    "SGLANG_S3_SECRET_ACCESS_KEY": "",
}
