"""The engine: one pipeline, one pipeline call at a time (one request or a batch of compatible
ones), Cache-DiT refreshed per call."""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ray_dit.api import GenerationRequest, GenerationResult, Timings
from ray_dit.config import CacheDitSettings, cache_dit_from_env
from ray_dit.config.cache_dit import knob_variable
from ray_dit.engine.batch import batch_key, batch_problem, batched_inputs, split_frames
from ray_dit.engine.cache import CacheDitController
from ray_dit.engine.cfg_probe import CfgProbe
from ray_dit.engine.loader import (
    call_parameters,
    image_input,
    is_video_pipeline,
    load_pipeline,
    temporal_factor,
)
from ray_dit.engine.registry import ModelDefaults
from ray_dit.errors import ConfigError, InvalidRequest, RequestCancelled
from ray_dit.inputs import check_image, decode_image, placeholder_image

logger = logging.getLogger(__name__)
StepCallback = Callable[[int, int], None]
# An input image's pixels at most, whoever calls the engine (the HTTP edge checks its own limit).
MAX_INPUT_PIXELS = 4096 * 4096
# The call arguments that decide CFG; a request that leaves one out gets the pipeline's default.
_CFG_FIELDS = ("guidance_scale", "true_cfg_scale")
CancelCheck = Callable[[], bool]


@dataclass(frozen=True)
class EngineOptions:
    model: str = "demo:shapes"
    device: str = "auto"
    dtype: str = "auto"
    size_multiple: int = 16
    #: A transformer checkpoint replacing the pipeline's own (a directory or hub id).
    transformer: str | None = None
    #: Regional ``torch.compile`` of the transformer's repeated blocks (``engine/compile.py``).
    compile: bool = False


