"""Pydantic models of the HTTP bodies, and their translation into a ``GenerationRequest``.

Field names follow OpenAI's Images and Videos APIs so the official clients work unmodified; the
extras (steps, guidance, seed, cache overrides) are ray_dit's and travel in ``extra_body``.
OpenAI parameters that have no meaning for a DiT (quality, style, user, ...) are accepted and
ignored; anything else unknown is refused by name, as OpenAI itself does.

Types are strict for JSON: ``"n": true`` or ``"n": "2"`` is a 400 naming ``n``, never ``n=1``. A
multipart form carries only text, so a form (:class:`FormFields`) reads its numbers from text.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from ray_dit.api import GenerationRequest, parse_size
from ray_dit.config import CacheOverrides, ServeLimits, parse_overrides
from ray_dit.errors import InvalidRequest
from ray_dit.inputs import check_image
from ray_dit.serve.errors import ApiError, invalid
from ray_dit.serve.types import ModelInfo

MAX_SEED = 2**63 - 1 - 1024


def _only(value: bool | int, why: str) -> Any:
    """A field that may only be ``value``, of its exact JSON type (``Literal[0]`` would take false)."""

    def check(given: Any) -> Any:
        if given != value:
            raise ValueError(f"must be {json.dumps(value)}: {why}")
        return given

    return Annotated[type(value), AfterValidator(check)]


def _seconds_as_text(value: Any) -> Any:
    """OpenAI's ``seconds`` is text ("4"); a JSON number (4, 1.5) is taken as its text, a bool is not."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueError('must be a duration in seconds, as text ("4") or a number (4)')
    return value


class _Body(BaseModel):
    # strict: a JSON bool is not a number and "2" is not an int; a float field still takes 2 and 2.0
    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=False)


class FormFields(dict[str, Any]):
    """A form's fields as JSON-shaped data whose leaves are all text (``"4"``, ``"true"``): the only
    way a form carries a number, so :func:`parse_body` reads them from text (pydantic's lax mode)."""


class _SamplingExtras(_Body):
    """ray_dit's extras shared by images and videos (SGLang's names)."""

    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    true_cfg_scale: float | None = None
    seed: int | None = None
    enable_cache_dit: bool | None = None
    cache_dit_params: dict[str, Any] | None = None


class ImageGenerationBody(_SamplingExtras):
    """``POST /v1/images/generations``."""

    prompt: str
    model: str | None = None
    n: int | None = None
    size: str | None = None
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    # OpenAI parameters accepted for compatibility and ignored.
    quality: str | None = None
    style: str | None = None
    user: str | None = None
    background: Literal["auto", "opaque"] | None = None
    moderation: str | None = None
    output_compression: int | None = None
    safety_identifier: str | None = None
    stream: _only(False, "streaming is not supported") | None = None  # type: ignore[valid-type]
    partial_images: _only(0, "streaming is not supported") | None = None  # type: ignore[valid-type]


class VideoCreateBody(_SamplingExtras):
    """``POST /v1/videos`` (JSON or the multipart form the openai SDK sends)."""

    prompt: str
    model: str | None = None
    seconds: Annotated[str, BeforeValidator(_seconds_as_text)] | None = None
    size: str | None = None
    num_frames: int | None = None
    fps: int | None = None
    output_format: Literal["mp4"] | None = None
    input_reference: Any = None  # a file (multipart): the input image of an image-to-video model


class ImageEditBody(ImageGenerationBody):
    """``POST /v1/images/edits`` (multipart): the generation fields plus the files."""

    image: Any = None
    mask: Any = None


_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "an object",
}
_JSON_TYPES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}


def _shown(value: Any) -> str:
    """A value as the client wrote it (JSON: ``true``, ``"2"``), cut to a readable length."""
    try:
        shown = json.dumps(value)
    except (TypeError, ValueError):  # not JSON (an object from a notebook), or an int too long to print
        shown = f"<{type(value).__name__}>"
    return shown if len(shown) <= 80 else shown[:77] + "..."


