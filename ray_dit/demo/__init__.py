"""The demo models: ``demo:shapes`` (trained, the embedded default) and random-weight pipelines of
real architectures (``demo:flux-tiny``, ``demo:wan-tiny``, ...), all built offline.

They reach the engine through the ``ray_dit.models`` entry point (:func:`model_specs`), so the
engine never imports this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ray_dit.engine.registry import ModelSpec


def model_specs() -> list[ModelSpec]:
    """Every demo model (the ``ray_dit.models`` entry point)."""
    from ray_dit.demo import zoo
    from ray_dit.demo.random_models import SPECS
    from ray_dit.demo.shapes_model import SPEC

    return [SPEC, *SPECS, *zoo.specs()]
