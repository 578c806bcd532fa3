"""Cache-DiT settings: ``SGLANG_CACHE_DIT_*`` with SGLang's exact names and defaults.

Each knob exists once per transformer: ``SGLANG_CACHE_DIT_<KNOB>`` for the first (or only) expert,
``SGLANG_CACHE_DIT_SECONDARY_<KNOB>`` for Wan 2.2's second, which falls back to the first's value.
The SCM (steps-computation mask) settings apply to both experts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ray_dit.config.parsers import int_at_least, int_between, number_above, one_of, parse_bool
from ray_dit.config.reader import EnvReader, from_env, read_env

if TYPE_CHECKING:
    from ray_dit.config.overrides import CacheOverrides

CACHE_PREFIX = "SGLANG_CACHE_DIT_"
SECONDARY_PREFIX = "SGLANG_CACHE_DIT_SECONDARY_"
SCM_PRESETS = ("none", "slow", "medium", "fast", "ultra")
SCM_POLICIES = ("dynamic", "static")


def bins_parser(allowed: str) -> Callable[[Any], tuple[int, ...]]:
    """Positive ints, comma-separated or as a list (JSON request overrides send lists)."""

    def parse(raw: Any) -> tuple[int, ...]:
        parts = list(raw) if isinstance(raw, list | tuple) else str(raw).split(",")
        if not parts:
            raise ValueError(allowed)
        return tuple(int_at_least(1, allowed)(part) for part in parts)

    return parse


parse_bins = bins_parser("comma-separated positive integers, e.g. 8,3,3,2,2")
_MC_PARSER = int_at_least(-1, "an integer >= -1 (-1 = unlimited)")


@dataclass(frozen=True)
class DBCacheKnobs:
    """cache-dit's DBCache knobs for one transformer; every default is SGLang's."""

    fn: int = from_env("FN", int_at_least(1), 1, request_key="Fn_compute_blocks")
    """First N blocks always computed: their residual is what decides whether a step is cached, so
    cache-dit needs at least one. Fn + Bn must fit the model's blocks (checked by the engine)."""
    bn: int = from_env("BN", int_at_least(0), 0, request_key="Bn_compute_blocks")
    """Last N blocks always computed, correcting the cached approximation (0: pure reuse)."""
    warmup: int = from_env("WARMUP", int_at_least(0), 4, request_key="max_warmup_steps")
    """Steps always computed before caching may start: early steps change the image most. Any
    integer, as in SGLang: the engine bounds it by the request's steps, where it decides nothing more."""
    rdt: float = from_env("RDT", number_above(0), 0.24, request_key="residual_diff_threshold")
    """A step is cached when the first blocks' residual changed (relative L1) by less than this."""
    mc: int = from_env("MC", _MC_PARSER, 3, request_key="max_continuous_cached_steps")
    """At most this many cached steps in a row (-1 = unlimited), so error cannot pile up."""
    taylorseer: bool = from_env("TAYLORSEER", parse_bool, False, request_key="enable_taylorseer")
    """TaylorSeer calibrator: extrapolate the cached residual instead of reusing it as is."""
    ts_order: int = from_env("TS_ORDER", int_between(1, 2, "1 or 2"), 1, request_key="taylorseer_order")
    """TaylorSeer's order: 2 follows curves better but keeps one more residual per block."""


KNOB_FIELDS = {f.metadata["request_key"]: f for f in dataclasses.fields(DBCacheKnobs)}
"""Request key (SGLang's ``cache_dit_params`` names) -> the knob's field."""


def knob_variable(expert: int, name: str) -> str:
    """The variable behind knob ``name`` (a ``DBCacheKnobs`` field) of expert 0 or 1, for errors."""
    spec = next(f for f in KNOB_FIELDS.values() if f.name == name)
    return (CACHE_PREFIX if expert == 0 else SECONDARY_PREFIX) + spec.metadata["env"]


@dataclass(frozen=True)
class CacheDitSettings:
    """Cache-DiT configuration of one request: both experts' knobs and the SCM mask."""

    enabled: bool = from_env("ENABLED", parse_bool, False)
    """Cache-DiT on for every request (a request may turn it off or on); off like SGLang."""
    primary: DBCacheKnobs = field(default_factory=DBCacheKnobs)
    """Knobs of the first (or only) transformer."""
    secondary: DBCacheKnobs = field(default_factory=DBCacheKnobs)
    """Knobs of the second expert (Wan 2.2's low-noise transformer)."""
    scm_preset: str = from_env("SCM_PRESET", one_of(SCM_PRESETS), "none")
    """A cache-dit mask preset; the slower presets compute more steps. 'none': no mask."""
    scm_policy: str = from_env("SCM_POLICY", one_of(SCM_POLICIES), "dynamic")
    """dynamic: masked steps still pass the threshold and MC checks; static: always cached."""
    scm_compute_bins: tuple[int, ...] | None = from_env("SCM_COMPUTE_BINS", parse_bins, None)
    """Custom mask: lengths of the runs of computed steps (beats the preset; with cache bins)."""
    scm_cache_bins: tuple[int, ...] | None = from_env("SCM_CACHE_BINS", parse_bins, None)
    """Custom mask: lengths of the runs of cached steps, alternating with the compute bins."""

    @property
    def scm_enabled(self) -> bool:
        return self.scm_compute_bins is not None or self.scm_preset != "none"

    def with_overrides(self, overrides: CacheOverrides) -> CacheDitSettings:
        """A request's parsed overrides applied (cannot fail). The secondary expert follows the primary
        changes unless ``secondary`` sets the knob: one tuned threshold is meant for the whole request."""
        enabled = self.enabled if overrides.enable_cache_dit is None else overrides.enable_cache_dit
        secondary = {**overrides.primary, **overrides.secondary}
        return dataclasses.replace(
            self,
            enabled=enabled,
            primary=dataclasses.replace(self.primary, **overrides.primary),
            secondary=dataclasses.replace(self.secondary, **secondary),
            **overrides.scm,
        )

    def describe(self) -> str:
        """A short, stable label in cache-dit's ``strify`` spirit, for logs and stats."""
        if not self.enabled:
            return "NONE"
        knobs = self.primary
        label = f"DBCache_F{knobs.fn}B{knobs.bn}_W{knobs.warmup}MC{knobs.mc}_R{knobs.rdt:g}"
        if knobs.taylorseer:
            label += f"_TS{knobs.ts_order}"
        if self.scm_compute_bins is not None:
            label += f"_SCM-custom-{self.scm_policy}"
        elif self.scm_preset != "none":
            label += f"_SCM-{self.scm_preset}-{self.scm_policy}"
        return label


def read_cache_dit(reader: EnvReader) -> CacheDitSettings:
    """Both experts' knobs and the SCM settings; a secondary knob falls back to its primary."""
    top = reader.read(CacheDitSettings, CACHE_PREFIX)
    primary = reader.read(DBCacheKnobs, CACHE_PREFIX)
    secondary = reader.read(DBCacheKnobs, SECONDARY_PREFIX, fallback=primary)
    names = (CACHE_PREFIX + "SCM_COMPUTE_BINS", CACHE_PREFIX + "SCM_CACHE_BINS")
    reader.together(names, f"{names[0]} and {names[1]} must be set together (or neither)")
    return dataclasses.replace(top, primary=primary, secondary=secondary)


def cache_dit_from_env(env: Mapping[str, str] | None = None) -> CacheDitSettings:
    """Cache-DiT settings only (what the DiT replica and the CLI need)."""
    return read_env(read_cache_dit, env)
