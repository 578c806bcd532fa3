"""The CFG mode comes from what the pipeline does (ray_dit/engine/cfg_probe.py), not from its name:
the probe's count of transformer calls per step equals what a whole request makes, per CFG
setting, and it is what cache-dit is told."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ray_dit.api import GenerationRequest
from ray_dit.config import CacheDitSettings
from ray_dit.engine import Engine, EngineOptions
from ray_dit.engine.registry import lookup

STEPS = 4


def _engine(model: str) -> Engine:
    spec = lookup(model)
    assert spec is not None
    return Engine(EngineOptions(model=model, device="cpu"), CacheDitSettings(), spec.build(), spec.defaults)


def _transformer_calls(engine: Engine, request: GenerationRequest) -> int:
    calls = [0]

    def count(*_: Any) -> None:
        calls[0] += 1

    transformers = [t for t in (engine.pipe.transformer, getattr(engine.pipe, "transformer_2", None)) if t]
    hooks = [t.register_forward_pre_hook(count) for t in transformers]
    try:
        engine.generate(request)
    finally:
        for hook in hooks:
            hook.remove()
    return calls[0]


CASES = [
    # FLUX: guidance is an embedding (one call); true CFG needs a scale > 1 and a negative prompt.
    ("demo:flux-tiny", {}, 1),
    ("demo:flux-tiny", {"true_cfg_scale": 4.0}, 1),
    ("demo:flux-tiny", {"true_cfg_scale": 4.0, "negative_prompt": "blurry"}, 2),
    # Wan: guidance_scale > 1 (the pipeline's default is 5) runs the unconditional branch apart.
    ("demo:wan-tiny", {}, 2),
    ("demo:wan-tiny", {"guidance_scale": 1.0}, 1),
    ("demo:wan22-tiny", {"guidance_scale": 3.0}, 2),
    # HunyuanVideo 1.5 takes no guidance_scale argument: its guider component holds the scale,
    # and a request's scale reaches it (1 turns the second call off).
    ("demo:hunyuan-video15-tiny", {}, 2),
    ("demo:hunyuan-video15-tiny", {"guidance_scale": 1.0}, 1),
]


@pytest.mark.parametrize(("model", "fields", "expected"), CASES)
def test_the_probe_counts_what_a_request_runs(model: str, fields: dict[str, Any], expected: int) -> None:
    engine = _engine(model)
    request = GenerationRequest(prompt="a red circle", seed=0, num_inference_steps=STEPS, **fields)
    probed = engine.calls_per_step(request)
    assert probed == expected
    # A whole request makes exactly that many calls per step (the probe ran already: not counted).
    assert _transformer_calls(engine, request) == probed * STEPS


def test_cache_dit_is_told_the_measured_mode_and_each_setting_is_probed_once() -> None:
    from ray_dit.config import cache_dit_from_env, parse_overrides

    engine = _engine("demo:flux-tiny")
    engine.cache_settings = cache_dit_from_env({"SGLANG_CACHE_DIT_ENABLED": "true"})
    told = []
    plan = engine._cache.plan
    engine._cache.plan = lambda settings, steps, separate: (
        told.append(separate) or plan(settings, steps, separate)
    )
    cache = parse_overrides(True, {"residual_diff_threshold": 0.9})
    base = GenerationRequest(prompt="a red circle", seed=0, num_inference_steps=STEPS, cache=cache)
    engine.generate(base)
    engine.generate(base.replace(true_cfg_scale=4.0, negative_prompt="blurry"))
    engine.generate(base.replace(seed=1))
    assert told == [False, True, False]
    assert sorted(engine.cfg.known().values()) == [1, 2]  # two settings, one probe each


def test_no_probe_runs_while_caching_is_off() -> None:
    engine = _engine("demo:wan-tiny")
    with torch.inference_mode():
        engine.generate(GenerationRequest(prompt="x", seed=0, num_inference_steps=2))
    assert engine.cfg.known() == {}
