"""The model zoo: a tiny, offline, random-weight build of every DiT family that diffusers ships
and cache-dit accelerates, each with the family's real pipeline, transformer, VAE and text
encoder classes (``demo:<family>-tiny``).

One module per family, each defining ``SPECS`` (a tuple of :class:`~ray_dit.engine.registry.ModelSpec`).
Modules are found by listing this package, so adding a family is adding a file. Nothing here is
imported until a model id is looked up, and a family is built only when it is asked for.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ray_dit.engine.registry import ModelSpec


def specs() -> list[ModelSpec]:
    """Every family module's ``SPECS``, in module-name order."""
    found: list[ModelSpec] = []
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.name.startswith("_"):
            continue
        found.extend(importlib.import_module(f"{__name__}.{module.name}").SPECS)
    return found
