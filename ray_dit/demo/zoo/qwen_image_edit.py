"""Qwen-Image-Edit, tiny: ``QwenImageEditPipeline`` (an input image plus an instruction) on
demo:qwen-image-tiny's transformer, VAE and Qwen2.5-VL encoder, with a ``Qwen2VLProcessor`` that
turns the input image into vision tokens for the encoder.

Stands for Qwen/Qwen-Image-Edit (the 20B Qwen-Image MMDiT; Qwen2.5-VL-7B sees the input image
too). The input image reaches the model twice: its VAE latents are appended to the noise tokens,
and the vision tower's tokens sit in the prompt (the template keeps them, dropping only the 64
system-prompt tokens). Like the real pipeline, the input is resized to about a megapixel at its
aspect ratio whatever the output size, so a 64x64 edit still encodes a 1024x1024 image (about 2 s
on 2 CPU cores, most of it the VAE).

The processor's image side is transformers' PIL backend (``Qwen2VLImageProcessorPil``), because
the default one and the video processor need torchvision, which ray_dit does not install;
:class:`_ImageOnlyProcessor` is the real ``Qwen2VLProcessor`` without a video processor (the
pipeline never passes videos).
"""

from __future__ import annotations

from typing import Any

from ray_dit.demo.zoo import qwen_image
from ray_dit.demo.zoo._qwen_text import qwen_tokenizer, template_tokens
from ray_dit.engine.registry import ModelDefaults, ModelSpec

#: Positions the encoder sees: the expanded image tokens of a megapixel input (about 1,340) and the
#: prompt; Qwen2.5-VL's own limit is far above.
MAX_TOKENS = 32768


def _processor(tokenizer: Any) -> Any:
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class _ImageOnlyProcessor(Qwen2VLProcessor):
        """``Qwen2VLProcessor`` with no video processor (its class needs torchvision)."""

        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return _ImageOnlyProcessor(
        image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer, video_processor=None
    )


def build() -> Any:
    """A Qwen-Image-Edit pipeline on demo:qwen-image-tiny's components (float32, CPU)."""
    from diffusers import QwenImageEditPipeline

    components = qwen_image.build().components
    pipe = QwenImageEditPipeline(
        scheduler=components["scheduler"],
        vae=components["vae"],
        text_encoder=components["text_encoder"],
        tokenizer=None,
        processor=None,
        transformer=components["transformer"],
    )
    template = pipe.prompt_template_encode
    system = template.split("<|vision_start|>")[0]  # what the pipeline drops from the encoding
    tokenizer = qwen_tokenizer([system], max_length=MAX_TOKENS)
    if template_tokens(tokenizer, system) != pipe.prompt_template_encode_start_idx:
        raise RuntimeError(
            f"system prompt is {template_tokens(tokenizer, system)} tokens, "
            f"the pipeline drops {pipe.prompt_template_encode_start_idx}"
        )
    pipe.register_modules(tokenizer=tokenizer, processor=_processor(tokenizer))
    return pipe


SPECS = (
    ModelSpec(
        "demo:qwen-image-edit-tiny",
        build,
        ModelDefaults(
            width=64,
            height=64,
            steps=8,
            max_sequence_length=32,
            true_cfg_scale=4.0,
            negative_prompt=" ",
            needs_image=True,  # the signature says optional; the pipeline fails without one
        ),
        "Qwen-Image-Edit image editing (input image as VAE latents and as vision tokens), true CFG, "
        "random weights",
        family="qwen-image",
        task="edit",
    ),
)
