"""Steps-computation masks (SCM) for any step count.

cache-dit's ``steps_mask`` is the reference: wherever it returns a mask, ray_dit uses exactly that
mask. It refuses two cases that a server meets every day, and ray_dit answers them instead of
failing the request:

* **Custom bins that do not cover the request's steps** (bins written for 28 steps, a 50-step
  request): the (compute, cache) bin sequences are repeated cyclically until they cover the steps.
* **Presets below 8 steps other than 4 and 6**: the preset's 8-step mask is truncated to the step
  count and its last step forced to compute, as cache-dit's presets always do.
"""

from __future__ import annotations

from ray_dit.config import CacheDitSettings


def _cache_dit_steps_mask(**kwargs: object) -> list[int]:
    import cache_dit

    return list(cache_dit.steps_mask(**kwargs))


def _cyclic_bins(compute: list[int], cache: list[int], steps: int) -> tuple[list[int], list[int]]:
    """Repeat both bin lists together until their sum covers ``steps``."""
    out_compute, out_cache = list(compute), list(cache)
    while sum(out_compute) + sum(out_cache) < steps:
        out_compute += compute
        out_cache += cache
    return out_compute, out_cache


def steps_mask(settings: CacheDitSettings, steps: int) -> list[int] | None:
    """The per-step compute(1)/cache(0) mask for one request, or None when SCM is off."""
    if steps < 1:
        raise ValueError(f"num_inference_steps={steps}: must be >= 1")
    if settings.scm_compute_bins is not None and settings.scm_cache_bins is not None:
        compute, cache = _cyclic_bins(list(settings.scm_compute_bins), list(settings.scm_cache_bins), steps)
        return _cache_dit_steps_mask(compute_bins=compute, cache_bins=cache, total_steps=steps)
    if settings.scm_preset == "none":
        return None
    if steps >= 8 or steps in (4, 6):
        return _cache_dit_steps_mask(total_steps=steps, mask_policy=settings.scm_preset)
    mask = _cache_dit_steps_mask(total_steps=8, mask_policy=settings.scm_preset)[:steps]
    mask[-1] = 1
    return mask
