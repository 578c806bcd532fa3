"""serve_config.yaml, the GPU example, builder args and edge settings: checked without a cluster."""

from __future__ import annotations

import asyncio
import inspect
import typing
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from pydantic import BaseModel
from ray.serve.schema import ServeDeploySchema
from starlette.requests import Request

from ray_dit.config import SEED_DEFAULTS, ServeLimits, limits_from_mapping, server_from_env
from ray_dit.errors import ConfigError
from ray_dit.serve.app import build_app, parse_args
from ray_dit.serve.errors import ApiError
from ray_dit.serve.schemas import (
    ImageGenerationBody,
    VideoCreateBody,
    image_request,
    parse_body,
    video_request,
)
from ray_dit.serve.uploads import form_to_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [ROOT / "serve_config.yaml", *sorted((ROOT / "examples").glob("*.yaml"))]
CREDENTIALS = ("SGLANG_S3_ACCESS_KEY_ID", "SGLANG_S3_SECRET_ACCESS_KEY")


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic models reachable from a field's annotation (List[X], Optional[X], X | Y, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_models_in(arg))
    return found


def _dropped_keys(data: Any, model: type[BaseModel], where: str) -> list[str]:
    """Keys that pydantic would silently drop, recursively through nested schema models."""
    if not isinstance(data, dict):
        return []
    fields = model.model_fields
    names = set(fields) | {f.alias for f in fields.values() if f.alias}
    problems = [f"{where}.{key}" for key in data if key not in names]
    for key, value in data.items():
        if key not in fields:
            continue
        for sub in _models_in(fields[key].annotation):
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                label = f"{where}.{key}[{i}]" if isinstance(value, list) else f"{where}.{key}"
                problems.extend(_dropped_keys(item, sub, label))
    return problems


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates_and_drops_nothing(path):
    raw = yaml.safe_load(path.read_text())
    ServeDeploySchema.model_validate(raw)
    assert _dropped_keys(raw, ServeDeploySchema, "config") == []
    for app in raw["applications"]:
        assert "working_dir" not in app.get("runtime_env", {})
        env = app["runtime_env"]["env_vars"]
        assert all(isinstance(v, str) for v in env.values()), "env_vars values must be quoted strings"
        for name in SEED_DEFAULTS:
            assert name in env, f"{path.name} lacks seed variable {name}"
        for name in CREDENTIALS:
            assert env[name] in ("", "${" + name + "}"), "credentials never in a config file"
        assert "RAY_DIT_API_KEY" not in env or env["RAY_DIT_API_KEY"] in ("", "${RAY_DIT_API_KEY}")
        build_app(app["args"])  # the builder accepts the args


def test_default_config_is_the_cpu_demo_with_seed_defaults():
    raw = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    app = raw["applications"][0]
    assert app["import_path"] == "ray_dit.serve.app:build_app"
    assert app["args"]["model"] == "demo:shapes" and app["args"]["num_gpus"] == 0
    env = app["runtime_env"]["env_vars"]
    for name, default in SEED_DEFAULTS.items():
        if name not in CREDENTIALS:
            assert env[name] == default, name


def test_gpu_example_asks_for_a_gpu():
    args = yaml.safe_load(CONFIGS[1].read_text())["applications"][0]["args"]
    cfg = parse_args(args)
    assert cfg.num_gpus == 1 and cfg.device == "cuda" and cfg.dtype == "bfloat16"
    assert not cfg.model.startswith("demo:")


def test_builder_args_are_validated_with_every_problem_named():
    with pytest.raises(ValueError) as err:
        parse_args({"modle": "x", "num_gpus": -1, "dtype": "fp8", "limits": {"max_pixels": 0, "nope": 1}})
    text = str(err.value)
    for needle in (
        "args.modle: unknown key",
        "args.num_gpus",
        "args.dtype",
        "limits.max_pixels",
        "limits.nope",
    ):
        assert needle in text, text
    with pytest.raises(ValueError, match="num_gpus"):
        parse_args({"device": "cuda"})
    assert parse_args(None).model == "demo:shapes"


