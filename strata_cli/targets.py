"""What every operator command needs: the servers it talks to (DATABASE_URL / NATS_URL, else the
local stack's dev.json) and the one-line user error."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import asyncpg

from libs.common.errors import StrataError
from libs.common.settings import StackSettings
from strata_cli.local_stack import dev_json_path, load_dev_json, redact

_PROJECT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class CliError(StrataError, RuntimeError):
    """A user error: printed as one line, exit code 1."""

    code = "cli_failed"


Command = Callable[[argparse.Namespace, StackSettings, Mapping[str, str]], int]


# --- where the running stack is ---------------------------------------------------------------


def database_url(settings: StackSettings) -> str:
    """DATABASE_URL, else the local stack's (from dev.json)."""
    if settings.database_url:
        return settings.database_url
    path = dev_json_path(Path(settings.data_dir))
    if path.exists():
        return load_dev_json(Path(settings.data_dir))["database_url"]
    raise CliError(
        f"DATABASE_URL is not set and there is no local stack ({path}): "
        "set DATABASE_URL or run `strata up`"
    )


def nats_url(settings: StackSettings) -> str:
    """NATS_URL, else the local stack's (from dev.json)."""
    if settings.nats_url:
        return settings.nats_url
    path = dev_json_path(Path(settings.data_dir))
    if path.exists():
        return load_dev_json(Path(settings.data_dir))["nats_url"]
    raise CliError(
        f"NATS_URL is not set and there is no local stack ({path}): set NATS_URL or run `strata up`"
    )


async def connect_db(url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(url, timeout=10)
    except asyncpg.InvalidCatalogNameError:
        raise CliError(f"database in {redact(url)} does not exist: run `strata migrate`") from None
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise CliError(f"cannot connect to PostgreSQL at {redact(url)}: {exc}") from None


def check_project_id(project: str) -> None:
    if not _PROJECT_ID.match(project):
        raise CliError(
            f"invalid project id {project!r}: use 1-63 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
