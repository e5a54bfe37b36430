"""Text PostgreSQL cannot hold: the NUL character (U+0000), refused by `text` and `jsonb`. Both
HTTP services reject it at the door with the field named, rather than failing later."""

from __future__ import annotations

from typing import Any

NUL_PROBLEM = "contains a NUL character (\\u0000), which cannot be stored; remove it"
# In JSON a NUL can only arrive escaped (a raw one is malformed JSON), so text without this
# escape needs no walk at all.
_NUL_ESCAPE = b"\\u0000"


def may_hold_nul(raw: bytes) -> bool:
    """Cheap pre-check of JSON text: False means it holds no NUL character."""
    return _NUL_ESCAPE in raw or b"\x00" in raw


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
