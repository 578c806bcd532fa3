"""Regional ``torch.compile`` of a pipeline's transformer(s): ``compile: true``.

Only the transformer's *repeated blocks* are compiled, each with ``Module.compile``, as diffusers
recommends (``ModelMixin.compile_repeated_blocks``, driven by the class attribute
``_repeated_blocks``). The blocks of one class share one compiled graph, so compiling costs one
block per class instead of the whole model, and a new resolution recompiles only those graphs.
Transformer classes that declare no ``_repeated_blocks`` (SD3, PixArt, CogVideoX, Mochi, ...)
get the blocks cache-dit caches compiled instead (``cache_dit_compat.cached_block_lists``).

Why this works with cache-dit: cache-dit replaces the transformer's block lists with its own
wrapper but calls each block *module* (``block(hidden_states, ...)``), and ``Module.compile``
lives on the module, so a compiled block stays compiled whether cache-dit is mounted before or
after (ray_dit mounts it lazily, on the first request with caching on). cache-dit's own
bookkeeping is marked ``torch.compiler.disable`` and stays eager.

Shapes: ``dynamic=None`` (torch's default). The first size compiles graphs specialised to it; the
first request at another size (or batch) recompiles each block graph once with that dimension
symbolic, and later sizes reuse those graphs. Listing a second size in ``warmup_sizes`` pays
that recompilation at start-up.

Compilation itself happens on the first call of each block, not here: what this module checks at
start-up is that torch.compile can build kernels at all on the transformer's device and dtype
(a C++ compiler for the CPU, Triton for CUDA), so a missing toolchain is a ConfigError naming
``compile`` when the replica starts, not a traceback on the first request. The replica's warm-up
generation then compiles the blocks before it reports ready.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ray_dit.engine.cache_dit_compat import cached_block_lists
from ray_dit.errors import ConfigError

#: What a ConfigError about compiling is reported against (the app's builder args).
SOURCE = "builder args"
Backend = str | Callable[..., Any]
RECOMPILE_LIMIT = 64


@dataclass
class CompiledBlocks:
    """What :func:`compile_transformer` compiled in one transformer (for logs and tests)."""

    transformer: str  # the pipeline attribute: "transformer" or "transformer_2"
    how: str  # "_repeated_blocks" or "cache-dit block lists"
    classes: list[str] = field(default_factory=list)
    count: int = 0


def transformers(pipe: Any) -> list[tuple[str, torch.nn.Module]]:
    """(attribute, module) for the pipeline's transformer and second expert (Wan 2.2), if any."""
    found = [(name, getattr(pipe, name, None)) for name in ("transformer", "transformer_2")]
    return [(name, module) for name, module in found if module is not None]


def repeated_blocks(pipe: Any, transformer: torch.nn.Module) -> tuple[str, list[torch.nn.Module]]:
    """The blocks to compile and where that list came from; ([], how) when none are known."""
    names = set(getattr(transformer, "_repeated_blocks", None) or ())
    if names:
        blocks = [m for m in transformer.modules() if type(m).__name__ in names]
        if blocks:
            return "_repeated_blocks", blocks
    seen: dict[int, torch.nn.Module] = {}
    for blocks in cached_block_lists(pipe, transformer) or []:
        for block in blocks:
            seen.setdefault(id(block), block)
    return "cache-dit block lists", list(seen.values())


