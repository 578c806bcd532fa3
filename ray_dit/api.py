"""Request and result types shared by the engine, the HTTP API, handle calls and the sink.

Plain dataclasses travel through Ray's object store cheaply (numpy frames are zero-copy on a
node); pydantic models live at the HTTP edge in ``ray_dit.serve``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ray_dit.config.overrides import CacheOverrides

OutputKind = Literal["image", "video"]
OUTPUT_FORMATS = ("png", "jpeg", "webp", "mp4")
IMAGE_FORMATS = ("png", "jpeg", "webp")
VIDEO_FORMATS = ("mp4",)
_SIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")


def parse_size(size: str) -> tuple[int, int]:
    """'WxH' -> (width, height); ValueError names the field and the expected form."""
    match = _SIZE_RE.match(str(size))
    if not match:
        raise ValueError(f"size={size!r}: must be 'WIDTHxHEIGHT', e.g. '1024x1024'")
    width, height = int(match.group(1)), int(match.group(2))
    if width <= 0 or height <= 0:
        raise ValueError(f"size={size!r}: width and height must be positive")
    return width, height


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: what the engine needs, already validated where it came in (HTTP body,
    handle call, command line), so lower layers trust it and never parse it again.

    ``None`` for a sampling field means "the model's own default".
    """

    prompt: str
    negative_prompt: str | None = None
    n: int = 1
    width: int | None = None
    height: int | None = None
    num_frames: int | None = None
    fps: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    true_cfg_scale: float | None = None
    seed: int = 1024
    cache: CacheOverrides = field(default_factory=CacheOverrides)
    output_format: str | None = None
    request_id: str = ""
    #: The input image of an image-conditioned model (edit, image to video): the uploaded file's
    #: bytes (PNG, JPEG or WebP), decoded by the engine.
    image: bytes | None = field(default=None, repr=False)

    def replace(self, **changes: Any) -> GenerationRequest:
        return dataclasses.replace(self, **changes)


@dataclass
class CacheStats:
    """What the cache did for one request (all zero when caching was off)."""

    enabled: bool = False
    config: str = "NONE"
    total_steps: int = 0
    computed_steps: int = 0
    cached_steps: int = 0
    cached_step_indices: list[int] = field(default_factory=list)
    cfg_cached_steps: int = 0
    cfg_cached_step_indices: list[int] = field(default_factory=list)
    residual_diffs: dict[int, float] = field(default_factory=dict)
    cfg_residual_diffs: dict[int, float] = field(default_factory=dict)
    skipped_block_fraction: float = 0.0
    secondary: CacheStats | None = None

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        # JSON object keys must be strings.
        data["residual_diffs"] = {str(k): v for k, v in self.residual_diffs.items()}
        data["cfg_residual_diffs"] = {str(k): v for k, v in self.cfg_residual_diffs.items()}
        if self.secondary is not None:
            data["secondary"] = self.secondary.as_dict()
        return data


@dataclass
class Timings:
    """Where one request's seconds went. One object travels with the request and each layer
    writes only its own fields, so no layer merges another's numbers."""

    queue_s: float = 0.0
    """Waiting for the denoise to start: Serve's queue (ingress), the replica's denoise thread
    (DiT) and the engine's lock (engine) each add their part."""
    denoise_s: float = 0.0
    """Engine: the denoising loop, from the lock to the last step's end."""
    decode_s: float = 0.0
    """Engine: the VAE decode after the last step."""
    postprocess_s: float = 0.0
    """Engine: float frames to uint8."""
    total_s: float = 0.0
    """Engine: its whole call, lock wait included."""
    replica_s: float = 0.0
    """DiT: from the request reaching the replica to its denoise slot being free again."""
    encode_s: float = 0.0
    """Sink: encoding every output."""
    spool_s: float = 0.0
    """Sink: writing the encoded outputs to the spool (the durable acknowledgement)."""
    store_s: float = 0.0
    """Sink: the whole store call (encode and spool: the acknowledgement)."""
    url_wait_s: float = 0.0
    """Ingress: the bounded wait for cloud URLs after the store acknowledged (``url`` responses
    and video jobs with S3 on; 0 otherwise). Before, ``store_s`` included it."""
    request_s: float = 0.0
    """Ingress: the whole request (a video job: from its creation to its end)."""

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass
class GenerationResult:
    """Frames and facts from one denoise.

    ``frames`` is uint8 ``[n_outputs, n_frames, H, W, 3]`` (n_frames is 1 for images).
    """

    frames: np.ndarray
    kind: OutputKind
    seed: int
    steps: int
    fps: int | None = None
    request_id: str = ""
    timings: Timings = field(default_factory=Timings)
    cache: CacheStats = field(default_factory=CacheStats)
    #: Outputs denoised in the same pipeline call (this request's and its batch-mates'); the
    #: cache statistics were decided over all of them.
    batch_size: int = 1
    #: What the user should know about the request (a prompt outside a small model's vocabulary).
    warnings: list[str] = field(default_factory=list)

    @property
    def width(self) -> int:
        return int(self.frames.shape[3])

    @property
    def height(self) -> int:
        return int(self.frames.shape[2])

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[1])


@dataclass
class StoredOutput:
    """One output after the frame sink spooled it: what the response and the job table need.

    ``url`` is the S3 URL only once the upload is confirmed (None while pending, and always None
    when S3 is off: serve it from ``/v1/images/{id}/content``). ``data`` carries the encoded bytes
    only when the caller asked for them (b64_json responses never wait for S3).
    """

    request_id: str
    index: int
    key: str
    format: str
    content_type: str
    extension: str
    num_bytes: int
    md5: str
    width: int
    height: int
    frames: int
    storage: Literal["s3", "local"]
    url: str | None = None
    fps: int | None = None
    encode_s: float = 0.0
    spool_s: float = 0.0
    created: float = 0.0
    data: bytes | None = field(default=None, repr=False)
