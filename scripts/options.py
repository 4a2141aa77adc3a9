"""Option values checked one way: a one-line ``ConfigError`` naming the id, the value and the valid choices, with
the closest valid value when there is one (``--patch_merging legacyy`` -> did you mean 'legacy'?)."""

from __future__ import annotations

import difflib

from scripts.errors import ConfigError

TRUE_STRINGS, FALSE_STRINGS = ("true", "yes", "1"), ("false", "no", "0")


def choice(name: str, value, choices):
    """``value`` when it is one of ``choices``; otherwise a ``ConfigError`` with the closest valid value."""
    if value in choices:
        return value
    shown = ", ".join(repr(c) for c in choices)
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{name} {value!r} is not a valid choice: use one of {shown}{hint}")


def flag(name: str, value) -> bool:
    """A boolean id; the command line gives strings, so ``"false"`` must not count as true."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_STRINGS + FALSE_STRINGS:
        return value.strip().lower() in TRUE_STRINGS
    raise ConfigError(f"{name} {value!r} is not a valid choice: use true or false")
