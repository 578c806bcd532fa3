"""Frame sink: encode finished frames, spool them durably, drain them to S3, keep a manifest.

Imports are lazy so that light users (the spool in a helper process, the encoders) do not pay
for boto3; ``from ray_dit.sink import FrameSink`` works as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray_dit.sink.s3 import StorageError
    from ray_dit.sink.sink import FrameSink

__all__ = ["FrameSink", "StorageError"]


def __getattr__(name: str) -> Any:
    if name == "FrameSink":
        from ray_dit.sink.sink import FrameSink

        return FrameSink
    if name == "StorageError":
        from ray_dit.sink.s3 import StorageError

        return StorageError
    raise AttributeError(name)
