"""Frame sink: encode finished frames, spool them durably, drain them to S3, keep a manifest.
Imports are lazy, so light users (a helper process's spool, the encoders) do not pay for boto3."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray_dit.sink.s3 import StorageError
    from ray_dit.sink.sink import FrameSink

__all__ = ["FrameSink", "StorageError"]


def __getattr__(name: str) -> Any:
    homes = {"FrameSink": "ray_dit.sink.sink", "StorageError": "ray_dit.sink.s3"}
    if name not in homes:
        raise AttributeError(name)
    return getattr(importlib.import_module(homes[name]), name)
