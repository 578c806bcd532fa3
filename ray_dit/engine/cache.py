"""Cache-DiT on a diffusers pipeline, the way a server needs it.

cache-dit is mounted once, in transformer-only mode (its contexts persist across calls), and
*refreshed before every request* with that request's step count, SCM mask and CFG mode. Without
the refresh, transformer-only contexts leak one step of residual state into the next request and
count CFG branches by call parity from whatever the previous request left behind.

A request that turns caching off on a mounted pipeline is refreshed with ``max_cached_steps=0``:
every block then runs in its original order, so the output is identical to an uncached run.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ray_dit.api import CacheStats
from ray_dit.config import CacheDitSettings, DBCacheKnobs
from ray_dit.engine.cache_dit_compat import cached_block_lists, pipeline_adapter, replace_remembered_configs
from ray_dit.engine.scm import steps_mask

# cache-dit logs every mount and refresh at INFO; a server wants only its warnings.
os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "warning")


def _block_lists(transformer: torch.nn.Module) -> list[torch.nn.ModuleList]:
    return [
        module
        for name, module in transformer.named_children()
        if isinstance(module, torch.nn.ModuleList) and "block" in name
    ]


def metered_blocks(pipe: Any, transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """Every block of ``transformer`` that a request's skipped-block fraction is counted over: its
    block lists and the lists cache-dit caches (which may be fewer, as AuraFlow's, or named
    otherwise, as Lumina 2's ``layers``)."""
    lists = [*_block_lists(transformer), *(cached_block_lists(pipe, transformer) or [])]
    seen: dict[int, torch.nn.Module] = {}
    for blocks in lists:
        for block in blocks:
            seen.setdefault(id(block), block)
    return list(seen.values())


def fn_bn_limit(pipe: Any, transformer: torch.nn.Module) -> int:
    """The largest Fn + Bn cache-dit can honour: it applies Fn and Bn to each list of blocks it
    caches (FLUX's double and single blocks form one chain; Chroma's are two lists); 0 when no
    list is found (left to cache-dit)."""
    lists = cached_block_lists(pipe, transformer) or _block_lists(transformer)
    return min((len(blocks) for blocks in lists), default=0)


class _BlockMeter:
    """Counts the block calls of each transformer during a request (forward pre-hooks, mounted
    once): the skipped-block fraction is measured, not modelled from cache-dit's internals."""

    def __init__(self, pipe: Any, transformers: list[torch.nn.Module]) -> None:
        self.blocks = [metered_blocks(pipe, t) for t in transformers]
        self.calls = [0] * len(transformers)
        for index, blocks in enumerate(self.blocks):
            for block in blocks:
                block.register_forward_pre_hook(self._counter(index))

    def _counter(self, index: int) -> Callable[..., None]:
        def count(*_: Any) -> None:
            self.calls[index] += 1

        return count

    def reset(self) -> None:
        self.calls = [0] * len(self.calls)


KnobName = Callable[[int, str], str | None]
"""(expert 0 or 1, ``DBCacheKnobs`` field) -> the name its source gave it, None if it did not set it."""


@dataclass(frozen=True)
class RequestPlan:
    """How one request runs through the cache, decided before the pipeline is called."""

    settings: CacheDitSettings
    steps: int
    separate_cfg: bool
    expert_steps: tuple[int, ...]  # steps per transformer (one entry unless two experts)
    masks: tuple[list[int] | None, ...]


class CacheDitController:
    """Owns cache-dit's mount on one pipeline; one request at a time (the engine serialises)."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.transformers: list[torch.nn.Module] = [pipe.transformer]
        if getattr(pipe, "transformer_2", None) is not None:
            self.transformers.append(pipe.transformer_2)
        self.block_counts = tuple(fn_bn_limit(pipe, t) for t in self.transformers)
        #: cache-dit has an adapter for every transformer (by its class or the pipeline's).
        self.supported = all(cached_block_lists(pipe, t) is not None for t in self.transformers)
        self.mounted = False
        self._meter: _BlockMeter | None = None

    def support_problem(self, settings: CacheDitSettings, what: str) -> str | None:
        """The sentence refusing caching (named ``what``) for a model cache-dit has no adapter for."""
        if not settings.enabled or self.supported:
            return None
        import cache_dit

        names = f"{type(self.pipe).__name__} ({type(self.transformers[0]).__name__})"
        return (
            f"{what}: cache-dit {getattr(cache_dit, '__version__', '')} cannot accelerate {names}, "
            "it has no block adapter for it; this model is served uncached (leave caching off)"
        )

    def block_problems(self, settings: CacheDitSettings, name: KnobName) -> list[str]:
        """Fn + Bn beyond a transformer's blocks, one sentence per expert, naming what ``name`` names.

        cache-dit asserts Fn and Bn each fit only when a request runs (every later request then
        fails), and with Fn + Bn above the count it runs some blocks twice: wrong images, no error.
        A model whose block lists are not found (count 0) is left to cache-dit.
        """
        problems = []
        for index, blocks in enumerate(self.block_counts):
            knobs = settings.primary if index == 0 else settings.secondary
            named = [f"{name(index, k)}={getattr(knobs, k)}" for k in ("fn", "bn") if name(index, k)]
            if blocks and knobs.fn + knobs.bn > blocks and named:
                where = "transformer" if index == 0 else "transformer_2"
                problems.append(
                    f"{', '.join(named)}: first + last computed blocks (Fn + Bn = {knobs.fn} + {knobs.bn}) "
                    f"must be at most {blocks}, the blocks of each list cache-dit caches in this "
                    f"model's {where}"
                )
        return problems

    # -- planning -------------------------------------------------------------------------

    def plan(self, settings: CacheDitSettings, steps: int, separate_cfg: bool) -> RequestPlan:
        expert_steps = tuple(self._expert_steps(steps))
        masks = tuple(steps_mask(settings, n) if settings.enabled and n > 0 else None for n in expert_steps)
        return RequestPlan(settings, steps, separate_cfg, expert_steps, masks)

    def _expert_steps(self, steps: int) -> list[int]:
        """Split the steps between the high-noise and low-noise experts as the pipeline will."""
        if len(self.transformers) == 1:
            return [steps]
        boundary = getattr(self.pipe.config, "boundary_ratio", None)
        if boundary is None:
            return [steps, steps]
        scheduler = copy.deepcopy(self.pipe.scheduler)
        scheduler.set_timesteps(steps, device="cpu")
        threshold = boundary * scheduler.config.num_train_timesteps
        high = int((scheduler.timesteps >= threshold).sum().item())
        return [high, steps - high]

    # -- cache-dit calls ------------------------------------------------------------------

    def _configs(self, plan: RequestPlan, index: int) -> tuple[Any, Any]:
        from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig

        knobs: DBCacheKnobs = plan.settings.primary if index == 0 else plan.settings.secondary
        mask = plan.masks[index]
        enabled = plan.settings.enabled
        steps = max(plan.expert_steps[index], 1)
        # Step counts bounded by the steps cache-dit will see: beyond them they decide nothing, and
        # cache-dit lists the warmup steps on every step (3,000,000 took seconds, 10**30 overflowed).
        cache_config = DBCacheConfig(
            Fn_compute_blocks=knobs.fn,
            Bn_compute_blocks=knobs.bn,
            max_warmup_steps=min(knobs.warmup, steps),
            warmup_interval=1,
            residual_diff_threshold=knobs.rdt,
            max_continuous_cached_steps=min(knobs.mc, steps),  # -1 (unlimited) stays -1
            max_cached_steps=-1 if enabled else 0,
            enable_separate_cfg=plan.separate_cfg,
            num_inference_steps=steps,
            steps_computation_mask=mask if enabled else None,
            steps_computation_policy=plan.settings.scm_policy,
        )
        use_ts = enabled and knobs.taylorseer
        calibrator = TaylorSeerCalibratorConfig(
            enable_calibrator=use_ts,
            enable_encoder_calibrator=use_ts,
            taylorseer_order=knobs.ts_order,
        )
        return cache_config, calibrator

    def _mount(self, plan: RequestPlan) -> None:
        """One transformer is cached as itself; two experts (Wan 2.2) as one ``BlockAdapter``
        with a ``ParamsModifier`` per expert (primary and ``SECONDARY_*`` knobs)."""
        import cache_dit
        from cache_dit import BlockAdapter, ForwardPattern, ParamsModifier

        target: Any = pipeline_adapter(self.pipe, self.transformers[0]) or self.transformers[0]
        if len(self.transformers) > 1:
            target = BlockAdapter(
                transformer=self.transformers,
                blocks=[_block_lists(t)[0] for t in self.transformers],
                forward_pattern=[ForwardPattern.Pattern_2] * len(self.transformers),
                params_modifiers=[
                    ParamsModifier(cache_config=cache, calibrator_config=calibrator)
                    for cache, calibrator in (self._configs(plan, i) for i in range(len(self.transformers)))
                ],
                has_separate_cfg=True,
            )
        cache_config, calibrator = self._configs(plan, 0)
        cache_dit.enable_cache(target, cache_config=cache_config, calibrator_config=calibrator)
        self._meter = _BlockMeter(self.pipe, self.transformers)
        self.mounted = True

    def prepare(self, plan: RequestPlan) -> None:
        """Make cache-dit's state exactly right for this request (mount or refresh)."""
        import cache_dit

        if not self.mounted:
            if not plan.settings.enabled:
                return  # nothing mounted, nothing to do: the pipeline runs untouched
            self._mount(plan)
        if self._meter is not None:
            self._meter.reset()
        for index, transformer in enumerate(self.transformers):
            cache_config, calibrator = self._configs(plan, index)
            replace_remembered_configs(transformer, cache_config, calibrator)
            cache_dit.refresh_context(transformer, cache_config=cache_config, calibrator_config=calibrator)

    # -- statistics -----------------------------------------------------------------------

    def stats(self, plan: RequestPlan) -> CacheStats:
        if not (self.mounted and plan.settings.enabled):
            return CacheStats(enabled=False, config="NONE", total_steps=plan.steps, computed_steps=plan.steps)
        import cache_dit

        per_expert: list[CacheStats] = []
        for index, transformer in enumerate(self.transformers):
            raw = cache_dit.summary(transformer, logging=False)
            assert self._meter is not None  # mounted
            blocks, ran = len(self._meter.blocks[index]), self._meter.calls[index]
            per_expert.append(_expert_stats(raw, blocks, ran, plan.expert_steps[index], plan.separate_cfg))
        label = plan.settings.describe()
        for expert in per_expert:
            expert.config = label
        if len(per_expert) == 1:
            return per_expert[0]
        return _merge_experts(per_expert[0], per_expert[1])


def _merge_experts(high: CacheStats, low: CacheStats) -> CacheStats:
    """Whole-request stats for a two-expert model; the low-noise expert's own stay attached.

    The low-noise expert's steps follow the high-noise expert's, so its step indices are shifted
    to request-wide indices.
    """
    offset = high.total_steps

    def shifted(values: dict[int, float]) -> dict[int, float]:
        return {k + offset: v for k, v in values.items()}

    total = high.total_steps + low.total_steps
    weight_high = high.total_steps / total if total else 0.0
    return CacheStats(
        enabled=True,
        config=high.config,
        total_steps=total,
        computed_steps=high.computed_steps + low.computed_steps,
        cached_steps=high.cached_steps + low.cached_steps,
        cached_step_indices=high.cached_step_indices + [i + offset for i in low.cached_step_indices],
        cfg_cached_steps=high.cfg_cached_steps + low.cfg_cached_steps,
        cfg_cached_step_indices=high.cfg_cached_step_indices
        + [i + offset for i in low.cfg_cached_step_indices],
        residual_diffs={**high.residual_diffs, **shifted(low.residual_diffs)},
        cfg_residual_diffs={**high.cfg_residual_diffs, **shifted(low.cfg_residual_diffs)},
        skipped_block_fraction=weight_high * high.skipped_block_fraction
        + (1 - weight_high) * low.skipped_block_fraction,
        secondary=low,
    )


def _expert_stats(raw: Sequence[Any], blocks: int, ran: int, steps: int, separate_cfg: bool) -> CacheStats:
    """One transformer's stats: cache-dit's decisions, and the block calls counted while it ran
    (of ``blocks`` blocks per call, ``steps`` steps, one or two calls per step)."""
    cached: set[int] = set()
    cfg_cached: set[int] = set()
    diffs: dict[int, float] = {}
    cfg_diffs: dict[int, float] = {}
    for entry in raw:
        cached.update(int(s) for s in (entry.cached_steps or []))
        cfg_cached.update(int(s) for s in (entry.cfg_cached_steps or []))
        diffs.update({int(k): float(v) for k, v in (entry.residual_diffs or {}).items()})
        cfg_diffs.update({int(k): float(v) for k, v in (entry.cfg_residual_diffs or {}).items()})
    evaluated = steps * (2 if separate_cfg else 1) * blocks
    skipped = max(evaluated - ran, 0)
    return CacheStats(
        enabled=True,
        total_steps=steps,
        computed_steps=steps - len(cached),
        cached_steps=len(cached),
        cached_step_indices=sorted(cached),
        cfg_cached_steps=len(cfg_cached),
        cfg_cached_step_indices=sorted(cfg_cached),
        residual_diffs=dict(sorted(diffs.items())),
        cfg_residual_diffs=dict(sorted(cfg_diffs.items())),
        skipped_block_fraction=(skipped / evaluated) if evaluated else 0.0,
    )
