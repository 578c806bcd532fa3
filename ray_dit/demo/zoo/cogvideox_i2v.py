"""CogVideoX 1.5 image to video, tiny: ``CogVideoXImageToVideoPipeline`` with a
``CogVideoXTransformer3DModel`` of twice the latent channels in (8: the noisy video latents and the
input image's latents, channel-concatenated; 4 out), 2 expert-adaLN blocks, 2 heads of 16, 3D RoPE
(up to 512 px), 2x2x2 space-time patches and an ``ofs`` embedding, an ``AutoencoderKLCogVideoX`` of
demo:cogvideox-tiny's shape (4 latent channels, 8x spatial and 4x temporal compression) with 1.5's
``invert_scale_latents``, and demo:cogvideox-tiny's ``T5EncoderModel`` (width 32, 2 layers) and DPM
scheduler, all random. The input image is resized to the request's ``height`` x ``width`` and
encoded as the first latent frame (the other frames zero).

Stands for THUDM/CogVideoX1.5-5B-I2V (42 blocks of width 3072, T5-XXL, a 16-channel VAE; any
resolution). Its 2-frame temporal patches need an odd latent frame count: 8k+1 frames come out as
asked (9, 17; 81 for the real model), while 4k+1 with k odd come out as 4k+4 frames (5 -> 8,
13 -> 16), in the real model as here. Sizes above 512 px fail in the RoPE table (the real model's
reaches 2400 px). THUDM/CogVideoX-5b-I2V (1.0) differs in 2x2 patches and learned positional embeddings, which tie
it to 720x480: diffusers raises a ValueError for any other size.
"""

from __future__ import annotations

from typing import Any

import torch

from ray_dit.demo.tiny_components import freeze
from ray_dit.demo.zoo import cogvideox
from ray_dit.demo.zoo._t5_family import TEXT_LENGTH, video_defaults
from ray_dit.engine.registry import ModelSpec

SEED = 20261130 + 402


def build() -> Any:
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXTransformer3DModel

    components = cogvideox.build().components  # seeds its own weights; the VAE and transformer are replaced
    torch.manual_seed(SEED)
    vae = components["vae"]
    components["vae"] = type(vae).from_config(vae.config, invert_scale_latents=True)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=8,  # 4 noise + 4 image latent channels
        out_channels=4,
        time_embed_dim=32,
        ofs_embed_dim=32,  # added to the time embedding: its width
        text_embed_dim=32,
        num_layers=2,
        sample_width=64,  # with 2-frame patches (1.5): the RoPE grid's largest latent size, 512 px
        sample_height=64,
        sample_frames=9,
        patch_size=2,
        patch_size_t=2,  # 9 frames: 3 latent frames, padded to 4 by the pipeline
        temporal_compression_ratio=4,
        max_text_seq_length=TEXT_LENGTH,
        use_rotary_positional_embeddings=True,
    )
    freeze(components["vae"], transformer)
    components["transformer"] = transformer
    return CogVideoXImageToVideoPipeline(**components)


SPECS = (
    ModelSpec(
        "demo:cogvideox-i2v-tiny",
        build,
        video_defaults(64, 8, frames=9),
        "CogVideoX 1.5 image to video (image latents concatenated on channels), random weights",
        family="cogvideox",
        task="image-to-video",
    ),
)
