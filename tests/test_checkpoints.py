"""Real checkpoints as users have them (issue 16), built offline: a hub id resolved from the local
Hugging Face cache, a local diffusers directory, a directory whose transformer comes from a
separate path (how quantized and fine-tuned transformers ship), and a DiT that cache-dit cannot
accelerate (served uncached; caching refused with a clear error, not a traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ray_dit.api import GenerationRequest
from ray_dit.config import CacheDitSettings, cache_dit_from_env, parse_overrides
from ray_dit.engine import Engine, EngineOptions
from ray_dit.engine.registry import lookup
from ray_dit.errors import ConfigError, InvalidRequest

REQUEST = GenerationRequest(prompt="a red circle", seed=0, width=64, height=64, num_inference_steps=3)


def _saved(path: Path, model: str = "demo:flux-tiny") -> Path:
    lookup(model).build().save_pretrained(path)
    return path


def _engine(model: str, settings: CacheDitSettings | None = None, **options: str) -> Engine:
    return Engine(
        EngineOptions(model=model, device="cpu", **options), cache_settings=settings or CacheDitSettings()
    )


_HUB_PROGRAM = """
import hashlib, sys
from ray_dit.api import GenerationRequest
from ray_dit.config import CacheDitSettings
from ray_dit.engine import Engine, EngineOptions
for model in sys.argv[1:]:
    engine = Engine(EngineOptions(model=model, device="cpu"), cache_settings=CacheDitSettings())
    request = GenerationRequest(prompt="a red circle", seed=0, width=64, height=64, num_inference_steps=3)
    frames = engine.generate(request).frames
    print(frames.shape, hashlib.md5(frames.tobytes()).hexdigest())
"""


def test_a_hub_id_loads_from_the_local_cache_offline(tmp_path: Path) -> None:
    # The layout huggingface_hub keeps: models--{org}--{name}/snapshots/{revision}, refs/main. The
    # hub reads its cache location when imported, so each load runs in a process of its own.
    cache = tmp_path / "hub"
    repo = cache / "models--acme--flux-tiny"
    revision = "0123456789abcdef0123456789abcdef01234567"
    _saved(repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}

    models = ["acme/flux-tiny", str(repo / "snapshots" / revision)]
    done = subprocess.run(
        [sys.executable, "-c", _HUB_PROGRAM, *models], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    from_hub, from_dir = done.stdout.strip().splitlines()[-2:]
    assert from_hub.startswith("(1, 1, 64, 64, 3)")
    assert from_hub == from_dir


def test_a_transformer_from_a_separate_path_replaces_the_pipelines_own(tmp_path: Path) -> None:
    base = _saved(tmp_path / "base")
    tuned = lookup("demo:flux-tiny").build().transformer
    with torch.no_grad():
        for parameter in tuned.parameters():
            parameter.mul_(1.5)  # a "fine-tuned" transformer
    tuned.save_pretrained(tmp_path / "tuned-transformer")
    engine = _engine(str(base), transformer=str(tmp_path / "tuned-transformer"))
    for mine, theirs in zip(engine.pipe.transformer.parameters(), tuned.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    out = engine.generate(REQUEST)
    plain = _engine(str(base)).generate(REQUEST)
    assert not np.array_equal(out.frames, plain.frames)
    # A whole pipeline directory works as the source too: its transformer/ is used.
    nested = _engine(str(base), transformer=str(base))
    assert np.array_equal(nested.generate(REQUEST).frames, plain.frames)
    with pytest.raises(InvalidRequest) as bad:
        _engine(str(base), transformer=str(tmp_path / "missing"))
    assert bad.value.param == "transformer" and "missing" in bad.value.message
    with pytest.raises(InvalidRequest, match="transformer"):
        _engine("demo:flux-tiny", transformer=str(tmp_path / "tuned-transformer"))


def _unsupported_pipeline() -> object:
    """A FLUX pipeline under class names cache-dit has no adapter for (a family added tomorrow)."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    class NovelTransformer(FluxTransformer2DModel):
        pass

    class NovelPipeline(FluxPipeline):
        pass

    pipe = lookup("demo:flux-tiny").build()
    transformer = NovelTransformer.from_config(pipe.transformer.config)
    transformer.load_state_dict(pipe.transformer.state_dict())
    return NovelPipeline(**{**pipe.components, "transformer": transformer.eval()})


def test_a_model_cache_dit_cannot_accelerate_serves_uncached_and_refuses_caching_clearly() -> None:
    spec = lookup("demo:flux-tiny")
    enabled = cache_dit_from_env({"SGLANG_CACHE_DIT_ENABLED": "true"})
    with pytest.raises(ConfigError) as refused:
        Engine(EngineOptions(model="novel", device="cpu"), enabled, _unsupported_pipeline(), spec.defaults)
    assert "SGLANG_CACHE_DIT_ENABLED=true" in str(refused.value) and "NovelPipeline" in str(refused.value)
    engine = Engine(EngineOptions(model="novel", device="cpu"), CacheDitSettings(), _unsupported_pipeline())
    result = engine.generate(REQUEST)
    assert result.frames.shape == (1, 1, 64, 64, 3) and not result.cache.enabled
    with pytest.raises(InvalidRequest) as asked:
        engine.generate(REQUEST.replace(cache=parse_overrides(True, None)))
    assert asked.value.param == "cache_dit_params" and "cannot accelerate" in asked.value.message


def test_a_pipeline_without_a_transformer_is_refused_at_start(tmp_path: Path) -> None:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        layers_per_block=1,
    )
    with pytest.raises(ConfigError, match="has no transformer"):
        Engine(
            EngineOptions(model="unet", device="cpu"), CacheDitSettings(), DDPMPipeline(unet, DDPMScheduler())
        )


def test_a_checkpoint_samples_as_its_family_model_card_says(tmp_path: Path) -> None:
    from ray_dit.engine.family_defaults import family_defaults

    engine = _engine(str(_saved(tmp_path / "flux")))
    card = family_defaults("FluxPipeline")
    assert card is not None and engine.defaults == card
    resolved = engine.resolve(GenerationRequest(prompt="x"))  # every sampling field left out
    assert (resolved.width, resolved.height, resolved.num_inference_steps) == (
        card.width,
        card.height,
        card.steps,
    )
    assert resolved.guidance_scale == card.guidance_scale
    # What a request gives wins over the card.
    asked = engine.resolve(
        GenerationRequest(prompt="x", width=64, height=64, num_inference_steps=3, guidance_scale=2)
    )
    assert (asked.width, asked.num_inference_steps, asked.guidance_scale) == (64, 3, 2)
