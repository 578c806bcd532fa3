"""Ray Serve deployments for ray_dit: ingress (HTTP + handle), DiT replica, frame sink, video jobs.

``build_app(args)`` (``ray_dit.serve.app:build_app``) is the entry point for ``serve run``,
``serve deploy``, KubeRay's ``serveConfigV2`` and notebooks (``serve.run(build_app({...}))``).
"""

from ray_dit.serve.app import AppArgs, build_app
from ray_dit.serve.types import GenerationOutput

__all__ = ["AppArgs", "GenerationOutput", "build_app"]
