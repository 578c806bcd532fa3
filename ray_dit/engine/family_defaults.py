"""Sampling defaults for real checkpoints, by diffusers pipeline class: what each family's model
card or official diffusers documentation uses when it generates.

A registered model brings its own :class:`ModelDefaults`; a hub id or local directory has none, and
the pipeline's ``__call__`` defaults are not always what the authors recommend (FluxPipeline
samples 28 steps where the FLUX.1-dev card uses 50; WanPipeline writes no frame rate). These
entries fill that gap. Every value comes from the source named on its line; a field the source
does not state is left None, so the pipeline's own default applies (``fps`` stays at
ModelDefaults' 16 unless the source names a frame rate).

One class can serve several checkpoints that want different settings; each entry says which
checkpoint it follows, and docs/models.md lists the variants that differ.
"""

from __future__ import annotations

from ray_dit.engine.registry import ModelDefaults

#: The 1:1 size in Qwen-Image's aspect-ratio table.
_QWEN_IMAGE_SQUARE = 1328

FAMILY_DEFAULTS: dict[str, ModelDefaults] = {
    # -- image --------------------------------------------------------------------------------
    # HF card black-forest-labs/FLUX.1-dev (diffusers example); diffusers docs api/pipelines/flux
    # ("guidance-distilled": 50 steps, guidance 3.5).
    "FluxPipeline": ModelDefaults(
        width=1024, height=1024, steps=50, guidance_scale=3.5, max_sequence_length=512
    ),
    # github black-forest-labs/flux2 README (FLUX.2 [dev] diffusers example: 50 steps, guidance 4).
    "Flux2Pipeline": ModelDefaults(steps=50, guidance_scale=4.0),
    # github black-forest-labs/flux2 src/flux2/util.py FLUX2_MODEL_INFO: the distilled [klein] 4B/9B
    # are fixed at 4 steps, guidance 1.0 (the *-base-* checkpoints want 50 steps, guidance 4.0).
    "Flux2KleinPipeline": ModelDefaults(steps=4, guidance_scale=1.0),
    # github QwenLM/Qwen-Image README (= HF card Qwen/Qwen-Image): 1:1 is 1328x1328, 50 steps,
    # true CFG 4.0 with negative prompt " " ("recommended if you don't use a negative prompt").
    "QwenImagePipeline": ModelDefaults(
        width=_QWEN_IMAGE_SQUARE,
        height=_QWEN_IMAGE_SQUARE,
        steps=50,
        true_cfg_scale=4.0,
        negative_prompt=" ",
    ),
    # diffusers docs api/pipelines/stable_diffusion/stable_diffusion_3 (SD3 medium example).
    "StableDiffusion3Pipeline": ModelDefaults(width=1024, height=1024, steps=28, guidance_scale=7.0),
    # diffusers docs api/pipelines/chroma (lodestones/Chroma1-HD example: 40 steps, guidance 3.0).
    "ChromaPipeline": ModelDefaults(steps=40, guidance_scale=3.0),
    # diffusers PixArtSigmaPipeline.__call__ docs (PixArt-Sigma-XL-2-1024-MS; resolution binning on).
    "PixArtSigmaPipeline": ModelDefaults(
        width=1024, height=1024, steps=20, guidance_scale=4.5, max_sequence_length=300
    ),
    # diffusers AuraFlowPipeline.__call__ docs (fal/AuraFlow): 1024x1024, 50 steps, guidance 3.5.
    "AuraFlowPipeline": ModelDefaults(width=1024, height=1024, steps=50, guidance_scale=3.5),
    # diffusers SanaPipeline.__call__ docs (Sana_1600M_1024px): 1024x1024, 20 steps, guidance 4.5.
    "SanaPipeline": ModelDefaults(
        width=1024, height=1024, steps=20, guidance_scale=4.5, max_sequence_length=300
    ),
    # github Alpha-VLLM/Lumina-Image-2.0 README (= HF card): 1024x1024, guidance 4.0, 50 steps
    # (and cfg_trunc_ratio=0.25, which ModelDefaults cannot carry: the pipeline's 1.0 applies).
    "Lumina2Pipeline": ModelDefaults(width=1024, height=1024, steps=50, guidance_scale=4.0),
    # github THUDM/CogView4 README (CogView4-6B, BF16 example): 1024x1024, guidance 3.5, 50 steps.
    "CogView4Pipeline": ModelDefaults(width=1024, height=1024, steps=50, guidance_scale=3.5),
    # diffusers ZImagePipeline example (Z-Image-Turbo): 1024x1024, 8 steps, guidance 0.0.
    "ZImagePipeline": ModelDefaults(width=1024, height=1024, steps=8, guidance_scale=0.0),
    # diffusers HiDreamImagePipeline example (HiDream-I1-Full): 1024x1024, guidance 5.0, 50 steps.
    "HiDreamImagePipeline": ModelDefaults(width=1024, height=1024, steps=50, guidance_scale=5.0),
    # -- video --------------------------------------------------------------------------------
    # Wan 2.1 T2V (diffusers docs api/pipelines/wan + WanPipeline example: 81 frames, guidance 5.0,
    # 16 fps; 832x480 and 50 steps are the pipeline's and Wan2.1's 480P T2V values). Chosen over
    # Wan 2.2 because every WanPipeline text-to-video checkpoint but TI2V-5B runs it: Wan2.2-T2V-A14B
    # (github Wan-Video/Wan2.2 wan/configs) wants 40 steps and guidance 4.0/3.0 (high/low-noise
    # expert) at 1280x720; TI2V-5B 1280x704, 121 frames, 24 fps, 50 steps, guidance 5.0.
    "WanPipeline": ModelDefaults(width=832, height=480, steps=50, num_frames=81, fps=16, guidance_scale=5.0),
    # diffusers SkyReelsV2Pipeline example (SkyReels-V2-T2V-14B-540P): 960x544, 97 frames, 50 steps,
    # guidance 6.0, 24 fps.
    "SkyReelsV2Pipeline": ModelDefaults(
        width=960, height=544, steps=50, num_frames=97, fps=24, guidance_scale=6.0
    ),
    # github Tencent-Hunyuan/HunyuanVideo README (sample_video.py --video-size 720 1280
    # --video-length 129 --infer-steps 50, embedded guidance 6.0; videos saved at 24 fps).
    "HunyuanVideoPipeline": ModelDefaults(
        width=1280, height=720, steps=50, num_frames=129, fps=24, guidance_scale=6.0
    ),
    # github Tencent-Hunyuan/HunyuanVideo-1.5 README (diffusers example: 121 frames, 50 steps,
    # 24 fps). Size comes from the checkpoint (480p or 720p) and CFG from its guider (scale 6).
    "HunyuanVideo15Pipeline": ModelDefaults(steps=50, num_frames=121, fps=24),
    # diffusers docs api/pipelines/cogvideox (guidance 6, 50 steps, 8 fps); size and frames come
    # from the checkpoint's config (CogVideoX-2b/5b: 720x480, 49 frames).
    "CogVideoXPipeline": ModelDefaults(steps=50, fps=8, guidance_scale=6.0),
    # diffusers docs api/pipelines/ltx_video (768x512, 161 frames, 50 steps, 24 fps) and github
    # Lightricks/LTX-Video README ("guidance scale: 3-3.5 are the recommended values").
    "LTXPipeline": ModelDefaults(width=768, height=512, steps=50, num_frames=161, fps=24, guidance_scale=3.0),
    # diffusers docs api/pipelines/ltx2 (Lightricks/LTX-2 stage 1: 768x512, 121 frames, 24 fps,
    # 30 steps, guidance 3.0).
    "LTX2Pipeline": ModelDefaults(
        width=768, height=512, steps=30, num_frames=121, fps=24, guidance_scale=3.0
    ),
    # diffusers docs api/pipelines/mochi (genmo/mochi-1-preview: 848x480, 85 frames, 50 steps,
    # guidance 4.5, 30 fps).
    "MochiPipeline": ModelDefaults(
        width=848, height=480, steps=50, num_frames=85, fps=30, guidance_scale=4.5
    ),
    # diffusers docs api/pipelines/allegro + AllegroPipeline example (rhymes-ai/Allegro: guidance
    # 7.5, max_sequence_length 512, 15 fps; size, frames and steps are the pipeline's).
    "AllegroPipeline": ModelDefaults(fps=15, guidance_scale=7.5, max_sequence_length=512),
    # Image-conditioned variants. FLUX.1 Kontext: diffusers docs api/pipelines/flux example
    # (guidance 2.5); the output size follows the input image unless a request gives one.
    "FluxKontextPipeline": ModelDefaults(steps=28, guidance_scale=2.5, max_sequence_length=512),
    # Qwen-Image-Edit: the diffusers example (50 steps) and the Qwen/Qwen-Image-Edit Space's app.py
    # (true CFG 4.0 with a negative prompt; " " as for Qwen-Image when none is given). The output
    # size follows the input image (about 1 MP) unless a request gives one. Its signature leaves
    # `image` optional, but it cannot run without one.
    "QwenImageEditPipeline": ModelDefaults(
        steps=50, true_cfg_scale=4.0, negative_prompt=" ", needs_image=True
    ),
    # LTX image to video: the LTX values above; its signature leaves `image` optional, but it
    # cannot run without one.
    "LTXImageToVideoPipeline": ModelDefaults(
        width=768, height=512, steps=50, num_frames=161, fps=24, guidance_scale=3.0, needs_image=True
    ),
}


def family_defaults(pipeline_class: str) -> ModelDefaults | None:
    """The published sampling defaults for a diffusers pipeline class name (``FluxPipeline``,
    ``WanPipeline``, ...), or None for a class listed nowhere above."""
    return FAMILY_DEFAULTS.get(pipeline_class)
