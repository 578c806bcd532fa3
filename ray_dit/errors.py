"""One exception hierarchy for every layer of ray_dit.

Each class says what the caller should do, so the HTTP edge maps errors by type (never by message
text or class name): a :class:`ConfigError` is an operator's mistake, an :class:`InvalidRequest`
the client's (400, naming ``param``), :class:`RequestCancelled` a caller that went away, and
:class:`Unavailable` a resource to retry later (503). All of them cross Ray's actor
boundaries intact (``__reduce__`` keeps the fields beyond the message), so a replica's error reaches the ingress
with the same type and ``param``.
"""

from __future__ import annotations


class RayDitError(Exception):
    """Base of every error ray_dit raises on purpose."""


class ConfigError(RayDitError, ValueError):
    """One or more settings are invalid; ``problems`` lists each as a sentence naming the setting."""

    def __init__(self, problems: list[str], source: str = "environment") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid ray_dit configuration ({source}):\n{lines}")

    def __reduce__(self) -> tuple:
        return (ConfigError, (self.problems, self.source))


class InvalidRequest(RayDitError, ValueError):
    """The request cannot be served as asked; ``param`` names the field at fault (OpenAI's ``param``)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __reduce__(self) -> tuple:
        return (InvalidRequest, (self.message, self.param))


class RequestCancelled(RayDitError):
    """The caller went away (or deleted its job); the denoise stopped at a step boundary."""


class Unavailable(RayDitError):
    """A resource is full or away for now (a backend, the disk): answer 503 with Retry-After.
    The message is written for the client; ``code`` is the error code it gets."""

    code = "unavailable"


class StorageUnavailable(Unavailable):
    """Storage could not be reached to read an output back."""
