"""The base of every Strata exception, so each has a stable code.

`code` is a snake_case name, unique per class and never reused, that logs carry and
docs/architecture.md lists ("Errors"). `http_status`, when set, is what an HTTP API answers the
error with, its message written for the client (libs/common/http_errors.py maps it); None marks
an internal failure, which an API answers as a 500 without details and logs.
"""

from __future__ import annotations

from typing import Any, ClassVar

_CODES: dict[str, str] = {}  # code -> the class that owns it (module.qualname)


class StrataError(Exception):
    """A failure Strata names; subclasses declare their own `code`."""

    code: ClassVar[str] = "strata_error"
    http_status: int | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" not in cls.__dict__:
            raise TypeError(f"{cls.__qualname__} must declare its own `code`")
        owner = f"{cls.__module__}.{cls.__qualname__}"
        if _CODES.setdefault(cls.code, owner) != owner:
            raise TypeError(f"error code {cls.code!r} of {owner} is {_CODES[cls.code]}'s already")


def error_codes() -> dict[str, str]:
    """Every code declared so far -> the class that owns it."""
    return dict(_CODES)