def compile_transformer(
    pipe: Any,
    *,
    backend: Backend = "inductor",
    mode: str | None = None,
    fullgraph: bool = False,
    dynamic: bool | None = None,
    check: bool = True,
) -> list[CompiledBlocks]:
    """Compile the repeated blocks of every transformer of ``pipe`` in place (lazily: each block
    compiles on its first call). Raises ConfigError naming ``compile`` when a transformer has no
    block list to compile, or (``check``) when torch.compile cannot build kernels on its device.

    ``fullgraph=False``: a block torch cannot trace whole runs partly eager instead of failing
    its first request. Of the zoo's transformers only HiDream's blocks do not trace whole (their
    mixture-of-experts routing depends on the data), and with ``fullgraph=True`` they fail.
    """
    found = []
    for name, transformer in transformers(pipe):
        how, blocks = repeated_blocks(pipe, transformer)
        if not blocks:
            raise ConfigError(
                [
                    f"compile=true: {type(transformer).__name__} ({name}) declares no _repeated_blocks and "
                    "cache-dit knows no block list for it, so there is nothing to compile regionally; "
                    "set compile=false"
                ],
                SOURCE,
            )
        found.append((name, transformer, how, blocks))
    if check:
        for _, transformer, _, _ in found:
            check_toolchain(transformer, backend)
    _allow_recompiles()
    report = []
    for name, _, how, blocks in found:
        for block in blocks:
            block.compile(backend=backend, mode=mode, fullgraph=fullgraph, dynamic=dynamic)
        classes = sorted({type(b).__name__ for b in blocks})
        report.append(CompiledBlocks(name, how, classes, len(blocks)))
    return report


def _allow_recompiles() -> None:
    """Raise dynamo's per-function recompile limit (8) to RECOMPILE_LIMIT.

    All blocks of one class share one code object, so one limit. A size change, a batch change
    and stride variants each cost one recompile before the dimension turns symbolic (a short mix
    of sizes and batches took 6 of 8 here); past the limit dynamo silently runs the block eager.
    """
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))


def _probe(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """What every DiT block does, in miniature: a matmul and a fused pointwise tail."""
    return torch.nn.functional.gelu(x @ w + 1.0).sum(dim=-1)


def _parameter(module: torch.nn.Module) -> torch.Tensor | None:
    return next(iter(module.parameters()), None)


def check_toolchain(transformer: torch.nn.Module, backend: Backend = "inductor") -> None:
    """Compile and run a tiny function on the transformer's device and dtype; ConfigError naming
    ``compile`` with torch's own reason when that fails (no C++ compiler, no Triton, ...)."""
    weight = _parameter(transformer)
    device = weight.device if weight is not None else torch.device("cpu")
    dtype = weight.dtype if weight is not None and weight.is_floating_point() else torch.float32
    x = torch.ones(4, 8, device=device, dtype=dtype)
    try:
        with torch.inference_mode():
            torch.compile(_probe, backend=backend, fullgraph=True)(x, x.T.contiguous())
    except Exception as exc:  # torch raises many types here (InductorError, BackendCompilerFailed, ...)
        raise ConfigError([_toolchain_problem(exc, device, dtype, backend)], SOURCE) from exc


def _toolchain_problem(exc: BaseException, device: torch.device, dtype: torch.dtype, backend: Backend) -> str:
    reason = next(iter(_lines(exc)), type(exc).__name__)
    name = backend if isinstance(backend, str) else getattr(backend, "__name__", "custom")
    need = "a C++ compiler (g++ or clang++ on PATH, or CXX)" if device.type == "cpu" else "Triton"
    return (
        f"compile=true: torch.compile ({name}) cannot build kernels for {device.type} {dtype}: "
        f"{type(exc).__name__}: {reason}; it needs {need}, or set compile=false"
    )


def _lines(exc: BaseException) -> Iterator[str]:
    """The non-empty lines of an exception's message (torch appends advice after a blank line)."""
    return (line.strip() for line in str(exc).splitlines() if line.strip())


def compile_failure(exc: BaseException) -> ConfigError | None:
    """A ConfigError naming ``compile`` for an error torch.compile raised while compiling a block
    (the first call: the replica's warm-up), None for any other error. For callers that run the
    first generation at start-up and want the operator, not a traceback, to see it."""
    from torch._dynamo.exc import TorchDynamoException

    if not isinstance(exc, TorchDynamoException):
        return None
    reason = next(iter(_lines(exc)), type(exc).__name__)
    return ConfigError(
        [
            f"compile=true: torch.compile failed on the transformer's blocks: {type(exc).__name__}: {reason}; set compile=false"
        ],
        SOURCE,
    )
