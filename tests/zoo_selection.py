"""Which built-in models a zoo test module runs: ``RAY_DIT_ZOO`` = ``first`` (the default, what
``make test`` runs), ``rest`` (what ``make test-zoo`` runs; CI runs both, so every model is tested
in every CI run) or ``all``. Each module says which models are its ``first``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from ray_dit.engine.registry import ModelSpec

VARIABLE = "RAY_DIT_ZOO"


def first_of(specs: Iterable[ModelSpec], key: Callable[[ModelSpec], object]) -> set[str]:
    """The id of the first registered spec of each ``key`` value."""
    seen: dict[object, str] = {}
    for spec in specs:
        seen.setdefault(key(spec), spec.id)
    return set(seen.values())


def select(specs: list[ModelSpec], first: set[str]) -> list[ModelSpec]:
    """``specs`` as ``RAY_DIT_ZOO`` selects them, in registration order."""
    choice = os.environ.get(VARIABLE, "first")
    keep = {
        "first": lambda spec: spec.id in first,
        "rest": lambda spec: spec.id not in first,
        "all": lambda spec: True,
    }
    if choice not in keep:
        raise ValueError(f"{VARIABLE}={choice!r}: must be one of {', '.join(keep)}")
    return [spec for spec in specs if keep[choice](spec)]


def rest_only() -> bool:
    """True when this run is ``make test-zoo``'s: the module's unparametrized tests ran already."""
    return os.environ.get(VARIABLE) == "rest"
