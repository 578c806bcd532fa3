"""serve_config.yaml, the GPU example, builder args and edge settings: checked without a cluster."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from ray.serve.schema import ServeDeploySchema

from ray_dit.config import SEED_DEFAULTS, ServeLimits, limits_from_mapping, server_from_env
from ray_dit.errors import ConfigError
from ray_dit.serve.app import build_app, parse_args
from ray_dit.serve.schemas import ImageGenerationBody, form_to_dict, image_request, parse_body

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [ROOT / "serve_config.yaml", ROOT / "examples" / "serve_config.gpu.yaml"]
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
