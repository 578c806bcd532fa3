"""The engine on real (tiny) diffusers pipelines with the real cache-dit library."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import torch

from ray_dit.api import GenerationRequest
from ray_dit.config import CacheDitSettings, ConfigError, DBCacheKnobs, cache_dit_from_env, parse_overrides
from ray_dit.engine import Engine, EngineOptions
from ray_dit.engine.cache_dit_compat import remembered_configs
from ray_dit.engine.registry import lookup
from ray_dit.errors import InvalidRequest, RequestCancelled

# Random weights move a lot between steps: a high threshold is what makes them cache at all.
CACHING = CacheDitSettings(enabled=True, primary=DBCacheKnobs(rdt=0.9, warmup=2))
CACHING_PARAMS = {"residual_diff_threshold": 0.9, "max_warmup_steps": 2}


def fresh_engine(model: str = "demo:flux-tiny", settings: CacheDitSettings | None = None) -> Engine:
    return Engine(EngineOptions(model=model, device="cpu"), cache_settings=settings or CacheDitSettings())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def flux() -> Engine:
    return fresh_engine()


def plain_diffusers_frames(model: str, **call: object) -> np.ndarray:
    """The same request through an untouched diffusers pipeline, converted like the engine does."""
    pipe = lookup(model).build()
    pipe.set_progress_bar_config(disable=True)
    seed = call.pop("seed")
    with torch.inference_mode():
        out = pipe(generator=[torch.Generator().manual_seed(seed)], output_type="np", **call)
    array = np.asarray(out.frames if hasattr(out, "frames") else out.images[:, None])
    return (np.clip(array, 0, 1) * 255).round().astype(np.uint8)


def test_caching_off_is_bit_identical_to_plain_diffusers(flux):
    result = flux.generate(GenerationRequest(prompt="a red circle", seed=7, width=128, height=64))
    expected = plain_diffusers_frames(
        "demo:flux-tiny",
        prompt="a red circle",
        seed=7,
        width=128,
        height=64,
        num_inference_steps=8,
        max_sequence_length=32,
    )
    assert result.frames.shape == (1, 1, 64, 128, 3)
    assert result.frames.dtype == np.uint8
    np.testing.assert_array_equal(result.frames, expected)
    assert result.cache.enabled is False and result.cache.cached_steps == 0


def test_video_caching_off_is_bit_identical_to_plain_diffusers():
    engine = fresh_engine("demo:wan-tiny")
    result = engine.generate(GenerationRequest(prompt="a cat", seed=3, num_frames=5))
    expected = plain_diffusers_frames(
        "demo:wan-tiny",
        prompt="a cat",
        seed=3,
        width=64,
        height=64,
        num_frames=5,
        num_inference_steps=8,
        max_sequence_length=32,
    )
    assert result.kind == "video" and result.frames.shape == (1, 5, 64, 64, 3)
    np.testing.assert_array_equal(result.frames, expected)


def test_same_seed_same_output_and_n_outputs_are_seeded_individually(flux):
    a = flux.generate(GenerationRequest(prompt="x", seed=11, n=2))
    b = flux.generate(GenerationRequest(prompt="x", seed=11, n=2))
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.frames.shape[0] == 2
    assert not np.array_equal(a.frames[0], a.frames[1])
    # Output i uses seed + i: the second of a pair is the single image of the next seed (up to
    # float rounding, since a batch of two runs different matmul shapes).
    single = flux.generate(GenerationRequest(prompt="x", seed=12))
    diff = np.abs(single.frames[0].astype(int) - a.frames[1].astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.01


def test_caching_skips_blocks_and_stays_close(flux):
    off = flux.generate(GenerationRequest(prompt="a red circle", seed=0))
    on = flux.generate(
        GenerationRequest(prompt="a red circle", seed=0, cache=parse_overrides(True, CACHING_PARAMS))
    )
    stats = on.cache
    assert stats.enabled and stats.cached_steps > 0
    assert stats.computed_steps + stats.cached_steps == 8
    assert 0 < stats.skipped_block_fraction < 1
    assert set(stats.cached_step_indices) <= set(range(2, 8))  # warmup 2 always computes
    assert not np.array_equal(on.frames, off.frames)
    assert psnr(on.frames, off.frames) > 25.0


def count_block_calls(engine: Engine) -> tuple[dict[str, int], list]:
    counts = {"calls": 0}
    handles = []
    for name, module in engine.pipe.transformer.named_children():
        if isinstance(module, torch.nn.ModuleList) and "block" in name:
            for block in module:

                def hook(*_: object) -> None:
                    counts["calls"] += 1

                handles.append(block.register_forward_pre_hook(hook))
    return counts, handles


def test_skipped_block_fraction_matches_blocks_actually_run():
    engine = fresh_engine(settings=CACHING)
    request = GenerationRequest(prompt="a red circle", seed=0)
    engine.generate(request)  # the first request of a CFG setting also probes it (one step)
    counts, handles = count_block_calls(engine)
    try:
        result = engine.generate(request)
    finally:
        for h in handles:
            h.remove()
    total = 8 * 4  # 8 steps x (2 double + 2 single FLUX blocks)
    measured = 1 - counts["calls"] / total
    assert result.cache.cached_steps > 0
    assert result.cache.skipped_block_fraction == pytest.approx(measured)


def request_sequence() -> list[GenerationRequest]:
    base = GenerationRequest(prompt="a red circle on blue", seed=5)
    return [
        base.replace(cache=parse_overrides(True, CACHING_PARAMS)),
        base.replace(width=64, height=96, num_inference_steps=5),
        base.replace(num_inference_steps=12, cache=parse_overrides(True, CACHING_PARAMS)),
        base.replace(
            negative_prompt="green",
            true_cfg_scale=4.0,
            cache=parse_overrides(True, CACHING_PARAMS),
        ),
        base.replace(negative_prompt="green", true_cfg_scale=4.0),
        base.replace(
            width=96,
            height=64,
            num_inference_steps=10,
            cache=parse_overrides(True, {**CACHING_PARAMS, "enable_taylorseer": True, "taylorseer_order": 2}),
        ),
        base.replace(
            num_inference_steps=9,
            cache=parse_overrides(True, {"scm_preset": "fast", "scm_policy": "static"}),
        ),
        base,
        base.replace(
            cache=parse_overrides(
                True, {**CACHING_PARAMS, "Fn_compute_blocks": 2, "max_continuous_cached_steps": 1}
            ),
        ),
    ]


def test_no_state_leaks_between_requests():
    """Each request on a long-lived engine equals the same request on a freshly built one."""
    long_lived = fresh_engine()
    for index, request in enumerate(request_sequence()):
        got = long_lived.generate(request)
        want = fresh_engine().generate(request)
        np.testing.assert_array_equal(got.frames, want.frames, err_msg=f"request #{index} leaked state")
        assert got.cache.cached_step_indices == want.cache.cached_step_indices, index
        assert got.cache.cfg_cached_step_indices == want.cache.cfg_cached_step_indices, index


def test_true_cfg_is_cached_per_branch(flux):
    result = flux.generate(
        GenerationRequest(
            prompt="a red circle",
            negative_prompt="blue",
            true_cfg_scale=4.0,
            seed=0,
            cache=parse_overrides(True, CACHING_PARAMS),
        )
    )
    stats = result.cache
    # Two transformer calls per step, counted as 8 steps with a CFG branch, not as 16 steps.
    assert stats.total_steps == 8
    assert stats.cached_steps > 0 and stats.cfg_cached_steps > 0
    assert max(stats.cached_step_indices) < 8 and max(stats.cfg_cached_step_indices) < 8


def test_taylorseer_orders_run_and_change_the_result(flux):
    # Order 2 needs three computed steps of history before it predicts differently from order 1.
    outs = {}
    for order in (1, 2):
        params = {**CACHING_PARAMS, "enable_taylorseer": True, "taylorseer_order": order}
        request = GenerationRequest(
            prompt="p", seed=1, num_inference_steps=12, cache=parse_overrides(True, params)
        )
        outs[order] = flux.generate(request)
        assert outs[order].cache.cached_steps > 0
    plain = flux.generate(
        GenerationRequest(
            prompt="p", seed=1, num_inference_steps=12, cache=parse_overrides(True, CACHING_PARAMS)
        )
    )
    assert not np.array_equal(outs[1].frames, plain.frames)
    assert not np.array_equal(outs[1].frames, outs[2].frames)


def test_same_decisions_and_output_as_cache_dit_alone():
    """ray_dit's integration adds nothing to cache-dit's own behaviour on the same settings."""
    import cache_dit
    from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig

    pipe = lookup("demo:flux-tiny").build()
    pipe.set_progress_bar_config(disable=True)
    mask = cache_dit.steps_mask(total_steps=12, mask_policy="fast")
    config = DBCacheConfig(
        Fn_compute_blocks=1,
        Bn_compute_blocks=0,
        max_warmup_steps=2,
        residual_diff_threshold=0.9,
        max_continuous_cached_steps=3,
        num_inference_steps=12,
        enable_separate_cfg=False,
        steps_computation_mask=mask,
        steps_computation_policy="dynamic",
    )
    cache_dit.enable_cache(
        pipe.transformer,
        cache_config=config,
        calibrator_config=TaylorSeerCalibratorConfig(taylorseer_order=1),
    )
    cache_dit.refresh_context(pipe.transformer, num_inference_steps=12)
    with torch.inference_mode():
        out = pipe(
            "a red circle",
            num_inference_steps=12,
            width=128,
            height=128,
            max_sequence_length=32,
            generator=[torch.Generator().manual_seed(4)],
            output_type="np",
        )
    reference = (np.clip(out.images[:, None], 0, 1) * 255).round().astype(np.uint8)
    reference_cached = sorted(
        int(s) for s in cache_dit.summary(pipe.transformer, logging=False)[0].cached_steps
    )

    params = {**CACHING_PARAMS, "enable_taylorseer": True, "scm_preset": "fast"}
    ours = fresh_engine().generate(
        GenerationRequest(
            prompt="a red circle",
            seed=4,
            num_inference_steps=12,
            cache=parse_overrides(True, params),
        )
    )
    assert ours.cache.cached_step_indices == reference_cached and reference_cached
    np.testing.assert_array_equal(ours.frames, reference)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 6, 7, 29, 50, 100])
@pytest.mark.parametrize("policy", ["static", "dynamic"])
def test_scm_requests_of_any_step_count_work(flux, steps, policy):
    request = GenerationRequest(
        prompt="p",
        seed=0,
        width=32,
        height=32,
        num_inference_steps=steps,
        cache=parse_overrides(True, {"scm_preset": "ultra", "scm_policy": policy}),
    )
    result = flux.generate(request)
    assert result.cache.total_steps == steps
    assert result.cache.computed_steps + result.cache.cached_steps == steps
    if policy == "static" and steps >= 8:
        assert result.cache.cached_steps > 0


def test_custom_bins_shorter_than_the_request_are_extended(flux):
    request = GenerationRequest(
        prompt="p",
        seed=0,
        width=32,
        height=32,
        num_inference_steps=30,
        cache=parse_overrides(
            True, {"scm_compute_bins": [2, 1], "scm_cache_bins": [1, 2], "scm_policy": "static"}
        ),
    )
    result = flux.generate(request)
    # warmup is cut to the mask's leading 1s; the cyclic mask 11 0 1 00 11 0 1 00 ... caches
    # every step where it has a 0.
    mask = ([1, 1, 0, 1, 0, 0] * 5)[:30]
    assert result.cache.cached_step_indices == [i for i, m in enumerate(mask) if m == 0]


def test_two_expert_model_uses_secondary_settings():
    settings = CacheDitSettings(
        enabled=True,
        primary=DBCacheKnobs(rdt=0.9, warmup=1, mc=3),
        secondary=DBCacheKnobs(rdt=0.9, warmup=2, mc=1),
    )
    engine = fresh_engine("demo:wan22-tiny", settings)
    result = engine.generate(GenerationRequest(prompt="a cat", seed=0, num_inference_steps=12))
    stats = result.cache
    assert stats.secondary is not None
    high_steps = stats.total_steps - stats.secondary.total_steps
    assert (high_steps, stats.secondary.total_steps) == (4, 8)  # boundary 0.875 at 12 steps
    # The low-noise expert: warmup 2, then at most 1 cached step in a row.
    low = stats.secondary.cached_step_indices
    assert low and min(low) >= 2 and all(b - a >= 2 for a, b in itertools.pairwise(low))
    # The high-noise expert follows the primary knobs: warmup 1, up to 3 in a row.
    high = [i for i in stats.cached_step_indices if i < high_steps]
    assert high == [1, 2, 3]


def test_bad_requests_name_the_field(flux):
    cases = [
        (GenerationRequest(prompt="p", width=100), "width=100"),
        (GenerationRequest(prompt="p", num_inference_steps=0), "num_inference_steps=0"),
        (GenerationRequest(prompt="p", n=0), "n=0"),
        (GenerationRequest(prompt="p", num_frames=9), "num_frames=9"),
    ]
    for request, fragment in cases:
        with pytest.raises(InvalidRequest, match=fragment) as err:
            flux.generate(request)
        assert err.value.param == ("size" if fragment.startswith("width") else fragment.split("=")[0])
    # Cache overrides are parsed where the request comes in, before any engine sees them.
    with pytest.raises(InvalidRequest, match="unknown keys") as err:
        parse_overrides(None, {"nope": 1})
    assert err.value.param == "cache_dit_params"


def test_cancel_stops_at_a_step_and_the_engine_stays_usable(flux):
    seen = []
    with pytest.raises(RequestCancelled):
        flux.generate(
            GenerationRequest(prompt="p", seed=0, cache=parse_overrides(True, CACHING_PARAMS)),
            on_step=lambda step, total: seen.append(step),
            should_cancel=lambda: len(seen) >= 3,
        )
    assert seen == [1, 2, 3]
    after = flux.generate(GenerationRequest(prompt="p", seed=0, cache=parse_overrides(True, CACHING_PARAMS)))
    again = fresh_engine().generate(
        GenerationRequest(prompt="p", seed=0, cache=parse_overrides(True, CACHING_PARAMS))
    )
    np.testing.assert_array_equal(after.frames, again.frames)


def test_concurrent_callers_are_serialised(flux):
    requests = [GenerationRequest(prompt=f"prompt {i}", seed=i, width=64, height=64) for i in range(4)]
    serial = [flux.generate(r).frames for r in requests]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = flux.generate(requests[i]).frames
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for i in range(4):
        np.testing.assert_array_equal(results[i], serial[i])


def test_loads_any_diffusers_pipeline_from_a_local_path(tmp_path):
    lookup("demo:flux-tiny").build().save_pretrained(tmp_path / "flux")
    engine = Engine(EngineOptions(model=str(tmp_path / "flux"), device="cpu"), cache_settings=CACHING)
    request = GenerationRequest(prompt="a red circle", seed=0, width=64, height=64, num_inference_steps=6)
    # A pipeline from disk has no demo defaults: the text length comes from the pipeline itself.
    result = engine.generate(request)
    assert result.frames.shape == (1, 1, 64, 64, 3)
    assert result.cache.cached_steps > 0


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown built-in model"):
        fresh_engine("demo:nope")
    with pytest.raises(ValueError, match="could not be loaded"):
        fresh_engine("/nonexistent/path/to/model")


def test_cache_dit_internals_are_where_compat_expects():
    """``engine/cache_dit_compat.py`` touches cache-dit's private state: fail loudly if it moved."""
    engine = fresh_engine(settings=CACHING)
    engine.generate(GenerationRequest(prompt="a red circle", num_inference_steps=4))
    remembered = remembered_configs(engine.pipe.transformer)
    assert remembered, "cache-dit no longer keeps per-context init kwargs where compat reads them"
    for kwargs in remembered:
        assert {"cache_config", "calibrator_config"} <= set(kwargs)


