"""Encoders round-trip; keys are server-built and allowlisted."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import datetime, timezone

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from ray_dit.sink import keys
from ray_dit.sink.encode import encode_output, resolve_format


def _frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)


def test_png_round_trips_to_the_same_pixels() -> None:
    frames = _frames(1, 17, 23)
    out = encode_output(frames, "image", "png")
    assert (out.content_type, out.extension, out.width, out.height, out.frames) == (
        "image/png",
        "png",
        23,
        17,
        1,
    )
    decoded = np.asarray(Image.open(io.BytesIO(out.data)).convert("RGB"))
    np.testing.assert_array_equal(decoded, frames[0])


@pytest.mark.parametrize(
    ("fmt", "ctype", "ext", "pil_format"),
    [("jpeg", "image/jpeg", "jpg", "JPEG"), ("webp", "image/webp", "webp", "WEBP")],
)
def test_lossy_images_decode_with_the_right_size(fmt: str, ctype: str, ext: str, pil_format: str) -> None:
    frames = np.full((1, 20, 30, 3), 128, dtype=np.uint8)
    out = encode_output(frames, "image", fmt)
    assert (out.content_type, out.extension) == (ctype, ext)
    image = Image.open(io.BytesIO(out.data))
    assert image.format == pil_format and image.size == (30, 20)
    assert np.abs(np.asarray(image.convert("RGB")).astype(int) - 128).max() <= 3


def test_png_level_changes_the_bytes_and_keeps_the_pixels() -> None:
    """Level 0 stores the pixels uncompressed, level 9 squeezes them; both decode the same."""
    y, x = np.mgrid[0:64, 0:96]
    frames = np.stack([x * 2, y * 3, (x + y) % 256], -1).astype(np.uint8)[None]  # compressible
    sizes = {}
    for level in (0, 1, 9):
        out = encode_output(frames, "image", "png", png_level=level)
        decoded = np.asarray(Image.open(io.BytesIO(out.data)).convert("RGB"))
        np.testing.assert_array_equal(decoded, frames[0])
        sizes[level] = len(out.data)
    assert sizes[0] > frames.nbytes  # stored, not deflated
    assert sizes[9] <= sizes[1] < sizes[0] / 4, sizes


def test_encoding_is_deterministic() -> None:
    frames = _frames(1, 16, 16)
    assert encode_output(frames, "image", "png").data == encode_output(frames, "image", "png").data
    video = _frames(4, 16, 16)
    assert (
        encode_output(video, "video", "mp4", fps=8).data == encode_output(video, "video", "mp4", fps=8).data
    )


def test_mp4_has_the_right_frame_count() -> None:
    frames = _frames(7, 32, 48)
    out = encode_output(frames, "video", None, fps=8)
    assert (out.format, out.content_type, out.extension, out.frames, out.fps) == (
        "mp4",
        "video/mp4",
        "mp4",
        7,
        8,
    )
    decoded = iio.imread(out.data, extension=".mp4", plugin="FFMPEG", index=None)
    assert decoded.shape == (7, 32, 48, 3)


def test_mp4_with_odd_sizes_is_padded_to_even() -> None:
    frames = _frames(3, 15, 21)
    out = encode_output(frames, "video", "mp4", fps=4)
    assert (out.width, out.height) == (22, 16)
    decoded = iio.imread(out.data, extension=".mp4", plugin="FFMPEG", index=None)
    assert decoded.shape == (3, 16, 22, 3)


_FORK_PROBE = """
import os, sys
import numpy as np
from ray_dit.sink.encode import encode_output
os.register_at_fork(after_in_child=lambda: open(sys.argv[1], "a").close())
encode_output(np.zeros((2, 16, 16, 3), np.uint8), "video", "mp4", fps=4)
"""


@pytest.mark.parametrize(("setting", "forks"), [(None, False), ("0", True)])
def test_mp4_encoder_starts_ffmpeg_without_running_fork_handlers(tmp_path, setting, forks) -> None:
    """The sink encodes inside a Ray worker full of gRPC threads, where a fork()ed child that runs
    their fork handlers can abort before exec (a broken pipe under load, seen in CI). ffmpeg must
    be started by vfork, which runs none. Python's own handlers are the ones a test can see; the
    user's explicit ``IMAGEIO_FFMPEG_NO_PREVENT_SIGINT=0`` is kept, and shows the probe works."""
    env = {k: v for k, v in os.environ.items() if k != "IMAGEIO_FFMPEG_NO_PREVENT_SIGINT"}
    if setting is not None:
        env["IMAGEIO_FFMPEG_NO_PREVENT_SIGINT"] = setting
    marker = tmp_path / "forked"
    subprocess.run([sys.executable, "-c", _FORK_PROBE, str(marker)], env=env, check=True, timeout=120)
    assert marker.exists() is forks


@pytest.mark.parametrize(
    ("kind", "fmt", "field"),
    [
        ("image", "mp4", "output_format"),
        ("video", "png", "output_format"),
        ("image", "gif", "output_format"),
        ("audio", "png", "kind"),
    ],
)
def test_format_and_kind_mismatches_name_the_field(kind: str, fmt: str, field: str) -> None:
    with pytest.raises(ValueError, match=field) as info:
        resolve_format(kind, fmt)
    if field == "output_format":
        assert "png/jpeg/webp" in str(info.value) or "mp4" in str(info.value)


def test_bad_frames_are_rejected() -> None:
    with pytest.raises(ValueError, match="frames"):
        encode_output(np.zeros((1, 8, 8, 3), dtype=np.float32), "image", "png")
    with pytest.raises(ValueError, match="frames"):
        encode_output(np.zeros((2, 8, 8, 3), dtype=np.uint8), "image", "png")
    with pytest.raises(ValueError, match="frames"):
        encode_output(np.zeros((1, 8, 8, 4), dtype=np.uint8), "image", "png")


def test_defaults_and_aliases() -> None:
    assert resolve_format("image", None) == "png"
    assert resolve_format("video", "") == "mp4"
    assert resolve_format("image", "JPG") == "jpeg"


def test_key_layout_uses_the_utc_date() -> None:
    when = datetime(2026, 1, 2, 23, 30, tzinfo=timezone.utc)
    assert keys.build_key("ray-dit/out", "abc123", 3, "png", when) == "ray-dit/out/2026/01/02/abc123_3.png"


@pytest.mark.parametrize(
    "request_id", ["../etc", "a/b", "", "x" * 129, "a b", "a.b", "ü", "a\x00b", "..", "id\n"]
)
def test_request_ids_outside_the_allowlist_are_rejected(request_id: str) -> None:
    with pytest.raises(ValueError, match="request_id"):
        keys.build_key("p", request_id, 0, "png")


@pytest.mark.parametrize("prefix", ["", "/abs", "a//b", "a/../b", "a/./b", "a b", "a/", "..", "a\\b"])
def test_bad_prefixes_are_rejected(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        keys.build_key(prefix, "r1", 0, "png")


def test_bad_index_and_extension_are_rejected() -> None:
    for index in (-1, 10_000, True, 1.0):
        with pytest.raises(ValueError, match="index"):
            keys.build_key("p", "r1", index, "png")  # type: ignore[arg-type]
    for extension in ("exe", "png/..", "", "PNG"):
        with pytest.raises(ValueError, match="extension"):
            keys.build_key("p", "r1", 0, extension)


def test_manifest_keys() -> None:
    assert keys.manifest_key("p/q", "part-1_a.parquet") == "p/q/manifest/part-1_a.parquet"
    with pytest.raises(ValueError):
        keys.manifest_key("p", "../part-1.parquet")
