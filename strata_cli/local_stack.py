"""Where a local stack (`strata up`) leaves its URLs and keys: `<data_dir>/dev.json`. Operator
commands read it when DATABASE_URL / NATS_URL are not set; `strata up` writes it."""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import msgspec

from libs.common.errors import StrataError


class StackError(StrataError, RuntimeError):
    """The local stack is missing or cannot start; the message says why and what to do."""

    code = "stack_failed"


def say(message: str) -> None:
    """Progress for the person at the terminal (stderr, so stdout stays machine-readable)."""
    print(f"strata: {message}", file=sys.stderr, flush=True)


def dev_json_path(data_dir: Path) -> Path:
    return data_dir / "dev.json"


def load_dev_json(data_dir: Path) -> dict[str, str]:
    """The running stack's URLs and keys, as `strata up` wrote them."""
    path = dev_json_path(data_dir)
    try:
        data = msgspec.json.decode(path.read_bytes(), type=dict[str, str])
    except FileNotFoundError:
        raise StackError(f"{path} not found: start the stack with `strata up` first") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise StackError(f"{path} is not valid: {exc}") from None
    return data


def redact(url: str) -> str:
    """A URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