# -- values beyond the request: bounded, with the same decisions (issue 14, item 2) ----------

STATIC_BINS = {"scm_policy": "static", "max_continuous_cached_steps": -1}
BEYOND_THE_STEPS = [  # (what a client sent, the same with every step count cut to 8 steps)
    ({"max_warmup_steps": 3_000_000}, {"max_warmup_steps": 8}),
    ({"max_warmup_steps": 10**30}, {"max_warmup_steps": 8}),
    ({"scm_compute_bins": [2**40], "scm_cache_bins": [1]}, {"scm_compute_bins": [8], "scm_cache_bins": [1]}),
    ({"scm_compute_bins": [10**30], "scm_cache_bins": [1]}, {"scm_compute_bins": [8], "scm_cache_bins": [1]}),
    ({"scm_compute_bins": [2], "scm_cache_bins": [10**30]}, {"scm_compute_bins": [2], "scm_cache_bins": [6]}),
    ({"max_continuous_cached_steps": 10**30}, {"max_continuous_cached_steps": -1}),
]


def assert_cache_dit_sees_at_most(engine: Engine, steps: int) -> None:
    """What cache-dit was given for the last request: no step count or mask beyond ``steps``."""
    for kwargs in remembered_configs(engine.pipe.transformer):
        config = kwargs["cache_config"]
        assert config.num_inference_steps == steps
        assert config.max_warmup_steps <= steps and config.max_continuous_cached_steps <= steps
        assert config.steps_computation_mask is None or len(config.steps_computation_mask) == steps


