"""Input images (ray_dit/inputs.py): what a client uploads is checked from its header before it is
decoded, and anything that is not a supported picture of allowed size is a 400 naming the field."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ray_dit.errors import InvalidRequest
from ray_dit.inputs import check_image, decode_image


def encoded(fmt: str, size: tuple[int, int] = (8, 6), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, "red" if mode != "P" else 1).save(buffer, format=fmt)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_supported_formats_decode_to_rgb(fmt: str) -> None:
    assert check_image(encoded(fmt), 10_000) == (8, 6)
    image = decode_image(encoded(fmt, mode="RGBA" if fmt != "JPEG" else "RGB"), 10_000)
    assert image.mode == "RGB" and image.size == (8, 6)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"not an image at all", "not an image"),
        (encoded("GIF", mode="P"), "GIF images are not supported"),
        (encoded("PNG", (200, 100)), "200x100 is more than 10000 pixels"),
        (png_claiming(60_000, 60_000), "more than 10000 pixels"),
        (png_claiming(100, 100), "damaged"),  # allowed size, no pixel data
    ],
)
def test_bad_uploads_name_the_field(data: bytes, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        decode_image(data, 10_000, param="input_reference")
    assert refused.value.param == "input_reference" and fragment in refused.value.message


def test_a_truncated_image_is_a_clear_error() -> None:
    data = encoded("PNG", (64, 64))
    with pytest.raises(InvalidRequest, match="image"):
        decode_image(data[: len(data) // 2], 10_000)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=256),
    prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF"]),
)
def test_any_bytes_are_either_an_image_or_an_invalid_request(data: bytes, prefix: bytes) -> None:
    try:
        decode_image(prefix + data, 10_000)
    except InvalidRequest as refused:
        assert refused.param == "image"
