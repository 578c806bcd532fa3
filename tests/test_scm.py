"""SCM masks: cache-dit's own where it has one, a documented extension where it refuses."""

from __future__ import annotations

import cache_dit
import pytest

from ray_dit.config import CacheDitSettings
from ray_dit.engine.scm import steps_mask

PRESETS = ("slow", "medium", "fast", "ultra")


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_equal_cache_dit_wherever_it_is_defined(preset):
    settings = CacheDitSettings(enabled=True, scm_preset=preset)
    for steps in range(8, 101):
        assert steps_mask(settings, steps) == cache_dit.steps_mask(total_steps=steps, mask_policy=preset), (
            steps
        )
    for steps in (4, 6):
        assert steps_mask(settings, steps) == cache_dit.steps_mask(total_steps=steps, mask_policy=preset)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 7])
def test_presets_below_eight_steps_where_cache_dit_asserts(preset, steps):
    with pytest.raises(AssertionError):
        cache_dit.steps_mask(total_steps=steps, mask_policy=preset)
    mask = steps_mask(CacheDitSettings(enabled=True, scm_preset=preset), steps)
    eight = cache_dit.steps_mask(total_steps=8, mask_policy=preset)
    assert len(mask) == steps
    assert mask[:-1] == eight[: steps - 1]
    assert mask[-1] == 1


def test_28_step_fast_mask_matches_the_published_table():
    mask = steps_mask(CacheDitSettings(enabled=True, scm_preset="fast"), 28)
    assert "".join(map(str, mask)) == "1111110100010000100000100001"


def test_custom_bins_that_cover_the_steps_equal_cache_dit():
    settings = CacheDitSettings(
        enabled=True, scm_compute_bins=(8, 3, 3, 2, 2), scm_cache_bins=(1, 2, 2, 2, 3)
    )
    for steps in range(1, 29):
        assert steps_mask(settings, steps) == cache_dit.steps_mask(
            [8, 3, 3, 2, 2], [1, 2, 2, 2, 3], total_steps=steps
        )


def test_custom_bins_are_extended_cyclically_beyond_their_sum():
    settings = CacheDitSettings(enabled=True, scm_compute_bins=(4, 2), scm_cache_bins=(1, 3))
    with pytest.raises(AssertionError):
        cache_dit.steps_mask([4, 2], [1, 3], total_steps=25)
    mask = steps_mask(settings, 25)
    assert mask == ([1, 1, 1, 1, 0, 1, 1, 0, 0, 0] * 3)[:25]


def test_scm_off_gives_no_mask_and_bad_steps_are_refused():
    assert steps_mask(CacheDitSettings(enabled=True), 28) is None
    with pytest.raises(ValueError, match="num_inference_steps=0"):
        steps_mask(CacheDitSettings(enabled=True, scm_preset="fast"), 0)


def _as_text(mask: list[int]) -> str:
    return "".join(map(str, mask))


@pytest.mark.parametrize(("compute", "cache"), [((8, 3, 3), (1, 2)), ((2,), (1, 3)), ((4, 2), (1, 3))])
def test_custom_bins_of_any_lengths_repeat_their_period(compute, cache):
    """The period is cache-dit's own mask of the bins (compute[0], cache[0], compute[1], ...; the
    longer list's extra bins in order); a longer request repeats it from its first step."""
    period = cache_dit.steps_mask(list(compute), list(cache))
    assert len(period) == sum(compute) + sum(cache)
    settings = CacheDitSettings(enabled=True, scm_compute_bins=compute, scm_cache_bins=cache)
    for steps in range(1, 61):
        assert steps_mask(settings, steps) == (period * 61)[:steps], steps


def test_the_issue_example_of_bins_of_different_lengths():
    settings = CacheDitSettings(enabled=True, scm_compute_bins=(8, 3, 3), scm_cache_bins=(1, 2))
    assert _as_text(steps_mask(settings, 17)) == "11111111011100111"  # cache-dit's own
    assert _as_text(steps_mask(settings, 18)) == "111111110111001111"


@pytest.mark.parametrize(
    ("compute", "cache"),
    [((2**40,), (1,)), ((10**30,), (1,)), ((1,), (10**30,)), ((3, 10**30), (2**40, 5))],
)
def test_huge_bins_are_cut_to_the_steps_before_cache_dit_sees_them(monkeypatch, compute, cache):
    """cache-dit builds a list as long as the bins' sum (MemoryError, OverflowError); steps beyond
    the request's change nothing, so each bin cut to the step count gives the same mask."""
    import ray_dit.engine.scm as scm

    seen: list[dict] = []

    def spy(**kwargs: object) -> list[int]:
        seen.append(kwargs)
        return list(cache_dit.steps_mask(**kwargs))

    monkeypatch.setattr(scm, "_cache_dit_steps_mask", spy)
    settings = CacheDitSettings(enabled=True, scm_compute_bins=compute, scm_cache_bins=cache)
    for steps in (1, 8, 28):
        cut = [min(b, steps) for b in compute], [min(b, steps) for b in cache]
        assert steps_mask(settings, steps) == cache_dit.steps_mask(*cut, total_steps=steps)
        given = seen[-1]
        assert sum(given["compute_bins"]) + sum(given["cache_bins"]) == steps