def test_server_settings_from_env_and_args():
    settings = server_from_env({"RAY_DIT_MAX_STEPS": "50", "RAY_DIT_API_KEY": "s3cret"}, {"max_n": 2})
    assert settings.limits.max_steps == 50 and settings.limits.max_n == 2
    assert settings.auth_enabled and "s3cret" not in repr(settings)
    assert not server_from_env({"RAY_DIT_API_KEY": ""}).auth_enabled
    with pytest.raises(ConfigError) as err:
        server_from_env({"RAY_DIT_MAX_PIXELS": "lots", "RAY_DIT_RETRY_AFTER_S": "0"})
    assert "RAY_DIT_MAX_PIXELS" in str(err.value) and "RAY_DIT_RETRY_AFTER_S" in str(err.value)
    assert limits_from_mapping({"max_frames": "33"}).max_frames == 33


def test_openai_multipart_form_round_trip():
    items = [
        ("prompt", "a cat"),
        ("seconds", "4"),
        ("cache_dit_params[residual_diff_threshold]", "0.5"),
        ("cache_dit_params[scm_compute_bins][]", "4"),
        ("cache_dit_params[scm_compute_bins][]", "2"),
        ("enable_cache_dit", "true"),
    ]
    data = form_to_dict(items)
    assert data == {
        "prompt": "a cat",
        "seconds": "4",
        "cache_dit_params": {"residual_diff_threshold": "0.5", "scm_compute_bins": ["4", "2"]},
        "enable_cache_dit": "true",
    }


def test_image_body_translation():
    body = parse_body(ImageGenerationBody, {"prompt": "p", "size": "64x32", "n": 2, "quality": "hd"})
    req = image_request(body, "img_0123456789abcdef", ServeLimits(), None)
    assert (req.width, req.height, req.n, req.output_format) == (64, 32, 2, "png")
    assert req.seed == 1024  # the engine's default when the client gives none


def test_the_builder_takes_one_parameter_as_serve_requires():
    """``serve run`` refuses a builder with more parameters (tests/test_serve_run.py runs it)."""
    assert list(inspect.signature(build_app).parameters) == ["args"]


# -- strict JSON types: a bool is not a number, text is not a number (issue 14, item 8) ----------

NOT_NUMBERS = [
    (ImageGenerationBody, "n", True, "n=true: must be an integer, not a boolean"),
    (ImageGenerationBody, "n", False, "n=false: must be an integer, not a boolean"),
    (ImageGenerationBody, "n", "2", 'n="2": must be an integer, not a string'),
    (ImageGenerationBody, "n", 2.0, "n=2.0: must be an integer, not a number"),
    (ImageGenerationBody, "num_inference_steps", True, "must be an integer, not a boolean"),
    (ImageGenerationBody, "seed", True, "seed=true: must be an integer"),
    (ImageGenerationBody, "guidance_scale", True, "guidance_scale=true: must be a number, not a boolean"),
    (ImageGenerationBody, "true_cfg_scale", "4", 'true_cfg_scale="4": must be a number, not a string'),
    (ImageGenerationBody, "output_compression", True, "must be an integer, not a boolean"),
    (ImageGenerationBody, "partial_images", False, "must be an integer, not a boolean"),
    (ImageGenerationBody, "partial_images", 2, "partial_images=2: must be 0"),
    (ImageGenerationBody, "stream", 0, "stream=0: must be true or false, not an integer"),
    (ImageGenerationBody, "enable_cache_dit", 1, "must be true or false, not an integer"),
    (VideoCreateBody, "num_frames", True, "num_frames=true: must be an integer, not a boolean"),
    (VideoCreateBody, "fps", True, "fps=true: must be an integer, not a boolean"),
    (VideoCreateBody, "guidance_scale", False, "must be a number, not a boolean"),
    (VideoCreateBody, "seconds", True, "seconds=true: must be a duration in seconds"),
]


@pytest.mark.parametrize(
    ("model", "field", "value", "message"), NOT_NUMBERS, ids=[f"{f}={v!r}" for _, f, v, _ in NOT_NUMBERS]
)
def test_json_values_of_the_wrong_type_are_a_400_naming_the_field(model, field, value, message):
    with pytest.raises(ApiError) as err:
        parse_body(model, {"prompt": "p", field: value})
    assert (err.value.status, err.value.param) == (400, field)
    assert message in err.value.message, err.value.message
    assert "Traceback" not in err.value.message