class Engine:
    """Holds a diffusers pipeline with Cache-DiT and turns requests into uint8 frames.

    A diffusers pipeline is not thread-safe and Ray Serve runs plain methods in a thread pool,
    so :meth:`generate` takes a lock: requests run one after another, never interleaved.
    Cache settings that depend on the model (Fn + Bn against its blocks) are checked here: the
    environment's when the model is loaded (ConfigError), a request's in :meth:`resolve`.
    """

    def __init__(
        self,
        options: EngineOptions | None = None,
        cache_settings: CacheDitSettings | None = None,
        pipeline: Any | None = None,
        defaults: ModelDefaults | None = None,
    ) -> None:
        self.options = options or EngineOptions()
        self.cache_settings = cache_settings if cache_settings is not None else cache_dit_from_env()
        if pipeline is None:
            o = self.options
            pipeline, defaults = load_pipeline(o.model, o.device, o.dtype, transformer=o.transformer)
        self.pipe = pipeline
        self.defaults = defaults or ModelDefaults()
        self.kind = "video" if is_video_pipeline(self.pipe) else "image"
        #: Video frame counts are k * frame_step + 1: the VAE's temporal compression.
        self.frame_step = temporal_factor(self.pipe)
        self._params = call_parameters(self.pipe)
        #: "required", "optional" or None: whether the pipeline takes an input image.
        self.image_input = "required" if self.defaults.needs_image else image_input(self._params)
        if getattr(self.pipe, "transformer", None) is None:
            raise ConfigError(
                [
                    f"model={self.options.model!r}: {type(self.pipe).__name__} has no transformer; ray_dit serves "
                    "Diffusion Transformer pipelines (a UNet model is not one)"
                ]
            )
        self._cache = CacheDitController(self.pipe)
        #: Transformer calls per step, per CFG setting, measured on the pipeline (cfg_probe.py).
        self.cfg = CfgProbe(self.pipe, self._params, self.options.size_multiple)
        problems = self._cache.block_problems(self.cache_settings, knob_variable)
        unsupported = self._cache.support_problem(self.cache_settings, "SGLANG_CACHE_DIT_ENABLED=true")
        problems += [unsupported] if unsupported else []
        if problems:
            raise ConfigError(problems)
        if self.options.compile:
            from ray_dit.engine.compile import compile_transformer

            compile_transformer(self.pipe)
        self._lock = threading.Lock()
        self.device = str(self.pipe.device)
        self._batchable: bool | None = None  # probed on first use (batchable())

    # -- request shaping ------------------------------------------------------------------

    def resolve(self, request: GenerationRequest) -> GenerationRequest:
        """Fill the model's defaults and check what only the engine can check (InvalidRequest)."""
        d = self.defaults
        steps = request.num_inference_steps
        if steps is None:
            steps = d.steps or int(self._params["num_inference_steps"].default)
        frames = request.num_frames
        if self.kind == "video" and frames is None:
            frames = d.num_frames or int(self._params["num_frames"].default)
        resolved = request.replace(
            width=request.width if request.width is not None else d.width,
            height=request.height if request.height is not None else d.height,
            num_inference_steps=steps,
            num_frames=frames if self.kind == "video" else None,
            fps=(request.fps or d.fps) if self.kind == "video" else None,
            **d.cfg_fields(request),
        )
        problems = self._problems(resolved, request.num_frames)
        if problems:
            raise InvalidRequest("; ".join(message for _, message in problems), problems[0][0])
        return resolved

    def _problems(self, request: GenerationRequest, asked_frames: int | None) -> list[tuple[str, str]]:
        """(param, message) for each value this model cannot take."""
        problems = []
        m = self.options.size_multiple
        for name, value in (("width", request.width), ("height", request.height)):
            if value is not None and (value <= 0 or value % m):
                problems.append(("size", f"{name}={value}: must be a positive multiple of {m}"))
        if int(request.num_inference_steps or 0) < 1:
            problems.append(
                ("num_inference_steps", f"num_inference_steps={request.num_inference_steps}: must be >= 1")
            )
        if request.n < 1:
            problems.append(("n", f"n={request.n}: must be >= 1"))
        frames, k = request.num_frames, self.frame_step
        if self.kind == "video" and frames is not None and (frames < 1 or (frames - 1) % k):
            allowed = ", ".join(str(k * i + 1) for i in range(4))
            problems.append(
                ("num_frames", f"num_frames={frames}: must be {k}k+1 ({allowed}, ...) for this model")
            )
        if self.kind == "image" and asked_frames not in (None, 1):
            problems.append(("num_frames", f"num_frames={asked_frames}: this model generates images"))
        problems += self._image_problems(request)
        settings = self.settings_for(request)
        blocks = self._cache.block_problems(settings, request.cache.knob_key)
        unsupported = self._cache.support_problem(settings, "cache_dit_params")
        problems += [
            ("cache_dit_params", message) for message in [*blocks, *([unsupported] if unsupported else [])]
        ]
        return problems

    def resolved_defaults(self) -> GenerationRequest:
        """What a request that names nothing but a prompt samples with (with a placeholder input
        image for a model that needs one)."""
        image = placeholder_image() if self.image_input == "required" else None
        return self.resolve(GenerationRequest(prompt="-", image=image))

    def _image_problems(self, request: GenerationRequest) -> list[tuple[str, str]]:
        name = type(self.pipe).__name__
        if request.image is not None and self.image_input is None:
            return [("image", f"image: this model ({name}) takes no input image")]
        if request.image is None and self.image_input == "required":
            return [("image", f"image: this model ({name}) needs an input image")]
        if request.image is not None:
            check_image(request.image, MAX_INPUT_PIXELS)
        return []

    def prompt_warnings(self, prompt: str) -> list[str]:
        """Warnings about a prompt this model can not draw (only models with a vocabulary warn)."""
        check = self.defaults.prompt_check
        return check(prompt) if check is not None else []

    def settings_for(self, request: GenerationRequest) -> CacheDitSettings:
        """The environment's cache settings with the request's (already parsed) overrides."""
        return self.cache_settings.with_overrides(request.cache)

    def calls_per_step(self, request: GenerationRequest) -> int:
        """Transformer calls one denoising step of ``request`` makes (2: CFG's branches run apart),
        measured on the pipeline once per CFG setting. Takes the engine's lock."""
        request = self.resolve(request)
        kwargs = self._call_kwargs(request)
        with self._lock, self._guider(request):
            return self._calls_per_step(kwargs)

    def _calls_per_step(self, kwargs: dict[str, Any]) -> int:
        full = {
            n: p.default for n, p in self._params.items() if n in _CFG_FIELDS and p.default is not p.empty
        }
        guider = getattr(self.pipe, "guider", None)
        if guider is not None and "guidance_scale" not in self._params:
            full["guidance_scale"] = getattr(guider, "guidance_scale", None)  # part of the CFG setting
        return self.cfg.calls_per_step({**full, **kwargs})

    @contextlib.contextmanager
    def _guider(self, request: GenerationRequest) -> Iterator[None]:
        """Pipelines whose CFG is a ``guider`` component (HunyuanVideo 1.5) take no
        ``guidance_scale`` argument: a request's scale is applied to a copy of the guider for
        its call, so it is never silently ignored."""
        guider = getattr(self.pipe, "guider", None)
        if guider is None or request.guidance_scale is None or "guidance_scale" in self._params:
            yield
            return
        self.pipe.guider = guider.new(guidance_scale=request.guidance_scale)
        try:
            yield
        finally:
            self.pipe.guider = guider

    def _runs_separate_cfg(self, settings: CacheDitSettings, kwargs: dict[str, Any]) -> bool:
        """Whether CFG runs as two transformer calls per step (cache-dit must know); not needed
        while cache-dit is neither on nor mounted."""
        if not (settings.enabled or self._cache.mounted):
            return False
        return self._calls_per_step(kwargs) > 1

    def _call_kwargs(self, request: GenerationRequest) -> dict[str, Any]:
        gen_device = "cpu" if self.device == "mps" else self.device
        generators = [
            torch.Generator(device=gen_device).manual_seed(request.seed + i) for i in range(request.n)
        ]
        kwargs: dict[str, Any] = {
            "prompt": request.prompt,
            "height": request.height,
            "width": request.width,
            "num_inference_steps": request.num_inference_steps,
            "generator": generators,
            "output_type": "np",
        }
        optional = {
            "negative_prompt": request.negative_prompt,
            "guidance_scale": request.guidance_scale,
            "true_cfg_scale": request.true_cfg_scale,
            "num_frames": request.num_frames,
            "max_sequence_length": self.defaults.max_sequence_length,
            "image": decode_image(request.image, MAX_INPUT_PIXELS) if request.image is not None else None,
        }
        for key, value in optional.items():
            if value is not None and key in self._params:
                kwargs[key] = value
        for key in ("num_images_per_prompt", "num_videos_per_prompt"):
            if key in self._params:
                kwargs[key] = request.n
        if "max_area" in self._params and request.width and request.height:
            kwargs["max_area"] = request.width * request.height  # Kontext sizes by area, not by size
        kwargs.update(self.defaults.call_options)
        return {k: v for k, v in kwargs.items() if v is not None}

    # -- generation -----------------------------------------------------------------------

    def batch_key(self, request: GenerationRequest) -> Hashable | None:
        """What ``request`` (resolved) must share with others to join their pipeline call; None
        when it runs alone (``engine/batch.py``), as every request does until :meth:`batchable`
        found that the pipeline takes a batch of prompts."""
        return batch_key(request, self.settings_for(request)) if self._batchable else None

    def batchable(self) -> bool:
        """Whether this pipeline denoises several prompts in one call, probed once (the first step
        of a two-prompt call at a small size). Takes the engine's lock: it runs the pipeline."""
        if self._batchable is None:
            problem = "it needs an input image" if self.image_input == "required" else None
            if problem is None:
                lead = self.resolved_defaults()
                with self._lock, self._guider(lead):
                    problem = batch_problem(self.cfg, lead, self._call_kwargs(lead))
            if problem:
                logger.warning("%s: requests run one by one: %s", type(self.pipe).__name__, problem)
            self._batchable = problem is None
        return self._batchable

    def generate(
        self,
        request: GenerationRequest,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> GenerationResult:
        """Run one request. Raises InvalidRequest for what this model cannot take, RequestCancelled
        when ``should_cancel`` turns true (checked after every step)."""
        return self.generate_batch([request], on_step, should_cancel)[0]

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> list[GenerationResult]:
        """Run requests that share a :meth:`batch_key` in one pipeline call (one request: the
        call it would make alone). Results are in the requests' order; cache statistics are the
        call's, decided over the whole batch."""
        requests = [self.resolve(r) for r in requests]
        lead = requests[0]
        key = self.batch_key(lead)
        if len(requests) > 1 and (key is None or any(self.batch_key(r) != key for r in requests)):
            raise ValueError("generate_batch: these requests can not share a pipeline call")
        settings = self.settings_for(lead)
        kwargs = self._call_kwargs(lead)
        solo = dict(kwargs)  # the shape of one request's call: what the CFG probe runs
        if len(requests) > 1:
            kwargs.update(
                batched_inputs(requests, "cpu" if self.device == "mps" else self.device, self._params)
            )
        steps = int(lead.num_inference_steps or 0)
        hook = _StepHook(steps, on_step, should_cancel)
        if "callback_on_step_end" in self._params:
            kwargs["callback_on_step_end"] = hook
        t_arrive = time.perf_counter()
        with self._lock, self._guider(lead):
            t_start = time.perf_counter()
            plan = self._cache.plan(settings, steps, self._runs_separate_cfg(settings, solo))
            self._cache.prepare(plan)
            with torch.inference_mode():
                output = self.pipe(**kwargs)
            t_done = time.perf_counter()
            stats = self._cache.stats(plan)
        frames = _to_uint8_frames(output, self.kind)
        t_end = time.perf_counter()
        last_step = hook.last_step_at or t_done
        outputs = sum(r.n for r in requests)
        return [
            GenerationResult(
                frames=part,
                kind=self.kind,
                seed=request.seed,
                steps=steps,
                fps=request.fps,
                request_id=request.request_id,
                timings=Timings(
                    queue_s=t_start - t_arrive,
                    denoise_s=last_step - t_start,
                    decode_s=t_done - last_step,
                    postprocess_s=t_end - t_done,
                    total_s=t_end - t_arrive,
                ),
                cache=copy.deepcopy(stats),
                batch_size=outputs,
                warnings=self.prompt_warnings(request.prompt),
            )
            for request, part in zip(requests, split_frames(frames, requests), strict=True)
        ]


class _StepHook:
    """diffusers' ``callback_on_step_end``: reports progress, stops a cancelled request at the
    step boundary and remembers when the last step ended (where the VAE decode starts)."""

    def __init__(self, steps: int, on_step: StepCallback | None, should_cancel: CancelCheck | None) -> None:
        self.steps, self.on_step, self.should_cancel = steps, on_step, should_cancel
        self.last_step_at: float | None = None

    def __call__(self, pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        self.last_step_at = time.perf_counter()
        if self.on_step is not None:
            self.on_step(index + 1, self.steps)
        if self.should_cancel is not None and self.should_cancel():
            raise RequestCancelled(f"cancelled after step {index + 1} of {self.steps}")
        return tensors


def _to_uint8_frames(output: Any, kind: str) -> np.ndarray:
    """Pipeline output (float in [0, 1]) -> uint8 [n, frames, H, W, 3], converted in place: a long
    video is gigabytes of float32, and every temporary of the usual expression is another copy."""
    array = np.asarray(output.frames if kind == "video" else output.images)
    if not (array.flags.writeable and np.issubdtype(array.dtype, np.floating)):
        array = array.astype(np.float32)
    np.clip(array, 0.0, 1.0, out=array)
    array *= 255.0
    np.rint(array, out=array)  # what ndarray.round() does: half to even
    frames = array.astype(np.uint8)
    return frames[:, None] if kind == "image" else frames