@pytest.mark.parametrize(("sent", "cut"), BEYOND_THE_STEPS, ids=lambda p: str(p)[:40])
def test_request_step_counts_beyond_the_steps_decide_the_same_and_stay_bounded(flux, sent, cut):
    def run(params: dict) -> object:
        cache = parse_overrides(True, {**CACHING_PARAMS, **STATIC_BINS, **params})
        return flux.generate(GenerationRequest(prompt="p", seed=0, width=32, height=32, cache=cache))

    want = run(cut)
    got = run(sent)  # no MemoryError, OverflowError or stall: cut before cache-dit sees it
    assert_cache_dit_sees_at_most(flux, 8)
    assert got.cache.cached_step_indices == want.cache.cached_step_indices
    np.testing.assert_array_equal(got.frames, want.frames)


def test_environment_warmup_beyond_the_steps_is_bounded():
    base = {"SGLANG_CACHE_DIT_ENABLED": "true", "SGLANG_CACHE_DIT_RDT": "0.9"}
    huge = fresh_engine(settings=cache_dit_from_env({**base, "SGLANG_CACHE_DIT_WARMUP": "100000000"}))
    cut = fresh_engine(settings=cache_dit_from_env({**base, "SGLANG_CACHE_DIT_WARMUP": "8"}))
    request = GenerationRequest(prompt="a red circle", seed=0, width=32, height=32)
    got, want = huge.generate(request), cut.generate(request)
    assert_cache_dit_sees_at_most(huge, 8)
    assert got.cache.cached_step_indices == want.cache.cached_step_indices == []
    np.testing.assert_array_equal(got.frames, want.frames)


