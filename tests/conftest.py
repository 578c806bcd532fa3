"""Shared fixtures. The Ray cluster is started once per session, and only if a test asks for it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from serve_helpers import RAY_ENV, free_port

if TYPE_CHECKING:
    from sink_helpers import FaultProxy

    from ray_dit.sink import FrameSink


# -- S3: a real moto server on loopback, a fault proxy in front of it, sinks closed after use ----


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    from sink_helpers import moto_server

    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(moto: str) -> str:
    from sink_helpers import new_bucket

    return new_bucket(moto)


@pytest.fixture
def proxy(moto: str) -> Iterator[FaultProxy]:
    from sink_helpers import FaultProxy

    with FaultProxy(moto) as running:
        yield running


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 512 KiB file system (tmpfs) for the spool, so a full disk is a real ENOSPC."""
    import subprocess

    mount = tmp_path / "small-disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {made.stderr!r}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def sinks() -> Iterator[list[FrameSink]]:
    """Collects the sinks a test makes and closes every one of them."""
    made: list[FrameSink] = []
    yield made
    for sink in made:
        sink.close(timeout=10)


# -- Ray Serve -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayServe:
    port: int
    url: str
    spool_dir: Path


@pytest.fixture(scope="session")
def ray_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayServe]:
    """A local Ray cluster (8 logical CPUs, no dashboard) with Serve's HTTP proxy on a free port."""
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    import ray
    from ray import serve

    spool = tmp_path_factory.mktemp("serve_spool")
    ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        object_store_memory=256 * 1024**2,
        runtime_env={"env_vars": {"RAY_DIT_SPOOL_DIR": str(spool), **RAY_ENV}},
        log_to_driver=False,
    )
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield RayServe(port=port, url=f"http://127.0.0.1:{port}", spool_dir=spool)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