def test_float_fields_take_integers_and_int_valued_floats():
    body = parse_body(ImageGenerationBody, {"prompt": "p", "guidance_scale": 2, "true_cfg_scale": 2.0})
    assert body.guidance_scale == 2.0 and body.true_cfg_scale == 2.0
    video = parse_body(VideoCreateBody, {"prompt": "p", "seconds": 1, "guidance_scale": 3.0})
    assert video.seconds == "1" and video.guidance_scale == 3.0
    assert parse_body(VideoCreateBody, {"prompt": "p", "seconds": 0.5}).seconds == "0.5"
    assert (
        parse_body(ImageGenerationBody, {"prompt": "p", "stream": False, "partial_images": 0}).stream is False
    )


def _sdk_video_form(**params: Any) -> list[tuple[str, Any]]:
    """The form the official openai SDK sends for ``videos.create``, read back as the ingress reads it."""
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(400, json={"error": {"message": "captured"}})

    transport = httpx.Client(transport=httpx.MockTransport(answer))
    client = openai.OpenAI(base_url="http://test/v1", api_key="k", max_retries=0, http_client=transport)
    with pytest.raises(openai.BadRequestError):
        client.videos.create(**params)
    body, content_type = sent[0].read(), sent[0].headers["content-type"]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def read() -> list[tuple[str, Any]]:
        headers = [(b"content-type", content_type.encode())]
        scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}
        return list((await Request(scope, receive).form()).multi_items())

    return asyncio.run(read())


def test_the_sdks_multipart_form_still_parses_into_typed_fields():
    """Every form value is text; the form still reads as JSON would (the SDK sends 2.0 as "2.0")."""
    extras = {"num_frames": 5, "fps": 8, "guidance_scale": 2.0, "seed": 7, "enable_cache_dit": True}
    cache = {"residual_diff_threshold": 0.5, "scm_compute_bins": [4, 2], "scm_cache_bins": [1, 3]}
    items = _sdk_video_form(
        prompt="a cat", seconds="4", size="64x64", extra_body={**extras, "cache_dit_params": cache}
    )
    assert ("num_frames", "5") in items and ("guidance_scale", "2.0") in items  # text, as sent
    body = parse_body(VideoCreateBody, form_to_dict(items))
    assert (body.num_frames, body.fps, body.guidance_scale, body.seed) == (5, 8, 2.0, 7)
    assert body.enable_cache_dit is True and body.seconds == "4"
    req = video_request(body, "video_0123456789abcdef", ServeLimits(), None)
    assert req.cache.primary == {"rdt": 0.5} and req.cache.scm["scm_compute_bins"] == (4, 2)
    with pytest.raises(ApiError) as err:  # a form's text that is no number is still refused by name
        parse_body(VideoCreateBody, form_to_dict([("prompt", "x"), ("fps", "true")]))
    assert err.value.param == "fps"


def test_the_whole_output_of_a_request_has_a_budget():
    """Each field within its limit, the product over RAY_DIT_MAX_TOTAL_PIXELS: a 400 naming it."""
    from ray_dit.serve.types import ModelInfo

    limits = ServeLimits()
    huge = parse_body(VideoCreateBody, {"prompt": "x", "size": "2048x2048", "num_frames": 129})
    with pytest.raises(ApiError) as err:
        video_request(huge, "video_0123456789abcdef", limits, None)
    assert err.value.status == 400 and err.value.param == "size"
    assert "RAY_DIT_MAX_TOTAL_PIXELS" in err.value.message and "129 frames" in err.value.message
    hd = parse_body(VideoCreateBody, {"prompt": "x", "size": "1280x720", "num_frames": 129})
    assert video_request(hd, "video_0123456789abcdef", limits, None).num_frames == 129
    # The model's default size counts when the request gives none.
    info = ModelInfo(model="m", kind="video", width=2048, height=2048, num_frames=129)
    with pytest.raises(ApiError, match="RAY_DIT_MAX_TOTAL_PIXELS"):
        video_request(parse_body(VideoCreateBody, {"prompt": "x"}), "video_0123456789abcdef", limits, info)
    images = parse_body(ImageGenerationBody, {"prompt": "x", "size": "2048x2048", "n": 4})
    assert image_request(images, "img_0123456789abcdef", limits, None).n == 4
    small = ServeLimits(max_total_pixels=2048 * 2048 * 3)
    with pytest.raises(ApiError, match="n=4"):
        image_request(images, "img_0123456789abcdef", small, None)
