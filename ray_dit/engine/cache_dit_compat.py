"""Every use of cache-dit's private state, in one place. Checked against cache-dit 1.5.3.

ray_dit uses cache-dit's public API (``enable_cache``, ``refresh_context``, ``summary``,
``steps_mask``) everywhere else. One behaviour of that API is wrong for a server, and the fix
needs internals: ``refresh_context`` merges the new config into the one remembered from the
previous request and skips ``None`` fields, so a request without an SCM mask would inherit the
previous request's mask. ``tests/test_engine.py::test_cache_dit_internals_are_where_compat_expects``
fails loudly if a cache-dit release moves what this module touches.
"""

from __future__ import annotations

import copy
from typing import Any

CHECKED_VERSION = "1.5.3"


def remembered_configs(transformer: Any) -> list[dict[str, Any]]:
    """The init kwargs cache-dit keeps per cache context of ``transformer`` (mounted only)."""
    manager = transformer._context_manager
    return [manager.get_context(name)._init_kwargs for name in getattr(transformer, "_context_names", [])]


def replace_remembered_configs(transformer: Any, cache_config: Any, calibrator: Any) -> None:
    """Make the next ``refresh_context`` rebuild each context from exactly these configs.

    Replacing the remembered configs first turns cache-dit's merge into a plain replacement.
    """
    for remembered in remembered_configs(transformer):
        remembered["cache_config"] = copy.deepcopy(cache_config)
        remembered["calibrator_config"] = copy.deepcopy(calibrator)
