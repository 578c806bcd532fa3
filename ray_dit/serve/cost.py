"""What one request costs a DiT replica, in *default requests*: the model's own default request
(its default size, steps and frames, ``n=1``) costs exactly 1.0.

The unit is chosen so that numbers stay readable and settings keep their meaning: a queue limit
of 8 still means eight default requests (what ``max_queued_requests`` meant), while a 129-frame
video or a 1024x1024 image on a model whose default is 512x512 counts as the many default
requests it is. The estimate is the work of the denoising loop, about steps x tokens x latent
frames x outputs, each taken relative to the model's default:

- tokens scale with width x height (the patch size cancels in the ratio);
- video frames count as *latent* frames, ``(frames - 1) // frame_step + 1``: the VAE compresses
  ``frame_step`` frames into one, so a 129-frame video at step 4 is 33 latent frames, not 129;
- every output of ``n`` runs its own denoise.

It is linear on purpose: attention grows with the square of the tokens, so very large requests
cost somewhat more than this says, but the ingress multiplies the cost by *measured* seconds per
unit (:class:`ray_dit.serve.admission.Backlog`), which absorbs the average. CFG's second branch,
cache-dit's skipped steps and input-image tokens are not counted: the edge does not know them.
Without model facts (the DiT has not answered ``describe`` yet) a request costs ``n``: requests
are counted, as before.
"""

from __future__ import annotations

from ray_dit.api import GenerationRequest
from ray_dit.serve.types import ModelInfo


def latent_frames(frames: int | None, frame_step: int) -> int:
    """Frames the transformer denoises: ``frames = k * frame_step + 1`` become ``k + 1``."""
    if not frames or frames <= 1:
        return 1
    return (frames - 1) // max(1, frame_step) + 1


def _ratio(value: int | None, default: int | None) -> float:
    """``value / default`` where both are known; 1.0 (the default's cost) otherwise."""
    if value and default:
        return value / default
    return 1.0


def request_cost(request: GenerationRequest, info: ModelInfo | None) -> float:
    """The request's work in default requests (the model's default request is 1.0)."""
    n = max(1, request.n)
    if info is None:
        return float(n)
    width, height = request.width or info.width, request.height or info.height
    pixels = width * height if width and height else None
    default_pixels = info.width * info.height if info.width and info.height else None
    steps = request.num_inference_steps or info.steps
    frames = latent_frames(request.num_frames or info.num_frames, info.frame_step)
    default_frames = latent_frames(info.num_frames, info.frame_step)
    return n * _ratio(steps, info.steps) * _ratio(pixels, default_pixels) * frames / default_frames
