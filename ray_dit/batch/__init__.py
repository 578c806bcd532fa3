"""Offline generation on Ray Data: a prompt dataset in, outputs, a manifest and an errors table
out, with the serving engine, settings, encoders, keys and S3 client (docs/batch.md).

Imports are lazy: ``import ray_dit.batch`` does not load Ray Data or torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray_dit.batch.job import generate, read_input
    from ray_dit.batch.summary import Summary

__all__ = ["Summary", "generate", "read_input"]


def __getattr__(name: str) -> Any:
    homes = {
        "generate": "ray_dit.batch.job",
        "read_input": "ray_dit.batch.job",
        "Summary": "ray_dit.batch.summary",
    }
    if name not in homes:
        raise AttributeError(name)
    return getattr(importlib.import_module(homes[name]), name)
