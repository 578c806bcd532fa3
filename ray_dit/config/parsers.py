"""Value parsers: each returns the value or raises ``ValueError(<what is allowed>)``.

The reader adds the variable's name and value to that text, so an error says all three. Parsing
is stricter than SGLang's (which falls back silently): a typo is an error at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def checked(convert: Callable[[str], T], ok: Callable[[T], bool], allowed: str) -> Callable[[Any], T]:
    """A parser: ``convert`` the stripped text, then require ``ok``; any failure says ``allowed``.

    Text goes through ``str`` first, so JSON's 1.5 or true is refused as an integer, never cut.
    """

    def parse(raw: Any) -> T:
        try:
            value = convert(str(raw).strip())
        except (ValueError, KeyError):
            raise ValueError(allowed) from None
        if not ok(value):
            raise ValueError(allowed)
        return value

    return parse


# Only the six words SGLang documents: 'on' or '2' are typos to report, not to guess.
parse_bool = checked(
    lambda text: BOOL_WORDS[text.lower()], lambda _: True, "one of true/false/1/0/yes/no (any case)"
)


def int_between(lowest: int, highest: int | None, allowed: str) -> Callable[[Any], int]:
    return checked(int, lambda v: lowest <= v and (highest is None or v <= highest), allowed)


def int_at_least(minimum: int, allowed: str | None = None) -> Callable[[Any], int]:
    return int_between(minimum, None, allowed or f"an integer >= {minimum}")


def number_above(minimum: float, *, inclusive: bool = False) -> Callable[[Any], float]:
    """Finite numbers above ``minimum`` (or equal, if ``inclusive``): nan and inf are refused."""
    allowed = f"a number {'>=' if inclusive else '>'} {minimum:g}"
    return checked(
        float, lambda v: (v >= minimum if inclusive else v > minimum) and v != float("inf"), allowed
    )


def one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    """A word from ``choices``, in any case (SGLang lower-cases these too)."""
    return checked(str.lower, lambda text: text in choices, "one of " + "/".join(choices))


def matching(pattern: str, allowed: str, clean: Callable[[str], str] = str) -> Callable[[Any], str]:
    """Text that, once cleaned, matches ``pattern`` whole: names that end up in URLs and keys."""
    return checked(clean, lambda text: re.fullmatch(pattern, text) is not None, allowed)