# -- Fn + Bn against the model's blocks (issue 14, item 3) -----------------------------------


@pytest.mark.parametrize(
    ("model", "env", "fragments"),
    [
        ("demo:shapes", {"SGLANG_CACHE_DIT_FN": "7"}, ["SGLANG_CACHE_DIT_FN=7", "at most 6"]),
        ("demo:shapes", {"SGLANG_CACHE_DIT_BN": "6"}, ["SGLANG_CACHE_DIT_BN=6", "at most 6"]),
        (
            "demo:flux-tiny",
            {"SGLANG_CACHE_DIT_FN": "3", "SGLANG_CACHE_DIT_BN": "2"},
            ["FN=3", "BN=2", "at most 4"],
        ),
        (
            "demo:wan22-tiny",
            {"SGLANG_CACHE_DIT_SECONDARY_BN": "2"},
            ["SGLANG_CACHE_DIT_SECONDARY_BN=2", "at most 2", "transformer_2"],
        ),
    ],
)
def test_fn_and_bn_beyond_the_blocks_refuse_the_start(model, env, fragments):
    """cache-dit would accept them at mount and fail every cached request (or, with Fn + Bn above
    the blocks, run some blocks twice): the engine refuses when the model is loaded."""
    with pytest.raises(ConfigError) as err:
        fresh_engine(model, cache_dit_from_env(env))
    assert len(err.value.problems) == 1
    for fragment in fragments:
        assert fragment in str(err.value)
    assert "Traceback" not in str(err.value)


