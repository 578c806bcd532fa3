"""Regional ``torch.compile`` of a pipeline's transformer (placeholder; being written)."""

from __future__ import annotations

from typing import Any


def compile_transformer(pipe: Any) -> None:
    raise NotImplementedError("compile: true is not implemented yet")