def validation_error(exc: ValidationError) -> ApiError:
    """The first pydantic error as a 400 that names the field (OpenAI's ``param``)."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ())]
    name = ".".join(loc) or "body"
    kind = err.get("type", "")
    value = err.get("input")
    if kind == "missing":
        message = f"{name}: this field is required"
    elif kind == "extra_forbidden":
        message = f"{name}: unknown parameter"
    elif kind in _EXPECTED:  # a strict type check: say what came and what is expected
        got = "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)
        message = f"{name}={_shown(value)}: must be {_EXPECTED[kind]}, not {got}"
    else:  # a ValueError of ours says it all; pydantic's own messages are kept as they are
        error = err.get("ctx", {}).get("error") if kind == "value_error" else None
        message = f"{name}={_shown(value)}: {error or err.get('msg', 'invalid value')}"
    return invalid(loc[0] if loc else None, message)


def parse_body(model: type[_Body], data: Any) -> Any:
    """``data`` validated into ``model``: strictly, unless it is a form's text (:class:`FormFields`)."""
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data, strict=not isinstance(data, FormFields))
    except ValidationError as exc:
        raise validation_error(exc) from None


def _check_text(name: str, value: str | None, limits: ServeLimits, required: bool) -> None:
    if value is None:
        return
    if required and not value.strip():
        raise invalid(name, f"{name}: must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(name, f"{name}: must be valid Unicode text (found a lone surrogate)") from None
    if len(value) > limits.max_prompt_chars:
        raise invalid(
            name,
            f"{name}: {len(value)} characters is over the limit of {limits.max_prompt_chars} "
            "(RAY_DIT_MAX_PROMPT_CHARS)",
        )


def _check_size(
    size: str | None, limits: ServeLimits, info: ModelInfo | None
) -> tuple[int | None, int | None]:
    if size is None or size.strip().lower() == "auto":
        return None, None
    try:
        width, height = parse_size(size)
    except ValueError as exc:
        raise invalid("size", str(exc)) from None
    if width * height > limits.max_pixels:
        raise invalid(
            "size",
            f"size={size!r}: {width * height} pixels is over the limit of {limits.max_pixels} "
            "(RAY_DIT_MAX_PIXELS)",
        )
    multiple = info.size_multiple if info else 0
    if multiple and (width % multiple or height % multiple):
        raise invalid("size", f"size={size!r}: width and height must be multiples of {multiple}")
    return width, height


def _check_common(body: _SamplingExtras, limits: ServeLimits) -> CacheOverrides:
    """The checks images and videos share; returns the request's parsed cache overrides."""
    steps = body.num_inference_steps
    if steps is not None and not 1 <= steps <= limits.max_steps:
        raise invalid(
            "num_inference_steps",
            f"num_inference_steps={steps}: must be between 1 and {limits.max_steps} (RAY_DIT_MAX_STEPS)",
        )
    for name in ("guidance_scale", "true_cfg_scale"):
        value = getattr(body, name)
        if value is not None and (not math.isfinite(value) or value < 0):
            raise invalid(name, f"{name}={value}: must be a finite number >= 0")
    if body.seed is not None and not 0 <= body.seed <= MAX_SEED:
        raise invalid("seed", f"seed={body.seed}: must be between 0 and {MAX_SEED}")
    _check_text("negative_prompt", body.negative_prompt, limits, required=False)
    try:
        return parse_overrides(body.enable_cache_dit, body.cache_dit_params)
    except InvalidRequest as exc:
        raise invalid(exc.param, exc.message) from None


def _common_kwargs(body: _SamplingExtras, limits: ServeLimits) -> dict[str, Any]:
    """The request fields images and videos share, checked against ``limits``."""
    kwargs: dict[str, Any] = {
        "negative_prompt": body.negative_prompt,
        "num_inference_steps": body.num_inference_steps,
        "guidance_scale": body.guidance_scale,
        "true_cfg_scale": body.true_cfg_scale,
        "cache": _check_common(body, limits),
    }
    if body.seed is not None:
        kwargs["seed"] = body.seed
    return kwargs


def check_image_input(data: bytes | None, param: str, limits: ServeLimits, info: ModelInfo | None) -> None:
    """An input image where the model takes one (and only there), of a supported format and size."""
    takes = info.image_input if info is not None else "optional"  # unknown yet: the engine decides
    if data is None:
        if takes == "required":
            assert info is not None
            raise invalid(param, f"{param}: model {info.model!r} needs an input image (upload it as a file)")
        return
    if takes is None:
        assert info is not None
        raise invalid(param, f"{param}: model {info.model!r} takes no input image")
    try:
        check_image(data, limits.max_pixels, param)
    except InvalidRequest as exc:
        raise invalid(param, exc.message) from None


def image_request(
    body: ImageGenerationBody,
    request_id: str,
    limits: ServeLimits,
    info: ModelInfo | None,
    image: bytes | None = None,
) -> GenerationRequest:
    """Check an image body (and its input image, for an edit) against the limits and turn it into
    the engine's request."""
    _check_text("prompt", body.prompt, limits, required=True)
    check_image_input(image, "image", limits, info)
    n = 1 if body.n is None else body.n
    if not 1 <= n <= limits.max_n:
        raise invalid("n", f"n={n}: must be between 1 and {limits.max_n} (RAY_DIT_MAX_N)")
    if info is not None and info.kind != "image":
        raise invalid("model", f"model {info.model!r} generates videos: use POST /v1/videos")
    width, height = _check_size(body.size, limits, info)
    _check_total(width, height, 1, n, limits, info)
    return GenerationRequest(
        prompt=body.prompt,
        n=n,
        width=width,
        height=height,
        output_format=body.output_format or "png",
        request_id=request_id,
        image=image,
        **_common_kwargs(body, limits),
    )


def _check_total(
    width: int | None,
    height: int | None,
    frames: int | None,
    n: int,
    limits: ServeLimits,
    info: ModelInfo | None,
) -> None:
    """The request's whole output against ``max_total_pixels``; the model's defaults fill the gaps."""
    width = width or (info.width if info else None)
    height = height or (info.height if info else None)
    frames = frames or (info.num_frames if info else None) or 1
    if not (width and height):
        return  # nothing known yet about the size: the per-field limits still hold
    total = width * height * frames * n
    if total > limits.max_total_pixels:
        raise invalid(
            "size",
            f"{width}x{height} x {frames} frames x n={n} is {total} pixels, over the limit of "
            f"{limits.max_total_pixels} per request (RAY_DIT_MAX_TOTAL_PIXELS)",
        )


def _frames_for_seconds(seconds: Any, fps: int, step: int) -> int:
    try:
        value = float(str(seconds).strip())
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise invalid("seconds", f"seconds={seconds!r}: must be a positive number")
    frames = max(1, round(value * fps))
    return step * round((frames - 1) / step) + 1  # video DiTs take k * step + 1 frames


def video_request(
    body: VideoCreateBody,
    request_id: str,
    limits: ServeLimits,
    info: ModelInfo | None,
    image: bytes | None = None,
) -> GenerationRequest:
    """Check a video body (and its input image, ``input_reference``) against the limits and turn
    it into the engine's request."""
    _check_text("prompt", body.prompt, limits, required=True)
    if body.input_reference is not None and image is None:
        raise invalid("input_reference", "input_reference: upload the input image as a file (multipart)")
    check_image_input(image, "input_reference", limits, info)
    if info is not None and info.kind != "video":
        raise invalid("model", f"model {info.model!r} generates images: use POST /v1/images/generations")
    width, height = _check_size(body.size, limits, info)
    if body.fps is not None and not 1 <= body.fps <= 120:
        raise invalid("fps", f"fps={body.fps}: must be between 1 and 120")
    fps = body.fps or (info.fps if info and info.fps else 16)
    frames, step = body.num_frames, info.frame_step if info else 4
    if frames is None and body.seconds is not None:
        frames = _frames_for_seconds(body.seconds, fps, step)
    if frames is not None and not 1 <= frames <= limits.max_frames:
        raise invalid(
            "num_frames" if body.num_frames is not None else "seconds",
            f"num_frames={frames}: must be between 1 and {limits.max_frames} (RAY_DIT_MAX_FRAMES)",
        )
    if frames is not None and (frames - 1) % step:
        allowed = ", ".join(str(step * i + 1) for i in range(4))
        raise invalid("num_frames", f"num_frames={frames}: must be {step}k+1 ({allowed}, ...) for this model")
    _check_total(width, height, frames, 1, limits, info)
    return GenerationRequest(
        prompt=body.prompt,
        n=1,
        width=width,
        height=height,
        num_frames=frames,
        fps=body.fps or (info.fps if info else None),
        output_format="mp4",
        request_id=request_id,
        image=image,
        **_common_kwargs(body, limits),
    )
