"""Every built-in model, parametrized over the registry (issue 16): each family's real pipeline,
transformer, VAE and text-encoder classes at tiny sizes, through ray_dit's Engine.

Per model: cache off (with cache-dit mounted) is bit-identical to the plain diffusers pipeline;
a threshold that caches skips exactly the blocks the stats say (counted with forward hooks); the
CFG branch count cache-dit is told equals the transformer calls per step, with CFG on and off;
and a cached request leaves no state behind (the next request equals a fresh engine's).
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import numpy as np
import pytest
import torch
from zoo_selection import first_of, rest_only, select

from ray_dit.api import GenerationRequest
from ray_dit.config import CacheDitSettings, cache_dit_from_env, parse_overrides
from ray_dit.engine import Engine, EngineOptions
from ray_dit.engine.cache import metered_blocks
from ray_dit.engine.engine import _to_uint8_frames
from ray_dit.engine.registry import ModelSpec, registered

pytestmark = pytest.mark.timeout(300)

SKIP = {"demo:flux-large"}  # a benchmark-sized FLUX: the same family as demo:flux-tiny
STEPS = 6
CACHING = {"residual_diff_threshold": 10.0, "max_warmup_steps": 2, "max_continuous_cached_steps": 2}
ENABLED = cache_dit_from_env({"SGLANG_CACHE_DIT_ENABLED": "true"})
EVERY = [spec for spec in registered() if spec.id not in SKIP]
#: ``make test`` runs the first model of each family and of each task; ``make test-zoo`` the
#: other variants (FLUX.1 tiny, Wan 2.2, FLUX.2 [dev], LTX and Wan image to video, Qwen-Image-Edit:
#: about 70 s, Qwen-Image-Edit alone 45 s, as it encodes a 1 MP input on every call). CI runs both.
FIRST = first_of(EVERY, key=lambda spec: spec.family) | first_of(EVERY, key=lambda spec: spec.task)
MODELS = select(EVERY, FIRST)


@functools.cache
def _spec(model: str) -> ModelSpec:
    return next(spec for spec in EVERY if spec.id == model)


def _engine(model: str, settings: CacheDitSettings = ENABLED) -> Engine:
    spec = _spec(model)
    return Engine(EngineOptions(model=model, device="cpu"), settings, spec.build(), spec.defaults)


def _input_image() -> bytes:
    import io

    from PIL import Image

    picture = Image.new("RGB", (64, 64), "navy")
    picture.paste((220, 30, 30), (16, 16, 48, 48))  # a red square on blue
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


INPUT_IMAGE = _input_image()


def _request(
    model: str, prompt: str = "a red circle on a blue background", seed: int = 3, **fields: Any
) -> GenerationRequest:
    """A request for ``model``: with an input image when the model is image-conditioned."""
    fields.setdefault("num_inference_steps", STEPS)
    if _spec(model).task in ("edit", "image-to-video"):
        fields.setdefault("image", INPUT_IMAGE)
    return GenerationRequest(prompt=prompt, seed=seed, **fields)


class _Counter:
    """Forward pre-hooks counting transformer calls and block calls (every block of the block
    lists, and of the lists cache-dit caches)."""

    def __init__(self, engine: Engine) -> None:
        pipe = engine.pipe
        self.transformers = [
            t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t is not None
        ]
        self.blocks = [b for t in self.transformers for b in metered_blocks(pipe, t)]
        self.calls = self.block_calls = 0

    def __enter__(self) -> _Counter:
        self._hooks = [t.register_forward_pre_hook(self._call) for t in self.transformers]
        self._hooks += [b.register_forward_pre_hook(self._block) for b in self.blocks]
        return self

    def _call(self, *_: Any) -> None:
        self.calls += 1

    def _block(self, *_: Any) -> None:
        self.block_calls += 1

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()


@pytest.mark.parametrize("model", [spec.id for spec in MODELS])
def test_cache_off_with_cache_dit_mounted_is_the_plain_pipeline(model: str) -> None:
    engine = _engine(model)
    engine.generate(_request(model, cache=parse_overrides(True, CACHING)))  # mounts cache-dit
    off = engine.generate(_request(model, cache=parse_overrides(False, None)))
    assert not off.cache.enabled
    plain = _spec(model).build()
    kwargs = engine._call_kwargs(engine.resolve(_request(model)))
    kwargs["generator"] = [torch.Generator().manual_seed(3 + i) for i in range(len(kwargs["generator"]))]
    with torch.inference_mode():
        expected = _to_uint8_frames(plain(**kwargs), engine.kind)
    assert off.frames.shape == expected.shape
    assert np.array_equal(off.frames, expected)
    assert off.frames.std() > 0  # not a blank output


@pytest.mark.parametrize("model", [spec.id for spec in MODELS])
def test_a_caching_threshold_skips_the_blocks_the_stats_report(model: str) -> None:
    engine = _engine(model)
    request = _request(model, cache=parse_overrides(True, CACHING))
    engine.generate(request)  # the first request of a CFG setting also probes it
    with _Counter(engine) as counted:
        result = engine.generate(request)
    stats = result.cache
    assert stats.enabled and stats.cached_steps > 0, stats
    per_step = engine.calls_per_step(request)
    total = STEPS * per_step * len(counted.blocks) // len(counted.transformers)
    assert counted.calls == STEPS * per_step
    assert stats.skipped_block_fraction == pytest.approx(1 - counted.block_calls / total)


def _cfg_cases(spec: ModelSpec) -> list[dict[str, Any]]:
    return [
        {"guidance_scale": 1.0},
        {"guidance_scale": 5.0},
        {"true_cfg_scale": 4.0, "negative_prompt": "blur"},
    ]


@pytest.mark.parametrize("model", [spec.id for spec in MODELS])
def test_cache_dit_is_told_the_cfg_branches_each_step_really_runs(model: str) -> None:
    engine = _engine(model)
    told: list[bool] = []
    plan = engine._cache.plan
    engine._cache.plan = lambda s, steps, separate: told.append(separate) or plan(s, steps, separate)
    for fields in _cfg_cases(_spec(model)):
        request = _request(model, cache=parse_overrides(True, CACHING), **fields)
        engine.generate(request)  # probes this CFG setting
        with _Counter(engine) as counted:
            engine.generate(request)
        assert counted.calls % STEPS == 0
        assert told[-1] == (counted.calls // STEPS > 1), (fields, counted.calls)


@pytest.mark.parametrize("model", [spec.id for spec in MODELS])
def test_a_cached_request_leaves_no_state_behind(model: str) -> None:
    used = _engine(model)
    used.generate(_request(model, cache=parse_overrides(True, CACHING), prompt="something else", seed=9))
    second = used.generate(_request(model, cache=parse_overrides(True, CACHING)))
    fresh = _engine(model).generate(_request(model, cache=parse_overrides(True, CACHING)))
    assert np.array_equal(second.frames, fresh.frames)
    assert second.cache.cached_step_indices == fresh.cache.cached_step_indices


@pytest.mark.skipif(rest_only(), reason="not a per-model test: make test runs it")
def test_secondary_settings_drive_the_second_expert_of_every_two_expert_model() -> None:
    from ray_dit.config import DBCacheKnobs

    settings = CacheDitSettings(
        enabled=True,
        primary=DBCacheKnobs(rdt=10.0, warmup=1, mc=3),
        secondary=DBCacheKnobs(rdt=10.0, warmup=2, mc=1),
    )
    two_expert = [spec for spec in EVERY if getattr(spec.build(), "transformer_2", None) is not None]
    assert two_expert, "no two-expert model registered"
    for spec in two_expert:
        stats = _engine(spec.id, settings).generate(_request(spec.id, num_inference_steps=12)).cache
        assert stats.secondary is not None, spec.id
        offset = stats.total_steps - stats.secondary.total_steps
        low = [i - offset for i in stats.cached_step_indices if i >= offset]
        high = [i for i in stats.cached_step_indices if i < offset]
        assert low and min(low) >= 2 and all(b - a >= 2 for a, b in itertools.pairwise(low)), (spec.id, low)
        assert high and min(high) >= 1, (spec.id, high)


def _warm_up_runs(model: str) -> None:
    """What a DiT replica runs before it reports ready: the model's defaults at 2 steps."""
    engine = _engine(model, CacheDitSettings())
    engine.generate(engine.resolved_defaults().replace(num_inference_steps=2, request_id="warm-up"))


@pytest.mark.parametrize("model", [spec.id for spec in MODELS if spec.task in ("edit", "image-to-video")])
def test_an_image_conditioned_model_runs_its_warm_up_without_a_request_image(model: str) -> None:
    """An image-conditioned pipeline whose signature calls ``image`` optional but that fails without
    one must say ``needs_image``: the replica's warm-up (and any request the engine lets through
    without an image) would fail with a traceback instead (demo:qwen-image-edit-tiny did)."""
    _warm_up_runs(model)
