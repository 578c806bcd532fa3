"""Environment -> typed, validated settings: the one settings layer of ray_dit.

Ray sets the environment from ``runtime_env.env_vars``. ``SGLANG_*`` names and defaults are
exactly SGLang's, so a deployment that worked with SGLang's diffusion server works here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ray_dit.config.cache_dit import CacheDitSettings, DBCacheKnobs, cache_dit_from_env, read_cache_dit
from ray_dit.config.overrides import CacheOverrides, parse_overrides
from ray_dit.config.reader import read_env
from ray_dit.config.seed import SEED_DEFAULTS
from ray_dit.config.server import ServeLimits, ServerSettings, limits_from_mapping, server_from_env
from ray_dit.config.storage import StorageSettings, read_storage, storage_from_env
from ray_dit.errors import ConfigError

# fmt: off
__all__ = [
    "SEED_DEFAULTS", "CacheDitSettings", "CacheOverrides", "ConfigError", "DBCacheKnobs",
    "ServeLimits", "ServerSettings", "Settings", "StorageSettings", "cache_dit_from_env",
    "limits_from_mapping", "load_settings", "parse_overrides", "server_from_env", "storage_from_env",
]
# fmt: on


@dataclass(frozen=True)
class Settings:
    """The settings read from SGLang's variables: cache-dit and storage."""

    cache_dit: CacheDitSettings
    storage: StorageSettings


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Both groups, with every problem across them reported in one error."""
    return read_env(lambda reader: Settings(read_cache_dit(reader), read_storage(reader)), env)
