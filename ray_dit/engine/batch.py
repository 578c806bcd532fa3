"""Several requests in one pipeline call: which may share one, and how their inputs combine.

A diffusers pipeline takes a list of prompts and one generator per output, so compatible requests
denoise as one batch: each output keeps its own seed (``seed + i`` of its request), hence its own
initial noise, and its own prompt. What must be equal is everything the call takes as a single
value: size, frames, steps, CFG scales, whether a negative prompt is given (true CFG runs only
with one), and the cache settings after the request's overrides (cache-dit decides per call, over
the whole batch). A request with an input image is never batched: pipelines differ in whether and
how they take a list of images.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch

from ray_dit.api import GenerationRequest
from ray_dit.config import CacheDitSettings
from ray_dit.engine.cfg_probe import CfgProbe

#: The pipeline arguments that say how many outputs each prompt gets.
PER_PROMPT = ("num_images_per_prompt", "num_videos_per_prompt")


def batch_key(request: GenerationRequest, settings: CacheDitSettings) -> Hashable | None:
    """What a request must share with others to join their pipeline call (``request`` resolved:
    defaults filled in); None when it runs alone."""
    if request.image is not None:
        return None
    return (
        request.width,
        request.height,
        request.num_frames,
        request.num_inference_steps,
        request.guidance_scale,
        request.true_cfg_scale,
        request.negative_prompt is None,
        settings,
    )


def batched_inputs(requests: Sequence[GenerationRequest], device: str, params: Any) -> dict[str, Any]:
    """The per-output arguments of one call for ``requests``: a prompt (and negative prompt) and a
    generator per output, one output per prompt."""
    prompts = [r.prompt for r in requests for _ in range(r.n)]
    inputs: dict[str, Any] = {
        "prompt": prompts,
        "generator": [
            torch.Generator(device=device).manual_seed(r.seed + i) for r in requests for i in range(r.n)
        ],
    }
    if requests[0].negative_prompt is not None and "negative_prompt" in params:
        inputs["negative_prompt"] = [r.negative_prompt for r in requests for _ in range(r.n)]
    for key in PER_PROMPT:
        if key in params:
            inputs[key] = 1
    return inputs


def batch_problem(probe: CfgProbe, lead: GenerationRequest, kwargs: dict[str, Any]) -> str | None:
    """Why the pipeline can not denoise two prompts in one call, None if it can: a whole
    two-output call (2 steps and the decode) at the probe's small size. Some pipelines break on a
    batch of prompts (diffusers 0.42: Allegro in its decode, HunyuanVideo 1.5 in its first step),
    so batching is never assumed."""
    small = probe.small_kwargs(kwargs)
    small.pop("callback_on_step_end", None)
    small.update(num_inference_steps=2, output_type=kwargs.get("output_type", "np"))
    pair = [lead.replace(n=1, seed=0), lead.replace(n=1, seed=1, prompt=f"{lead.prompt}, again")]
    small.update(batched_inputs(pair, small["generator"][0].device, probe.params))
    try:
        with torch.inference_mode():
            output = probe.pipe(**small)
        outputs = getattr(output, "frames", None)
        outputs = getattr(output, "images", None) if outputs is None else outputs
        if outputs is None or len(outputs) != len(pair):
            return (
                f"a call with {len(pair)} prompts returned {0 if outputs is None else len(outputs)} outputs"
            )
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def split_frames(frames: np.ndarray, requests: Sequence[GenerationRequest]) -> list[np.ndarray]:
    """Each request's outputs, in order (views of the batch's array, no copy)."""
    parts, start = [], 0
    for request in requests:
        parts.append(frames[start : start + request.n])
        start += request.n
    if start != len(frames):
        raise RuntimeError(f"the pipeline returned {len(frames)} outputs for a batch of {start}")
    return parts
