"""The engine: the only place that imports diffusers and cache_dit."""

from ray_dit.engine.engine import Engine, EngineOptions

__all__ = ["Engine", "EngineOptions"]
