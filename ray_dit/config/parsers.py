"""Value parsers: each returns the value or raises ``ValueError(<what is allowed>)``.

The reader adds the variable's name and value to that text, so an error says all three. Parsing
is stricter than SGLang's (which falls back silently): a typo is an error at start-up. Where the
intent is plain it is more forgiving: words in any case, surrounding whitespace ignored
(docs/configuration.md, "Same input, SGLang vs ray_dit", lists every difference).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
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


# SGLang reads only true/1 as true and anything else as false, so its 'yes' is silently false;
# these six words say what they mean, while 'on' or '2' are typos to report, not to guess.
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


def following(rules: Sequence[tuple[str, str]], allowed: str) -> Callable[[Any], str]:
    """Stripped text that breaks none of ``rules`` (``(rule, a regex that finds a break)``): the error
    names each rule broken, so a name refused for one reason of many (a bucket name) says which."""

    def parse(raw: Any) -> str:
        text = str(raw).strip()
        broken = [rule for rule, finds_break in rules if re.search(finds_break, text, re.DOTALL)]
        if broken:
            raise ValueError(f"{allowed}; it breaks: {'; '.join(broken)}")
        return text

    return parse
