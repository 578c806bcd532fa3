"""Plain data that travels between the deployments and back to a notebook.

Dataclasses pickle cheaply through Ray. Only :class:`GenerationOutput` keeps a reference to the
frames (an ``ObjectRef``), so pixels reach a notebook without ever being copied into the ingress.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ray_dit.api import CacheStats, GenerationResult, StoredOutput, Timings


@dataclass(frozen=True)
class ModelInfo:
    """What the ingress needs to know about the loaded model to validate requests early."""

    model: str
    kind: str
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    num_frames: int | None = None
    fps: int | None = None
    size_multiple: int = 16
    #: Video frame counts are k * frame_step + 1 (the VAE's temporal compression: 4, 6, 8).
    frame_step: int = 4
    #: "required", "optional" or None: whether the model takes an input image.
    image_input: str | None = None


@dataclass
class ResultMeta:
    """A :class:`GenerationResult` without its frames: what the ingress reports."""

    request_id: str
    kind: str
    seed: int
    steps: int
    width: int
    height: int
    num_frames: int
    fps: int | None = None
    timings: Timings = field(default_factory=Timings)
    cache: CacheStats = field(default_factory=CacheStats)
    batch_size: int = 1
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, result: GenerationResult, timings: Timings) -> ResultMeta:
        return cls(
            request_id=result.request_id,
            kind=result.kind,
            seed=result.seed,
            steps=result.steps,
            width=result.width,
            height=result.height,
            num_frames=result.num_frames,
            fps=result.fps,
            timings=timings,
            cache=result.cache,
            batch_size=result.batch_size,
            warnings=list(result.warnings),
        )


@dataclass
class StoreReply:
    """The frame sink's answer: where each output went, and the result's facts (with the sink's
    own timings filled in)."""

    outputs: list[StoredOutput]
    meta: ResultMeta
    #: How long a caller may wait for the cloud URLs (``wait_urls``): the sink's
    #: ``RAY_DIT_S3_URL_WAIT_S`` with S3 on, 0 with S3 off (there never is one).
    url_wait_s: float = 0.0


@dataclass
class GenerationOutput:
    """What ``handle.generate.remote(...).result()`` returns in a notebook.

    ``images`` (PIL) and ``frames`` (uint8 ``[n, frames, H, W, 3]``) are fetched from the object
    store on first use; ``urls`` are the cloud URLs of the outputs S3 confirmed within
    ``RAY_DIT_S3_URL_WAIT_S`` (None for the others, and always with S3 off: ``keys`` name them).
    """

    id: str
    kind: str
    seed: int
    steps: int
    width: int
    height: int
    timings: dict[str, float]
    cache: CacheStats
    urls: list[str | None]
    keys: list[str]
    fps: int | None = None
    #: Outputs denoised in the same pipeline call as this request's (its own included).
    batch_size: int = 1
    #: What the user should know (a prompt outside demo:shapes' vocabulary); empty otherwise.
    warnings: list[str] = field(default_factory=list)
    _frames_ref: Any = field(default=None, repr=False)
    _frames: Any = field(default=None, repr=False)

    @property
    def frames(self) -> Any:
        if self._frames is None and self._frames_ref is not None:
            import ray

            self._frames = ray.get(self._frames_ref).frames
        return self._frames

    @property
    def images(self) -> list[Any]:
        """The first frame of every output as a PIL image (every output, for images)."""
        from PIL import Image

        frames = self.frames
        return [] if frames is None else [Image.fromarray(output[0]) for output in frames]

    @property
    def videos(self) -> list[list[Any]]:
        """Every output as a list of PIL frames (videos)."""
        from PIL import Image

        frames = self.frames
        return [] if frames is None else [[Image.fromarray(f) for f in output] for output in frames]
