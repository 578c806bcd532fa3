"""Input images of image-conditioned pipelines (edit, image to video): checked and decoded once.

A client's upload is bytes in a known raster format, never a path or a URL the server would
fetch. The size is read from the header before anything is decoded, so a small file that
would decode to gigapixels (a decompression bomb) is refused for what it claims to be.
"""

from __future__ import annotations

import io
from typing import Any

from ray_dit.errors import InvalidRequest

FORMATS = ("PNG", "JPEG", "WEBP")


def check_image(data: bytes, max_pixels: int, param: str = "image") -> tuple[int, int]:
    """(width, height) of an uploaded image; InvalidRequest naming ``param`` if it is not a PNG,
    JPEG or WebP picture of at most ``max_pixels``."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidRequest(f"{param}: the file is empty", param)
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, (width, height) = image.format, image.size
    except Image.DecompressionBombError:  # PIL's own guard, far above any limit of ours
        raise InvalidRequest(f"{param}: more than {max_pixels} pixels (RAY_DIT_MAX_PIXELS)", param) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise InvalidRequest(
            f"{param}: not an image in a supported format ({', '.join(FORMATS)})", param
        ) from None
    if fmt not in FORMATS:
        raise InvalidRequest(f"{param}: {fmt} images are not supported; send {', '.join(FORMATS)}", param)
    if width * height > max_pixels:
        raise InvalidRequest(
            f"{param}: {width}x{height} is more than {max_pixels} pixels (RAY_DIT_MAX_PIXELS)", param
        )
    return width, height


def decode_image(data: bytes, max_pixels: int, param: str = "image") -> Any:
    """The upload as a PIL RGB image (alpha dropped), after :func:`check_image`."""
    from PIL import Image

    check_image(data, max_pixels, param)
    with Image.open(io.BytesIO(data)) as image:
        try:
            return image.convert("RGB")
        except (OSError, ValueError):  # truncated or corrupt past the header
            raise InvalidRequest(f"{param}: the image data is damaged", param) from None


def placeholder_image(side: int = 64) -> bytes:
    """A small PNG (a red square on blue) where an input image is needed without a client's: the
    defaults of an image-conditioned model, and probes."""
    from PIL import Image

    picture = Image.new("RGB", (side, side), (20, 30, 120))
    picture.paste((220, 30, 30), (side // 4, side // 4, 3 * side // 4, 3 * side // 4))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
