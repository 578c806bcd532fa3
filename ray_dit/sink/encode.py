"""Encode one output's frames to the bytes that get stored.

The sink, not the GPU replica, does this work, so encoding time never counts against denoising.
Encoders are deterministic for the same frames (PNG, JPEG, WebP and libx264 all are), which keeps
the storage contract's "a retry rewrites identical bytes" true even when an output is re-encoded.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ray_dit.api import IMAGE_FORMATS, VIDEO_FORMATS
from ray_dit.config import StorageSettings

#: format -> (content type, file extension)
FORMAT_INFO: dict[str, tuple[str, str]] = {
    "png": ("image/png", "png"),
    "jpeg": ("image/jpeg", "jpg"),
    "webp": ("image/webp", "webp"),
    "mp4": ("video/mp4", "mp4"),
}
#: file extension -> content type (one to one, so a stored file's name tells its type)
CONTENT_TYPES = {extension: content_type for content_type, extension in FORMAT_INFO.values()}
DEFAULT_FORMAT = {"image": "png", "video": "mp4"}
JPEG_QUALITY = 92
WEBP_QUALITY = 90
MP4_QUALITY = 8  # imageio-ffmpeg's 0-10 scale; 8 is visually lossless for generated content
DEFAULT_FPS = 16

# imageio-ffmpeg starts ffmpeg with a Python ``preexec_fn`` (to keep Ctrl-C away from it) unless
# this is set, and a ``preexec_fn`` makes CPython fork() the whole calling process. In a Ray worker
# that process runs gRPC threads; the forked child runs their fork handlers, and under CPU load it
# can abort before it reaches exec, so the encode fails with a broken pipe. Without it CPython
# starts ffmpeg with vfork(), which runs no fork handlers. The price: a Ctrl-C sent to the
# worker's process group reaches ffmpeg too, which only happens when that worker is stopping.
os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")


@dataclass(frozen=True)
class EncodedOutput:
    """One encoded output and the facts the key, the upload and the manifest need."""

    data: bytes
    format: str
    content_type: str
    extension: str
    width: int
    height: int
    frames: int
    fps: int | None

    def facts(self) -> dict[str, Any]:
        """Format, size, frames and fps: shared by the manifest row and the StoredOutput."""
        return {name: getattr(self, name) for name in ("format", "width", "height", "frames", "fps")}


def resolve_format(kind: str, output_format: str | None) -> str:
    """Pick the format for ``kind``; None means the kind's default (png / mp4). A mismatch raises
    ValueError naming the field and the allowed values."""
    if kind not in DEFAULT_FORMAT:
        raise ValueError(f"kind={kind!r}: must be one of image/video")
    fmt = "" if output_format is None else str(output_format).strip().lower()
    fmt = {"": DEFAULT_FORMAT[kind], "jpg": "jpeg"}.get(fmt, fmt)  # blank: the default; an alias
    allowed = IMAGE_FORMATS if kind == "image" else VIDEO_FORMATS
    if fmt not in allowed:
        raise ValueError(
            f"output_format={output_format!r}: for {kind} outputs must be one of {'/'.join(allowed)}"
        )
    return fmt


def encode_output(
    frames: np.ndarray,
    kind: str,
    output_format: str | None = None,
    fps: int | None = None,
    *,
    png_level: int = StorageSettings.png_compress_level,
) -> EncodedOutput:
    """Encode one output, uint8 ``[n_frames, H, W, 3]``, as an image or an MP4 video."""
    fmt = resolve_format(kind, output_format)
    array = np.asarray(frames)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3 or 0 in array.shape:
        raise ValueError(
            f"frames: must be a non-empty uint8 array [n_frames, H, W, 3], got {array.dtype} {array.shape}"
        )
    rate = None
    if kind == "image":
        if array.shape[0] != 1:
            raise ValueError(f"frames: an image output has exactly 1 frame, got {array.shape[0]}")
        data = _encode_image(array[0], fmt, png_level)
    else:
        rate = int(fps) if fps else DEFAULT_FPS
        if rate <= 0:
            raise ValueError(f"fps={fps!r}: must be a positive integer")
        _, height, width, _ = array.shape
        if height % 2 or width % 2:  # yuv420p needs both even: repeat the last row/column, crop nothing
            array = np.pad(array, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        data = _encode_mp4(array, rate)
    count, height, width = (int(n) for n in array.shape[:3])
    return EncodedOutput(data, fmt, *FORMAT_INFO[fmt], width, height, count, rate)


def _encode_image(frame: np.ndarray, fmt: str, png_level: int) -> bytes:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame), mode="RGB")
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG", compress_level=png_level)
    elif fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, format="WEBP", quality=WEBP_QUALITY, method=4)
    return buffer.getvalue()


def _encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    import imageio.v3 as iio

    data = iio.imwrite(
        "<bytes>",
        frames,
        extension=".mp4",
        plugin="FFMPEG",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        quality=MP4_QUALITY,
        macro_block_size=1,
        ffmpeg_log_level="error",
    )
    if not data:
        raise RuntimeError("ffmpeg produced no MP4 data")
    return bytes(data)
