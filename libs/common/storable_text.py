"""Text PostgreSQL cannot hold: the NUL character (U+0000), refused by `text` and `jsonb`. Both
HTTP services reject it at the door with the field named, rather than failing later."""

from __future__ import annotations

from typing import Any

NUL_PROBLEM = "contains a NUL character (\\u0000), which cannot be stored; remove it"
# In JSON a NUL can only arrive escaped (a raw one is malformed JSON), so text without this
# escape needs no walk at all.
_NUL_ESCAPE = b"\\u0000"


# Escapes walked one by one before the pre-check falls back to one substring search.
_ESCAPES_WALKED = 32


def may_hold_nul(raw: bytes) -> bool:
    """Cheap pre-check of JSON text: False means it holds no NUL character.

    Most JSON holds few or no escapes, so each backslash is found with memchr and only the
    escape it starts is looked at (the character after an escaped backslash is text, not an
    escape): far cheaper than searching the whole text for the six bytes of the NUL escape,
    whose last byte is as common as a zero digit. Text with many escapes gets that search."""
    if b"\x00" in raw:
        return True
    find = raw.find
    at = find(b"\\")
    for _ in range(_ESCAPES_WALKED):
        if at < 0:
            return False
        if raw.startswith(b"u0000", at + 1):
            return True
        at = find(b"\\", at + 2)
    return at >= 0 and find(_NUL_ESCAPE, at) >= 0


def nul_path(value: Any, path: str = "") -> str | None:
    """The path (`properties.k`, `steps[0].event`...) of the first string or key holding a NUL
    character in decoded JSON, or None."""
    if type(value) is str:
        return (path or "value") if "\x00" in value else None
    if type(value) is dict:
        for key, child in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                return f"{where.replace(chr(0), '?')} (the key)"
            found = nul_path(child, where)
            if found is not None:
                return found
    elif type(value) is list:
        for index, child in enumerate(value):
            found = nul_path(child, f"{path}[{index}]")
            if found is not None:
                return found
    return None
