"""Per-request cache-dit overrides: SGLang's ``enable_cache_dit`` and ``cache_dit_params``.

They are parsed once, where a request comes in, into a :class:`CacheOverrides`, so every problem
is found before work is queued and applying them (``CacheDitSettings.with_overrides``) cannot fail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ray_dit.config.cache_dit import KNOB_FIELDS, SCM_POLICIES, SCM_PRESETS, bins_parser
from ray_dit.config.parsers import one_of, parse_bool
from ray_dit.config.reader import parse_items
from ray_dit.errors import InvalidRequest

_REQUEST_BINS = bins_parser("a list of positive integers")
SCM_PARSERS = {
    "scm_preset": one_of(SCM_PRESETS),
    "scm_policy": one_of(SCM_POLICIES),
    "scm_compute_bins": _REQUEST_BINS,
    "scm_cache_bins": _REQUEST_BINS,
}
KNOB_KEYS = tuple(KNOB_FIELDS)
REQUEST_KEYS = (*KNOB_KEYS, *SCM_PARSERS, "secondary")
"""The keys ``cache_dit_params`` may have: SGLang's names."""


@dataclass(frozen=True)
class CacheOverrides:
    """A request's cache-dit changes, parsed and checked; the empty value changes nothing."""

    enable_cache_dit: bool | None = None
    """Caching on or off for this request; None keeps the environment's choice."""
    primary: Mapping[str, int | float | bool] = field(default_factory=dict)
    """Knob changes (``DBCacheKnobs`` field -> value); the second expert follows them too."""
    secondary: Mapping[str, int | float | bool] = field(default_factory=dict)
    """Knob changes for the second expert only; they beat ``primary`` there."""
    scm: Mapping[str, str | tuple[int, ...]] = field(default_factory=dict)
    """SCM changes (``CacheDitSettings`` field -> value); bins come in pairs."""

    def knob_key(self, expert: int, name: str) -> str | None:
        """How the request named knob ``name`` of expert 0 or 1 (for errors), None if it did not set it.

        The second expert takes ``secondary`` first, then the primary changes, as ``with_overrides``.
        """
        key = next(k for k, f in KNOB_FIELDS.items() if f.name == name)
        if expert == 1 and name in self.secondary:
            return f"cache_dit_params.secondary.{key}"
        return f"cache_dit_params.{key}" if name in self.primary else None


def parse_overrides(
    enable_cache_dit: bool | str | None, cache_dit_params: Mapping[str, Any] | None
) -> CacheOverrides:
    """Parse a request's overrides; InvalidRequest names every bad key, its value and what is allowed.

    ``param`` is ``enable_cache_dit`` when only that flag is wrong, else ``cache_dit_params``.
    """
    problems: list[str] = []
    flag = parse_items({"enable_cache_dit": enable_cache_dit}, {"enable_cache_dit": parse_bool}, "", problems)
    params = _checked_object(cache_dit_params, "cache_dit_params", REQUEST_KEYS, problems)
    secondary = _checked_object(params.get("secondary"), "cache_dit_params.secondary", KNOB_KEYS, problems)
    overrides = CacheOverrides(
        enable_cache_dit=flag.get("enable_cache_dit"),
        primary=_knob_changes(params, "cache_dit_params.", problems),
        secondary=_knob_changes(secondary, "cache_dit_params.secondary.", problems),
        scm=parse_items(params, SCM_PARSERS, "cache_dit_params.", problems),
    )
    if (params.get("scm_compute_bins") is None) != (params.get("scm_cache_bins") is None):
        problems.append("cache_dit_params.scm_compute_bins and scm_cache_bins must be given together")
    if problems:
        only_flag = all(p.startswith("enable_cache_dit") for p in problems)
        raise InvalidRequest("; ".join(problems), "enable_cache_dit" if only_flag else "cache_dit_params")
    return overrides


def _checked_object(raw: Any, where: str, keys: Sequence[str], problems: list[str]) -> Mapping[str, Any]:
    """``raw`` as a mapping (None = empty), with a problem for a non-object or unknown keys."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(f"{where} must be an object with keys from: {', '.join(keys)}")
        return {}
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        problems.append(f"{where} has unknown keys {unknown}; allowed keys: {', '.join(keys)}")
    return raw


def _knob_changes(params: Mapping[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    """Knob values by request key -> parsed values by ``DBCacheKnobs`` field name."""
    parsers = {key: f.metadata["parse"] for key, f in KNOB_FIELDS.items()}
    parsed = parse_items(params, parsers, where, problems)
    return {KNOB_FIELDS[key].name: value for key, value in parsed.items()}
