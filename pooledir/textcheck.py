"""Checks that a value is text pooledir can tokenize and store.

A Python ``str`` may hold lone surrogates (a broken JSON escape, or a
command-line argument that was not valid UTF-8): the tokenizer and sqlite
cannot encode them, and they would fail deep inside a write. They are
refused where the text comes in, with the position, so the caller can fix it.
"""

from __future__ import annotations

import re

from pooledir.errors import InputError

_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> int | None:
    """Index of the first lone surrogate in ``text``, or None when it is valid Unicode."""
    if text.isascii():  # constant time in CPython, and most text is
        return None
    m = _SURROGATE.search(text)
    return None if m is None else m.start()


def check_str(value: object, what: str, allow_blank: bool = True) -> str:
    """Return ``value`` if it is a string of valid Unicode, else raise :class:`InputError` naming ``what``."""
    if not isinstance(value, str):
        raise InputError(f"{what} must be a string, got {type(value).__name__} {_short(value)}")
    if not allow_blank and not value.strip():
        raise InputError(f"{what} is blank; give a non-empty string")
    at = lone_surrogate(value)
    if at is not None:
        raise InputError(
            f"{what} holds a lone surrogate {value[at]!r} at character {at}, which is not valid Unicode; "
            "fix the text's encoding (often a broken JSON escape such as a lone \\ud800)"
        )
    return value


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
