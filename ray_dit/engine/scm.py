"""Steps-computation masks (SCM) for any step count.

cache-dit's ``steps_mask`` is the reference: wherever it returns a mask, ray_dit uses exactly that
mask. It refuses two cases that a server meets every day, and ray_dit answers them instead of
failing the request:

* **Custom bins that do not cover the request's steps** (bins written for 28 steps, a 50-step
  request). The bins describe one *period*, read the way cache-dit reads them: ``compute[0]``
  computed steps, ``cache[0]`` cached steps, ``compute[1]``, ``cache[1]``, ...; when one list is
  longer, its remaining bins follow in order. The period is ``sum(compute) + sum(cache)`` steps
  long, and step ``i`` of the request takes the period's step ``i mod period``: ``8,3,3 / 1,2``
  (period ``11111111 0 111 00 111``, 17 steps) gives ``111111110111001111`` at 18 steps.
* **Presets below 8 steps other than 4 and 6**: the preset's 8-step mask is truncated to the step
  count and its last step forced to compute, as cache-dit's presets always do.

Bins are cut to what covers the request's steps before cache-dit sees them: cache-dit builds a
list as long as the bins' sum, so ``[2**40]`` would exhaust memory and ``[10**30]`` overflow,
while no step beyond the request's changes its mask.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

from ray_dit.config import CacheDitSettings


def _cache_dit_steps_mask(**kwargs: object) -> list[int]:
    import cache_dit

    return list(cache_dit.steps_mask(**kwargs))


def _period_runs(compute: Sequence[int], cache: Sequence[int]) -> Iterator[tuple[int, int]]:
    """(1 = compute / 0 = cache, length) runs of one period, in the order cache-dit reads bins.

    Empty bins add no step there, so none is yielded: a period of only those cannot loop forever.
    """
    for index in range(max(len(compute), len(cache))):
        if index < len(compute) and compute[index] > 0:
            yield 1, compute[index]
        if index < len(cache) and cache[index] > 0:
            yield 0, cache[index]


def _covering_bins(compute: Sequence[int], cache: Sequence[int], steps: int) -> tuple[list[int], list[int]]:
    """Bins whose cache-dit mask is the bins' period repeated and cut to ``steps``.

    Adjacent runs of the same kind merge (the last compute bin of ``8,3,3 / 1,2`` and the first of
    the next period), so the result alternates compute and cache as cache-dit pairs them; no bin
    is longer than ``steps``, and the loop runs at most ``steps`` times.
    """
    runs: list[list[int]] = []  # [kind, length]
    left = steps
    for kind, length in itertools.cycle(list(_period_runs(compute, cache))):
        take = min(length, left)
        if runs and runs[-1][0] == kind:
            runs[-1][1] += take
        else:
            runs.append([kind, take])
        left -= take
        if left == 0:
            break
    return [n for kind, n in runs if kind == 1], [n for kind, n in runs if kind == 0]


def steps_mask(settings: CacheDitSettings, steps: int) -> list[int] | None:
    """The per-step compute(1)/cache(0) mask for one request, or None when SCM is off."""
    if steps < 1:
        raise ValueError(f"num_inference_steps={steps}: must be >= 1")
    if settings.scm_compute_bins is not None and settings.scm_cache_bins is not None:
        compute, cache = _covering_bins(settings.scm_compute_bins, settings.scm_cache_bins, steps)
        return _cache_dit_steps_mask(compute_bins=compute, cache_bins=cache, total_steps=steps)
    if settings.scm_preset == "none":
        return None
    if steps >= 8 or steps in (4, 6):
        return _cache_dit_steps_mask(total_steps=steps, mask_policy=settings.scm_preset)
    mask = _cache_dit_steps_mask(total_steps=8, mask_policy=settings.scm_preset)[:steps]
    mask[-1] = 1
    return mask
