"""The trained ``demo:shapes`` model: its procedural world, its pixel judge and its loader.

Kept apart from ``ray_dit.engine`` so the engine's core stays free of demo-specific code; the
engine only registers the loader by name.
"""
