"""`strata project set/show`: an operator sets a project's privacy controls from the command
line, only the options given change, bad values get one clear line and change nothing."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest

from libs.common.privacy_policy import PrivacyPolicy, load_policy
from tests.integration.test_cli import assert_one_line_error, strata
from tests.support.project import TestProject

pytestmark = pytest.mark.infra


async def policy(pool: asyncpg.Pool, project: str) -> PrivacyPolicy:
    async with pool.acquire() as conn:
        return await load_policy(conn, project)


async def test_set_and_show_privacy_controls(
    database_url: str, pool: asyncpg.Pool, project: TestProject, tmp_path: Path
) -> None:
    assert await policy(pool, project.id) == PrivacyPolicy()  # a new project's defaults
    result = await strata(
        "project", "set", project.id, "--ip-policy", "truncate", "--consent-policy",
        "cookieless", "--scrub", "email,card,phone", "--scrub-regex", r"ACME-\d{6}",
        database_url=database_url, data_dir=tmp_path,
    )  # fmt: skip
    assert result.code == 0, result
    assert result.stdout.strip() == (
        "project acme: ip policy truncate, consent policy cookieless, scrub email,card,phone, "
        "scrub regexes 'ACME-\\\\d{6}'\nproject acme: own domains none"
    )
    assert await policy(pool, project.id) == PrivacyPolicy(
        ip_policy="truncate",
        consent_policy="cookieless",
        scrub_rules=("email", "card", "phone"),
        scrub_regexes=(r"ACME-\d{6}",),
    )

    # Only what is given changes; a regex is added to the current ones.
    again = await strata(
        "project", "set", project.id, "--ip-policy", "keep", "--scrub-regex", "secret",
        database_url=database_url, data_dir=tmp_path,
    )  # fmt: skip
    assert again.code == 0, again
    assert await policy(pool, project.id) == PrivacyPolicy(
        ip_policy="keep",
        consent_policy="cookieless",
        scrub_rules=("email", "card", "phone"),
        scrub_regexes=(r"ACME-\d{6}", "secret"),
    )
    cleared = await strata(
        "project", "set", project.id, "--scrub", "none", "--no-scrub-regex",
        "--own-domains", "Example.com, www.shop.example.org,example.com",
        database_url=database_url, data_dir=tmp_path,
    )  # fmt: skip
    assert cleared.code == 0, cleared
    assert cleared.stdout.splitlines()[-1] == (
        "project acme: own domains example.com,shop.example.org"
    )
    bad = await strata(
        "project", "set", project.id, "--own-domains", "https://example.com/",
        database_url=database_url, data_dir=tmp_path,
    )  # fmt: skip
    assert bad.code != 0 and "is not a host name" in bad.stderr

    shown = await strata(
        "project", "show", project.id, "--json", database_url=database_url, data_dir=tmp_path
    )
    assert shown.code == 0, shown
    assert json.loads(shown.stdout) == {
        "ip_policy": "keep",
        "consent_policy": "cookieless",
        "scrub_rules": [],
        "scrub_regexes": [],
        "own_domains": ["example.com", "shop.example.org"],
    }


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--scrub", "email,ssn"], "scrub rule must be one of email, card, phone, not 'ssn'"),
        (
            ["--scrub-regex", "(unclosed"],
            "scrub regex '(unclosed' is invalid: missing ), unterminated subpattern at position 0",
        ),
        (["--scrub-regex", ".*"], "scrub regex '.*' matches the empty string"),
    ],
)
async def test_bad_values_are_one_line_and_change_nothing(
    database_url: str,
    pool: asyncpg.Pool,
    project: TestProject,
    tmp_path: Path,
    args: list[str],
    error: str,
) -> None:
    result = await strata(
        "project", "set", project.id, "--ip-policy", "keep", *args,
        database_url=database_url, data_dir=tmp_path,
    )  # fmt: skip
    assert_one_line_error(result, error)
    assert await policy(pool, project.id) == PrivacyPolicy()


async def test_unknown_project_and_bad_choice(database_url: str, tmp_path: Path) -> None:
    missing = await strata(
        "project", "set", "nope", "--ip-policy", "keep",
        database_url=database_url, data_dir=tmp_path,
    )  # fmt: skip
    assert_one_line_error(
        missing,
        "no project 'nope': create it with `strata keys create --project nope --role write`",
    )
    bad = await strata(
        "project", "set", "nope", "--ip-policy", "hash",
        database_url=database_url, data_dir=tmp_path,
    )  # fmt: skip
    assert bad.code == 2 and "invalid choice: 'hash'" in bad.stderr
