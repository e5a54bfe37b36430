"""A project's privacy controls (docs/privacy.md): what ingest does with the client IP, with
events sent without analytics consent, and which values it redacts before publishing.

Stored on `projects` (migration 0009); read by ingest with the write-key lookup and set with
`strata project set`.
"""

from __future__ import annotations

import re

import asyncpg
import msgspec

from libs.common.errors import StrataError

IP_DROP = "drop"
IP_TRUNCATE = "truncate"
IP_KEEP = "keep"
IP_POLICIES = (IP_DROP, IP_TRUNCATE, IP_KEEP)

CONSENT_DROP = "drop"
CONSENT_COOKIELESS = "cookieless"
CONSENT_POLICIES = (CONSENT_DROP, CONSENT_COOKIELESS)

SCRUB_EMAIL = "email"
SCRUB_CARD = "card"
SCRUB_PHONE = "phone"
SCRUB_RULES = (SCRUB_EMAIL, SCRUB_CARD, SCRUB_PHONE)

# Custom patterns run on every string value of every event of the project: bound their number
# and size so one project's settings cannot make ingest slow for everyone.
MAX_SCRUB_REGEXES = 20
MAX_SCRUB_REGEX_CHARS = 500


class PolicyError(StrataError, ValueError):
    """A privacy setting that cannot be applied (the message names it)."""

    code = "invalid_privacy_policy"


class PrivacyPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """One project's privacy controls; the defaults are a new project's."""

    ip_policy: str = IP_DROP
    consent_policy: str = CONSENT_DROP
    scrub_rules: tuple[str, ...] = ()
    scrub_regexes: tuple[str, ...] = ()


DEFAULT_POLICY = PrivacyPolicy()


def check_policy(policy: PrivacyPolicy) -> PrivacyPolicy:
    """`policy` when every setting is valid; raises PolicyError naming the first bad one."""
    if policy.ip_policy not in IP_POLICIES:
        raise PolicyError(
            f"ip policy must be one of {', '.join(IP_POLICIES)}, not {policy.ip_policy!r}"
        )
    if policy.consent_policy not in CONSENT_POLICIES:
        raise PolicyError(
            f"consent policy must be one of {', '.join(CONSENT_POLICIES)}, "
            f"not {policy.consent_policy!r}"
        )
    for rule in policy.scrub_rules:
        if rule not in SCRUB_RULES:
            raise PolicyError(f"scrub rule must be one of {', '.join(SCRUB_RULES)}, not {rule!r}")
    if len(policy.scrub_regexes) > MAX_SCRUB_REGEXES:
        raise PolicyError(f"at most {MAX_SCRUB_REGEXES} scrub regexes per project")
    for pattern in policy.scrub_regexes:
        if not pattern or len(pattern) > MAX_SCRUB_REGEX_CHARS:
            raise PolicyError(f"a scrub regex must be 1 to {MAX_SCRUB_REGEX_CHARS} characters long")
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise PolicyError(f"scrub regex {pattern!r} is invalid: {exc}") from None
        if compiled.match(""):
            # An empty match would "redact" between every character of every value.
            raise PolicyError(f"scrub regex {pattern!r} matches the empty string")
    return policy


def parse_scrub_rules(text: str) -> tuple[str, ...]:
    """`email,card,phone` -> its rules (empty text or `none`: no rule)."""
    if text.strip().lower() in ("", "none"):
        return ()
    rules = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    check_policy(PrivacyPolicy(scrub_rules=rules))
    return rules


_SELECT = "SELECT ip_policy, consent_policy, scrub_rules, scrub_regexes FROM projects WHERE id = $1"


def policy_of(row: asyncpg.Record | None) -> PrivacyPolicy:
    """The policy held in a `projects` row with the four privacy columns."""
    if row is None:
        return DEFAULT_POLICY
    return PrivacyPolicy(
        ip_policy=row["ip_policy"],
        consent_policy=row["consent_policy"],
        scrub_rules=tuple(row["scrub_rules"]),
        scrub_regexes=tuple(row["scrub_regexes"]),
    )


async def load_policy(conn: asyncpg.Connection | asyncpg.Pool, project_id: str) -> PrivacyPolicy:
    """The project's privacy policy (the defaults for an unknown project)."""
    return policy_of(await conn.fetchrow(_SELECT, project_id))


async def save_policy(conn: asyncpg.Connection, project_id: str, policy: PrivacyPolicy) -> bool:
    """Store a checked policy on the project; False when the project does not exist."""
    check_policy(policy)
    status = await conn.execute(
        "UPDATE projects SET ip_policy = $2, consent_policy = $3, scrub_rules = $4,"
        " scrub_regexes = $5 WHERE id = $1",
        project_id,
        policy.ip_policy,
        policy.consent_policy,
        list(policy.scrub_rules),
        list(policy.scrub_regexes),
    )
    return bool(status == "UPDATE 1")
