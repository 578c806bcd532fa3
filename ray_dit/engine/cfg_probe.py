"""How many transformer calls one denoising step makes, learned from the pipeline itself.

cache-dit must know whether a pipeline runs classifier-free guidance as two transformer calls
per step (conditional, then unconditional: FLUX's and Qwen-Image's true CFG, Wan's guidance) or
as one (the two branches batched into one call, as SD3, PixArt or CogVideoX do, or guidance
distilled into an embedding, as FLUX.1-dev does): it tells the branches apart by call parity,
so a wrong guess silently mixes the branches' residuals, the most reported bug of cache-dit
integrations. A list of family names can only guess, and is wrong for the next family diffusers
adds. So the engine asks the pipeline: once per pipeline and CFG setting, it runs the first step
of a small request with a counting hook on the transformer(s) and stops it before the second.

Which request fields make a CFG setting is known from diffusers' conventions: guidance is on
with ``guidance_scale > 1``, true CFG with ``true_cfg_scale > 1`` and a negative prompt; the
probe runs with the request's own values of those fields, so whatever rule a pipeline applies
to them is what gets measured.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

PROBE_SIDE = 256  # the probe's image side at most: the call count does not depend on the size


class _FirstStepDone(Exception):
    """Raised from the step callback to stop the probe after its first step (no decode)."""


def cfg_key(kwargs: dict[str, Any]) -> tuple[bool, bool, bool]:
    """The fields of a call that decide its CFG mode, as diffusers' pipelines read them."""
    guidance = kwargs.get("guidance_scale")
    true_cfg = kwargs.get("true_cfg_scale")
    return (
        guidance is not None and float(guidance) > 1,
        true_cfg is not None and float(true_cfg) > 1,
        kwargs.get("negative_prompt") is not None,
    )


class CfgProbe:
    """Counts the transformer calls of a pipeline's first step, once per :func:`cfg_key`.
    Call it under the engine's lock: it runs the pipeline."""

    def __init__(self, pipe: Any, params: dict[str, Any], size_multiple: int) -> None:
        self.pipe = pipe
        self.params = params
        self.size_multiple = max(1, size_multiple)
        self.transformers = [
            t
            for t in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None))
            if t is not None
        ]
        self._known: dict[tuple[bool, bool, bool], int] = {}
        self._lock = threading.Lock()

    def calls_per_step(self, kwargs: dict[str, Any]) -> int:
        """Transformer calls per step for a pipeline call with ``kwargs`` (probed on first use)."""
        key = cfg_key(kwargs)
        with self._lock:
            if key not in self._known:
                self._known[key] = self._probe(kwargs)
            return self._known[key]

    def known(self) -> dict[tuple[bool, bool, bool], int]:
        """What was measured so far (for ``ray-dit models`` and the tests)."""
        with self._lock:
            return dict(self._known)

    def _small(self, value: Any) -> Any:
        if not isinstance(value, int):
            return value
        return max(self.size_multiple, min(value, PROBE_SIDE) // self.size_multiple * self.size_multiple)

    def small_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` for a one-output call at a small size that stops after its first step."""
        probe = {k: v for k, v in kwargs.items() if k in self.params}  # the key may hold more
        probe.update(height=self._small(kwargs.get("height")), width=self._small(kwargs.get("width")))
        device = kwargs["generator"][0].device if kwargs.get("generator") else "cpu"
        probe["generator"] = [torch.Generator(device=device).manual_seed(0)]
        for key in ("num_images_per_prompt", "num_videos_per_prompt"):
            if key in probe:
                probe[key] = 1
        probe["output_type"] = "latent" if "output_type" in self.params else probe.get("output_type")
        stops = "callback_on_step_end" in self.params
        probe["num_inference_steps"] = 2 if stops else 1
        if stops:
            probe["callback_on_step_end"] = _stop_after_first_step
        return probe

    def _probe(self, kwargs: dict[str, Any]) -> int:
        calls = [0]

        def count(*_: Any) -> None:
            calls[0] += 1

        hooks = [t.register_forward_pre_hook(count) for t in self.transformers]
        try:
            first_step(self.pipe, self.small_kwargs(kwargs))
        finally:
            for hook in hooks:
                hook.remove()
        return max(1, calls[0])


def first_step(pipe: Any, kwargs: dict[str, Any]) -> None:
    """Run a call made by :meth:`CfgProbe.small_kwargs` to the end of its first step (a pipeline
    without a step callback runs its single step); raises whatever the call raises."""
    try:
        with torch.inference_mode():
            pipe(**kwargs)
    except _FirstStepDone:
        pass


def _stop_after_first_step(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
    raise _FirstStepDone()
