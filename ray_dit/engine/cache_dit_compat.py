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


def pipeline_adapter(pipe: Any, transformer: Any) -> Any | None:
    """cache-dit's ``BlockAdapter`` for ``transformer`` in transformer-only mode, found by the
    *pipeline's* class name, for transformers whose own class name matches no registered prefix
    (SD3's ``SD3Transformer2DModel`` is registered as ``StableDiffusion3``); None when cache-dit
    knows neither (then ``enable_cache`` on the transformer says so)."""
    from cache_dit.caching.block_adapters import BlockAdapterRegister
    from cache_dit.caching.block_adapters.block_adapters import FakeDiffusionPipeline

    if BlockAdapterRegister.is_supported(transformer):
        return None
    name = type(pipe).__name__
    for prefix, factory in BlockAdapterRegister._adapters.items():
        if name.startswith(prefix):
            return factory(FakeDiffusionPipeline(transformer))
    return None


def cached_block_lists(pipe: Any, transformer: Any) -> list[Any] | None:
    """The block lists cache-dit caches in ``transformer`` (its adapter's ``blocks``), or None when
    cache-dit has no adapter for it. Built with ``skip_post_init``: nothing is patched."""
    import torch
    from cache_dit.caching.block_adapters import BlockAdapterRegister
    from cache_dit.caching.block_adapters.block_adapters import FakeDiffusionPipeline

    adapter = None
    if BlockAdapterRegister.is_supported(transformer):
        adapter = BlockAdapterRegister.get_adapter(transformer, skip_post_init=True)
    else:
        name = type(pipe).__name__
        factory = next((f for p, f in BlockAdapterRegister._adapters.items() if name.startswith(p)), None)
        if factory is not None:
            adapter = factory(FakeDiffusionPipeline(transformer), skip_post_init=True)
    if adapter is None:
        return None
    blocks = adapter.blocks
    return list(blocks) if not isinstance(blocks, torch.nn.ModuleList) else [blocks]
