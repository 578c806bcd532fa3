"""The one environment reader, and the field declaration it reads.

Settings are frozen dataclasses whose fields say where they come from (:func:`from_env`), so name,
parser, default and meaning sit together. :class:`EnvReader` collects every problem, naming the
variable, its value (or ``<redacted>``) and what is allowed, so one restart fixes them all.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import SecretStr

from ray_dit.errors import ConfigError

T = TypeVar("T")
REDACTED = "<redacted>"


def from_env(name: str, parse: Callable[[Any], T], default: T, *, secret: bool = False, **meta: Any) -> T:
    """Declare a dataclass field read from variable ``name`` (after the reader's prefix)."""
    return field(default=default, metadata={"env": name, "parse": parse, "secret": secret, **meta})


def secret_from_env(name: str, *, strip: bool = True) -> Any:
    """A credential field: a ``SecretStr`` (``**********`` in any repr, str or ``asdict``; code that
    needs the value calls ``get_secret_value()``), unset by default, ``<redacted>`` in errors."""
    return from_env(name, lambda raw: SecretStr(str(raw).strip() if strip else str(raw)), None, secret=True)


def as_secret(value: Any) -> SecretStr | None:
    """For ``__post_init__``: a plain str handed to a constructor is wrapped, never kept bare."""
    return value if value is None or isinstance(value, SecretStr) else SecretStr(str(value))


def parse_items(
    values: Mapping[str, Any], parsers: Mapping[str, Callable[[Any], Any]], where: str, problems: list[str]
) -> dict[str, Any]:
    """Parse the keys of ``values`` that ``parsers`` knows (None = absent), naming each bad one
    after ``where`` (``"limits."``, ``"cache_dit_params."``): for mappings, not the environment."""
    parsed: dict[str, Any] = {}
    for key, parse in parsers.items():
        if values.get(key) is not None:
            try:
                parsed[key] = parse(values[key])
            except ValueError as exc:
                problems.append(f"{where}{key}={values[key]!r}: must be {exc}")
    return parsed


@dataclass
class EnvReader:
    """Reads variables, collecting every problem instead of stopping at the first."""

    env: Mapping[str, str]
    problems: list[str] = field(default_factory=list)

    def is_set(self, name: str) -> bool:
        """Unset and empty are the same: a config file lists every variable, most left empty."""
        raw = self.env.get(name)
        return raw is not None and str(raw).strip() != ""

    def get(self, name: str, parse: Callable[[Any], T], default: T, secret: bool = False) -> T:
        if not self.is_set(name):
            return default
        raw = self.env[name]
        try:
            return parse(raw)
        except ValueError as exc:
            hidden = secret or ("://" in str(raw) and "@" in str(raw))  # a URL with user:password@
            self.problems.append(f"{name}={REDACTED if hidden else repr(raw)}: must be {exc}")
            return default

    def read(self, cls: type[T], prefix: str = "", fallback: T | None = None) -> T:
        """A ``cls`` whose :func:`from_env` fields are read; unset ones keep ``fallback``'s values."""
        values = {}
        for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
            if "env" in spec.metadata:
                default = spec.default if fallback is None else getattr(fallback, spec.name)
                meta = spec.metadata
                values[spec.name] = self.get(prefix + meta["env"], meta["parse"], default, meta["secret"])
        return cls(**values)

    def together(self, names: tuple[str, str], problem: str) -> None:
        """Record ``problem`` when one of the two variables is set without the other."""
        if self.is_set(names[0]) != self.is_set(names[1]):
            self.problems.append(problem)


def read_env(read: Callable[[EnvReader], T], env: Mapping[str, str] | None = None) -> T:
    """Run ``read`` over ``env`` (default: the process environment); one ConfigError for all."""
    reader = EnvReader(os.environ if env is None else env)
    value = read(reader)
    if reader.problems:
        raise ConfigError(reader.problems)
    return value
