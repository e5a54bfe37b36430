"""A project's own domains: referrers on them (or their subdomains) are navigation inside the
project's sites, not traffic sources (docs/enrichment.md, "Own domains"). Stored on `projects`
(migration 0017), read by ingest with the write-key lookup, set with `strata project set`."""

from __future__ import annotations

import re

import asyncpg

from libs.common.errors import StrataError

MAX_OWN_DOMAINS = 50
_HOST = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)


class DomainError(StrataError, ValueError):
    """A domain that cannot be one of a project's own (the message names it)."""

    code = "invalid_own_domain"


def parse_own_domains(text: str) -> tuple[str, ...]:
    """`example.com,shop.example.org` -> its hosts, lower case, without `www.` (empty text or
    `none`: no domain)."""
    if text.strip().lower() in ("", "none"):
        return ()
    hosts: list[str] = []
    for part in text.split(","):
        host = part.strip().lower().rstrip(".").removeprefix("www.")
        if not host:
            continue
        if "://" in host or "/" in host or not _HOST.match(host):
            raise DomainError(f"{part.strip()!r} is not a host name (e.g. example.com)")
        if host not in hosts:
            hosts.append(host)
    if len(hosts) > MAX_OWN_DOMAINS:
        raise DomainError(f"at most {MAX_OWN_DOMAINS} own domains per project")
    return tuple(hosts)


async def load_own_domains(
    conn: asyncpg.Connection | asyncpg.Pool, project_id: str
) -> tuple[str, ...]:
    row = await conn.fetchval("SELECT own_domains FROM projects WHERE id = $1", project_id)
    return tuple(row or ())


async def save_own_domains(
    conn: asyncpg.Connection, project_id: str, domains: tuple[str, ...]
) -> None:
    await conn.execute(
        "UPDATE projects SET own_domains = $2 WHERE id = $1", project_id, list(domains)
    )