def test_fn_and_bn_that_fill_the_blocks_run_every_block_once():
    # 1 + 5 = the 6 blocks of demo:shapes: allowed, and with warmup over every step exactly uncached.
    engine = fresh_engine("demo:shapes", cache_dit_from_env({"SGLANG_CACHE_DIT_BN": "5"}))
    request = GenerationRequest(prompt="a red circle", seed=0, num_inference_steps=4, width=32, height=32)
    cached = engine.generate(request.replace(cache=parse_overrides(True, {"max_warmup_steps": 4})))
    np.testing.assert_array_equal(cached.frames, engine.generate(request).frames)


@pytest.mark.parametrize(
    ("model", "params", "fragments"),
    [
        ("demo:flux-tiny", {"Fn_compute_blocks": 5}, ["cache_dit_params.Fn_compute_blocks=5", "at most 4"]),
        ("demo:flux-tiny", {"Fn_compute_blocks": 10**30}, ["Fn_compute_blocks=" + str(10**30), "at most 4"]),
        (
            "demo:flux-tiny",
            {"Fn_compute_blocks": 2, "Bn_compute_blocks": 3},
            ["Bn_compute_blocks=3", "at most 4"],
        ),
        (
            "demo:wan22-tiny",
            {"secondary": {"Bn_compute_blocks": 2}},
            ["cache_dit_params.secondary.Bn_compute_blocks=2", "at most 2", "transformer_2"],
        ),
    ],
)
@pytest.mark.parametrize("enabled", [True, False])
def test_request_fn_and_bn_beyond_the_blocks_are_the_clients_error(model, params, fragments, enabled):
    """Checked in ``resolve`` (which the DiT replica calls before queueing: a 400), even with
    caching off, since a mounted pipeline runs cache-dit's checks on every request."""
    engine = fresh_engine(model, CACHING)
    engine.generate(GenerationRequest(prompt="p", seed=0, num_inference_steps=4))  # mounted
    request = GenerationRequest(prompt="p", num_inference_steps=4, cache=parse_overrides(enabled, params))
    for call in (engine.resolve, engine.generate):
        with pytest.raises(InvalidRequest) as err:
            call(request)
        assert err.value.param == "cache_dit_params"
        for fragment in fragments:
            assert fragment in err.value.message
    fits = parse_overrides(enabled, {"Fn_compute_blocks": 1, "Bn_compute_blocks": 1})
    assert engine.generate(request.replace(cache=fits)).steps == 4


def test_frames_are_converted_in_place_without_float_copies():
    """A 129-frame 720p output is 1.4 GB of float32: the conversion to uint8 must add only the
    uint8 result (a quarter of it), not a float temporary per operation as before."""
    import tracemalloc
    from types import SimpleNamespace

    from ray_dit.engine.engine import _to_uint8_frames

    images = np.random.default_rng(0).random((2, 512, 512, 3), dtype=np.float32) * 1.2 - 0.1
    expected = (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)[:, None]
    output = SimpleNamespace(images=images.copy())
    tracemalloc.start()
    try:
        frames = _to_uint8_frames(output, "image")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(frames, expected)
    assert peak < images.nbytes / 2, f"{peak} bytes allocated for {images.nbytes} bytes of frames"
