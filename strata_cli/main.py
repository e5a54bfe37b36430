"""`strata`: the operator command line. `migrate`, `keys`, `users`, `project`, `dlq` and `tier`
operate on a running deployment (DATABASE_URL / NATS_URL, or the local stack's dev.json). The
development commands `up` and `demo` come from the `strata_dev` package when it is installed (a
checkout with `./just`), never from a production image.

User errors print one line (`strata: error: ...`) and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any

import asyncpg
import msgspec

from libs.common import db, keys, own_domains, privacy_policy
from libs.common.settings import SettingsError, StackSettings, from_env
from libs.common.subjects import Subjects
from strata_cli.local_stack import StackError, redact
from strata_cli.targets import (
    CliError,
    Command,
    check_project_id,
    connect_db,
    database_url,
    nats_url,
)
from strata_cli.users import add_user_commands

# --- migrate --------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace, settings: StackSettings, env: Mapping[str, str]) -> int:
    url = database_url(settings)

    async def run() -> list[str]:
        try:
            await db.ensure_database(url)
        except asyncpg.InsufficientPrivilegeError:
            pass  # not ours to create; it must exist
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise CliError(f"cannot connect to PostgreSQL at {redact(url)}: {exc}") from None
        conn = await connect_db(url)
        try:
            return await db.migrate(conn)
        except RuntimeError as exc:  # a migration edited after it was applied
            raise CliError(str(exc)) from None
        finally:
            await conn.close()

    applied = asyncio.run(run())
    if applied:
        for name in applied:
            print(f"applied {name}")
    else:
        print("database is up to date")
    return 0


# --- keys -----------------------------------------------------------------------------------


def cmd_keys_create(
    args: argparse.Namespace, settings: StackSettings, env: Mapping[str, str]
) -> int:
    role: str = args.role
    project: str | None = args.project
    if role not in keys.ROLES:
        raise CliError(f"--role must be one of {', '.join(keys.ROLES)}, not {role!r}")
    if project is None and role != "admin":
        raise CliError(f"a {role} key belongs to a project: pass --project")
    if project is not None:
        check_project_id(project)
    url = database_url(settings)

    async def run() -> tuple[keys.ApiKey, str]:
        conn = await connect_db(url)
        try:
            async with conn.transaction():
                if project is not None:
                    await keys.ensure_project(conn, project)
                return await keys.create_key(conn, project, role, args.name or "")
        except asyncpg.UndefinedTableError:
            raise CliError("the database has no Strata schema: run `strata migrate`") from None
        finally:
            await conn.close()

    key, secret = asyncio.run(run())
    scope = f"project {project}" if project else "every project"
    print(
        f"created {role} key {key.id} for {scope}; the secret below is shown only once",
        file=sys.stderr,
    )
    print(secret)
    return 0


def cmd_keys_list(args: argparse.Namespace, settings: StackSettings, env: Mapping[str, str]) -> int:
    url = database_url(settings)

    async def run() -> list[keys.ApiKey]:
        conn = await connect_db(url)
        try:
            return await keys.list_keys(conn, args.project)
        except asyncpg.UndefinedTableError:
            raise CliError("the database has no Strata schema: run `strata migrate`") from None
        finally:
            await conn.close()

    found = asyncio.run(run())
    if args.json:
        print(msgspec.json.encode(found).decode())
        return 0
    rows = [("ID", "PROJECT", "ROLE", "PREFIX", "NAME", "STATUS")]
    rows += [
        (k.id, k.project_id or "*", k.role, k.prefix, k.name, "revoked" if k.revoked else "active")
        for k in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def cmd_keys_revoke(
    args: argparse.Namespace, settings: StackSettings, env: Mapping[str, str]
) -> int:
    url = database_url(settings)

    async def run() -> bool:
        conn = await connect_db(url)
        try:
            return await keys.revoke_key(conn, args.key_id)
        finally:
            await conn.close()

    if not asyncio.run(run()):
        raise CliError(f"no active key with id {args.key_id!r} (see `strata keys list`)")
    print(f"revoked {args.key_id}")
    return 0


# --- project privacy controls ------------------------------------------------------------------


def _describe_domains(project: str, domains: tuple[str, ...]) -> str:
    return f"project {project}: own domains {','.join(domains) or 'none'}"


def _describe_policy(project: str, policy: privacy_policy.PrivacyPolicy) -> str:
    regexes = " ".join(repr(r) for r in policy.scrub_regexes) or "none"
    return (
        f"project {project}: ip policy {policy.ip_policy}, consent policy "
        f"{policy.consent_policy}, scrub {','.join(policy.scrub_rules) or 'none'}, "
        f"scrub regexes {regexes}"
    )


def cmd_project_set(
    args: argparse.Namespace, settings: StackSettings, env: Mapping[str, str]
) -> int:
    project: str = args.project
    check_project_id(project)
    url = database_url(settings)
    try:
        # Check what was given before touching the database.
        scrub_rules = (
            privacy_policy.parse_scrub_rules(args.scrub) if args.scrub is not None else None
        )
        privacy_policy.check_policy(
            privacy_policy.PrivacyPolicy(
                ip_policy=args.ip_policy or privacy_policy.IP_DROP,
                consent_policy=args.consent_policy or privacy_policy.CONSENT_DROP,
                scrub_regexes=tuple(args.scrub_regex or ()),
            )
        )
        domains = (
            own_domains.parse_own_domains(args.own_domains)
            if args.own_domains is not None
            else None
        )
    except (privacy_policy.PolicyError, own_domains.DomainError) as exc:
        raise CliError(str(exc)) from None

    async def run() -> tuple[privacy_policy.PrivacyPolicy, tuple[str, ...]]:
        conn = await connect_db(url)
        try:
            async with conn.transaction():
                if await conn.fetchval("SELECT 1 FROM projects WHERE id = $1", project) is None:
                    raise CliError(
                        f"no project {project!r}: create it with "
                        f"`strata keys create --project {project} --role write`"
                    )
                current = await privacy_policy.load_policy(conn, project)
                regexes = current.scrub_regexes
                if args.no_scrub_regex:
                    regexes = ()
                if args.scrub_regex:
                    regexes = tuple(dict.fromkeys((*regexes, *args.scrub_regex)))
                updated = msgspec.structs.replace(
                    current,
                    ip_policy=args.ip_policy or current.ip_policy,
                    consent_policy=args.consent_policy or current.consent_policy,
                    scrub_rules=current.scrub_rules if scrub_rules is None else scrub_rules,
                    scrub_regexes=regexes,
                )
                try:
                    await privacy_policy.save_policy(conn, project, updated)
                except privacy_policy.PolicyError as exc:
                    raise CliError(str(exc)) from None
                if domains is not None:
                    await own_domains.save_own_domains(conn, project, domains)
                return updated, await own_domains.load_own_domains(conn, project)
        except asyncpg.UndefinedColumnError:
            raise CliError("the database schema is out of date: run `strata migrate`") from None
        finally:
            await conn.close()

    policy, domains_now = asyncio.run(run())
    print(_describe_policy(project, policy))
    print(_describe_domains(project, domains_now))
    print(
        "ingest applies it within its key cache TTL (STRATA_KEY_CACHE_TTL_S, 30 s by default)",
        file=sys.stderr,
    )
    return 0


def cmd_project_show(
    args: argparse.Namespace, settings: StackSettings, env: Mapping[str, str]
) -> int:
    project: str = args.project
    check_project_id(project)
    url = database_url(settings)

    async def run() -> tuple[privacy_policy.PrivacyPolicy, tuple[str, ...]]:
        conn = await connect_db(url)
        try:
            if await conn.fetchval("SELECT 1 FROM projects WHERE id = $1", project) is None:
                raise CliError(f"no project {project!r}")
            return (
                await privacy_policy.load_policy(conn, project),
                await own_domains.load_own_domains(conn, project),
            )
        except asyncpg.UndefinedColumnError:
            raise CliError("the database schema is out of date: run `strata migrate`") from None
        finally:
            await conn.close()

    policy, domains = asyncio.run(run())
    if args.json:
        shown = {**msgspec.to_builtins(policy), "own_domains": list(domains)}
        print(msgspec.json.encode(shown).decode())
    else:
        print(_describe_policy(project, policy))
        print(_describe_domains(project, domains))
    return 0


# --- dlq --------------------------------------------------------------------------------------


def _dlq_call(settings: StackSettings, action: Callable[[Any, Subjects], Any]) -> Any:
    url = nats_url(settings)
    subjects = Subjects(settings.nats_prefix)

    async def run() -> Any:
        from nats.errors import NoServersError

        from libs.common.nats_io import connect

        try:
            nc = await asyncio.wait_for(connect(url, "strata-cli"), timeout=10)
        except (NoServersError, OSError, TimeoutError) as exc:
            raise CliError(f"cannot connect to NATS at {url}: {exc}") from None
        try:
            return await action(nc.jetstream(), subjects)
        finally:
            await nc.close()

    return asyncio.run(run())


def cmd_dlq_list(args: argparse.Namespace, settings: StackSettings, env: Mapping[str, str]) -> int:
    from libs.common.dead_letters import list_dead_letters

    letters = _dlq_call(settings, lambda js, subjects: list_dead_letters(js, subjects, args.limit))
    if args.json:
        print(msgspec.json.encode(letters).decode())
        return 0
    if not letters:
        print("the dead-letter queue is empty")
        return 0
    for letter in letters:
        origin = letter.original_subject
        if letter.original_seq is not None:
            origin += f" #{letter.original_seq}"
        if letter.event_id is not None:
            origin += f" (event {letter.event_id} only)"
        print(
            f"seq {letter.seq}  {letter.service}  {letter.failed_at or '-'}  {origin}  "
            f"{letter.size} bytes  deliveries={letter.deliveries or '-'}\n    {letter.reason}"
        )
    return 0


def cmd_dlq_replay(
    args: argparse.Namespace, settings: StackSettings, env: Mapping[str, str]
) -> int:
    from libs.common.dead_letters import replay_dead_letters

    if not args.all and not args.seq:
        raise CliError("say which dead letters to replay: --seq N (repeatable) or --all")
    if args.all and args.seq:
        raise CliError("--all and --seq exclude each other")
    seqs: list[int] | None = None if args.all else list(args.seq)
    replayed = _dlq_call(settings, lambda js, subjects: replay_dead_letters(js, subjects, seqs))
    print(f"replayed {replayed} dead letter(s)")
    if seqs is not None and replayed < len(set(seqs)):
        raise CliError(f"{len(set(seqs)) - replayed} of the given seqs are not in the DLQ")
    return 0


# --- tier -------------------------------------------------------------------------------------


def _parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise CliError(f"--day must be a date as YYYY-MM-DD, not {text!r}") from None


def cmd_tier_export(
    args: argparse.Namespace, settings: StackSettings, env: Mapping[str, str]
) -> int:
    """Export closed days as Parquet day files now (what the tiering service does each pass)."""
    from datetime import UTC, datetime, timedelta

    from libs.common.day_files import DayExport, export_pending_days
    from libs.common.object_store import object_store_from_settings
    from libs.common.observability import configure_logging
    from libs.common.settings import TieringSettings
    from services.tiering.day_export import day_export_settings

    try:
        tiering = from_env(TieringSettings, env)
    except SettingsError as exc:
        raise CliError(str(exc)) from None
    url = database_url(settings)
    tiering = msgspec.structs.replace(tiering, database_url=url, data_dir=settings.data_dir)
    days = [_parse_day(args.day)] if args.day else None
    today = datetime.now(UTC).date()
    if days and days[0] >= today:
        raise CliError(f"{days[0]} is not a closed UTC day yet (today is {today})")
    if args.project:
        check_project_id(args.project)
    configure_logging("strata-cli", "console", "warning")

    async def run() -> int:
        conn = await connect_db(url)
        try:
            if args.project and not await conn.fetchval(
                "SELECT 1 FROM projects WHERE id = $1", args.project
            ):
                raise CliError(f"there is no project {args.project!r}")
        finally:
            await conn.close()
        pool = await db.create_pool(url, min_size=1, max_size=2)
        store = object_store_from_settings(tiering)

        async def report(result: DayExport) -> None:
            where = f"{result.project_id} {result.day}"
            if result.skipped:
                print(f"{where}: skipped, another exporter is working on it")
            elif result.part is None:
                print(f"{where}: nothing new to export")
            else:
                print(
                    f"{where}: {result.part.kind} part {result.part.object_name}, "
                    f"{result.rows} rows, {result.bytes} bytes in {result.seconds:.2f} s"
                )

        try:
            outcome = await export_pending_days(
                pool,
                store,
                day_export_settings(tiering),
                grace=timedelta(seconds=tiering.day_export_grace_s),
                projects=[args.project] if args.project else None,
                days=days,
                on_day=report,
            )
        finally:
            await store.close()
            await pool.close()
        for merge in outcome.merges:
            if merge.part is not None:
                name = merge.part.object_name
                print(f"{merge.project_id} {merge.day}: late parts merged into {name}")
        if outcome.objects_deleted:
            print(f"deleted {outcome.objects_deleted} orphan or superseded object(s)")
        print(
            f"exported {outcome.parts} part(s), {outcome.rows} rows, {outcome.bytes} bytes"
            f" to {store.url}"
        )
        for project_id, day, error in outcome.failures:
            print(f"strata: error: {project_id} {day}: {error}", file=sys.stderr)
        return 1 if outcome.failures else 0

    return asyncio.run(run())


def _tiering_settings(settings: StackSettings, env: Mapping[str, str]) -> Any:
    """TieringSettings from the environment, pointed at the stack's database and data dir."""
    from libs.common.settings import TieringSettings

    try:
        tiering = from_env(TieringSettings, env)
    except SettingsError as exc:
        raise CliError(str(exc)) from None
    return msgspec.structs.replace(
        tiering, database_url=database_url(settings), data_dir=settings.data_dir
    )


async def _tier_pool(url: str, project: str | None) -> asyncpg.Pool:
    if project:
        check_project_id(project)
        conn = await connect_db(url)
        try:
            if not await conn.fetchval("SELECT 1 FROM projects WHERE id = $1", project):
                raise CliError(f"there is no project {project!r}")
        finally:
            await conn.close()
    return await db.create_pool(url, min_size=1, max_size=2)


def cmd_tier_run(args: argparse.Namespace, settings: StackSettings, env: Mapping[str, str]) -> int:
    """Run tier jobs now (export, cold, archive, retention, restores), as a tiering pass does."""
    from libs.common.object_store import object_store_from_settings
    from libs.common.observability import configure_logging
    from services.tiering.tier_jobs import TierJobs, parse_tier_jobs

    tiering = _tiering_settings(settings, env)
    try:
        jobs = parse_tier_jobs(args.job)
    except ValueError as exc:
        raise CliError(f"--job: {exc}") from None
    if "export" in jobs:
        code = cmd_tier_export(argparse.Namespace(project=args.project, day=None), settings, env)
        if code:
            return code
    configure_logging("strata-cli", "console", "warning")

    async def run() -> int:
        pool = await _tier_pool(tiering.database_url, args.project)
        store = object_store_from_settings(tiering)
        try:
            runs = await TierJobs(pool, store, None, jobs=jobs).run_once(
                projects=[args.project] if args.project else None
            )
        finally:
            await store.close()
            await pool.close()
        failed = 0
        for run in runs:
            print(
                f"{run.job}: {run.rows_moved} rows moved cold, {run.partitions_dropped} "
                f"partition(s) dropped, {run.dictionary_rows_deleted} unused page(s) and "
                f"source(s) deleted, "
                f"{run.parts_archived} file(s) archived, "
                f"{run.parts_deleted} file(s) deleted, {run.rows_deleted} hot rows deleted"
                f" in {run.seconds:.2f} s"
            )
            for project_id, day, error in run.failures:
                failed += 1
                print(f"strata: error: {run.job} {project_id} {day}: {error}", file=sys.stderr)
        return 1 if failed else 0

    return asyncio.run(run())


def cmd_tier_compact(
    args: argparse.Namespace, settings: StackSettings, env: Mapping[str, str]
) -> int:
    """Rebuild the indexes writes left loose now, as a tiering pass does (after an import)."""
    from libs.common.observability import configure_logging
    from services.tiering.index_compaction import compact_indexes

    tiering = _tiering_settings(settings, env)
    configure_logging("strata-cli", "console", "warning")

    async def run() -> int:
        pool = await _tier_pool(tiering.database_url, None)
        started = time.monotonic()
        try:
            report = await compact_indexes(
                pool, budget_s=math.inf, on_progress=lambda: print(".", end="", flush=True)
            )
        finally:
            await pool.close()
        if report.indexes:
            print()
        if report.skipped:
            raise CliError("another compaction is running (a tiering pass); try again later")
        mb = 2**20
        print(
            f"{report.indexes} index(es) rebuilt: {report.bytes_before / mb:.1f} MB ->"
            f" {report.bytes_after / mb:.1f} MB in {time.monotonic() - started:.1f} s"
            + (
                f"; {report.failed} given up (a lock wait ran out), retried next pass"
                if report.failed
                else ""
            )
        )
        return 1 if report.failed else 0

    return asyncio.run(run())


def cmd_tier_status(
    args: argparse.Namespace, settings: StackSettings, env: Mapping[str, str]
) -> int:
    """What each tier holds (objects, rows, bytes, date range, cost) and the pending work."""
    from libs.common.day_files.tier_summary import TierPrices, tier_summary
    from libs.common.settings import QuerySettings

    try:
        query = from_env(QuerySettings, env)
    except SettingsError as exc:
        raise CliError(str(exc)) from None
    prices = TierPrices(
        hot=query.price_hot_gb_month,
        cold=query.price_cold_gb_month,
        archive=query.price_archive_gb_month,
    )

    async def run() -> int:
        pool = await _tier_pool(database_url(settings), args.project)
        try:
            summary = await tier_summary(pool, args.project, prices)
        finally:
            await pool.close()
        if args.json:
            print(msgspec.json.encode(summary).decode())
            return 0
        print(f"{'tier':8} {'objects':>8} {'rows':>12} {'bytes':>14} {'B/event':>8}  days")
        for tier in summary.tiers:
            per_event = f"{tier.bytes_per_event:.1f}" if tier.bytes_per_event else "-"
            days = f"{tier.first_day}..{tier.last_day}" if tier.first_day else "-"
            print(
                f"{tier.tier:8} {tier.objects:>8} {tier.rows:>12} {tier.bytes:>14}"
                f" {per_event:>8}  {days}  ${tier.monthly_cost:.4f}/month"
            )
        pending = summary.pending
        print(
            f"pending: {pending.cold_days} day(s) to move cold, {pending.archive_parts} file(s)"
            f" to archive, {pending.retention_parts} past retention,"
            f" {pending.restores} restore(s) running"
        )
        return 0

    return asyncio.run(run())


def cmd_tier_restore(
    args: argparse.Namespace, settings: StackSettings, env: Mapping[str, str]
) -> int:
    """Start restoring a project's Archive-tier day files of a date range."""
    from libs.common.day_files.catalog import active_parts
    from libs.common.day_files.restores import request_restore
    from libs.common.object_store import object_store_from_settings
    from libs.common.observability import configure_logging

    tiering = _tiering_settings(settings, env)
    first, last = _parse_day(args.from_day), _parse_day(args.to_day)
    if first > last:
        raise CliError("--from must not be after --to")
    configure_logging("strata-cli", "console", "warning")

    async def run() -> int:
        pool = await _tier_pool(tiering.database_url, args.project)
        store = object_store_from_settings(tiering)
        try:
            parts = [
                p
                for p in await active_parts(pool, args.project, first, last)
                if p.storage_tier == "Archive"
            ]
            if not parts:
                print(f"{args.project} has no archived day files from {first} to {last}")
                return 0
            job = await request_restore(
                pool, store, args.project, parts, hours=args.hours or tiering.restore_hours
            )
        finally:
            await store.close()
            await pool.close()
        print(
            f"restore {job.restore_id}: {job.state}, {job.objects_restored}/{job.objects}"
            f" file(s) readable, days {job.first_day}..{job.last_day}"
        )
        return 0

    return asyncio.run(run())


# --- parser -----------------------------------------------------------------------------------


def _dev_tooling_missing(args: argparse.Namespace, settings: StackSettings, env: Any) -> int:
    raise CliError(
        f"`strata {args.command}` is development tooling (the strata_dev package and the dev "
        "dependency group), which this installation does not have: run it from a checkout "
        "with `./just up` / `./just demo`"
    )


def add_dev_commands(
    commands: Any, common: argparse.ArgumentParser, settings: StackSettings
) -> tuple[type[Exception], ...]:
    """`up` and `demo` from strata_dev when installed, else stand-ins that say why they are
    missing; returns the dev tooling's user-error types."""
    try:
        from strata_dev.commands import USER_ERRORS, add_commands
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("strata_dev"):
            raise
        for name in ("up", "demo"):
            stand_in = commands.add_parser(name, help="(development tooling, not installed)")
            stand_in.add_argument("rest", nargs=argparse.REMAINDER)
            stand_in.set_defaults(handler=_dev_tooling_missing)
        return ()
    add_commands(commands, common, settings)
    return USER_ERRORS


def build_parser(
    settings: StackSettings,
) -> tuple[argparse.ArgumentParser, tuple[type[Exception], ...]]:
    """The argument parser, and the user-error types of the commands it has."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        help="local stack directory (default: $STRATA_DATA_DIR or .strata); other commands "
        "read the running stack's dev.json there when DATABASE_URL/NATS_URL are not set",
    )
    parser = argparse.ArgumentParser(prog="strata", description="Strata analytics command line")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev_errors = add_dev_commands(commands, common, settings)

    migrate = commands.add_parser(
        "migrate", parents=[common], help="create the database if missing, apply migrations"
    )
    migrate.set_defaults(handler=cmd_migrate)

    key_commands = commands.add_parser("keys", help="API keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )
    create = key_commands.add_parser(
        "create", parents=[common], help="create a key (prints its secret once)"
    )
    create.add_argument("--project", help="project id (created when missing)")
    create.add_argument("--role", required=True, help="write (ingest), read (query) or admin")
    create.add_argument("--name", default="", help="a label to tell keys apart")
    create.set_defaults(handler=cmd_keys_create)
    listing = key_commands.add_parser("list", parents=[common], help="list keys (no secrets)")
    listing.add_argument("--project", help="only this project's keys")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    listing.set_defaults(handler=cmd_keys_list)
    revoke = key_commands.add_parser("revoke", parents=[common], help="revoke a key by id")
    revoke.add_argument("key_id", metavar="KEY_ID")
    revoke.set_defaults(handler=cmd_keys_revoke)

    add_user_commands(commands, common)

    project_commands = commands.add_parser(
        "project", help="project settings (privacy controls, own domains)"
    ).add_subparsers(dest="project_command", required=True, metavar="ACTION")
    project_set = project_commands.add_parser(
        "set",
        parents=[common],
        help="set privacy controls (docs/privacy.md) and own domains (docs/enrichment.md);"
        " options not given keep their value",
    )
    project_set.add_argument("project", metavar="PROJECT")
    project_set.add_argument(
        "--ip-policy", choices=privacy_policy.IP_POLICIES, help="client IP after enrichment"
    )
    project_set.add_argument(
        "--consent-policy",
        choices=privacy_policy.CONSENT_POLICIES,
        help="events sent without analytics consent",
    )
    project_set.add_argument(
        "--scrub", help="built-in scrub rules, comma-separated: email,card,phone (or none)"
    )
    project_set.add_argument(
        "--scrub-regex",
        action="append",
        help="also redact matches of this Python regex (repeatable; added to the current ones)",
    )
    project_set.add_argument(
        "--no-scrub-regex", action="store_true", help="remove the current custom regexes first"
    )
    project_set.add_argument(
        "--own-domains",
        help="the project's own sites, comma-separated (e.g. example.com,example.org; or none):"
        " referrers on them or their subdomains are internal navigation (docs/enrichment.md)",
    )
    project_set.set_defaults(handler=cmd_project_set)
    project_show = project_commands.add_parser(
        "show", parents=[common], help="show a project's privacy controls"
    )
    project_show.add_argument("project", metavar="PROJECT")
    project_show.add_argument("--json", action="store_true", help="JSON instead of text")
    project_show.set_defaults(handler=cmd_project_show)

    dlq_commands = commands.add_parser("dlq", help="dead-letter queue").add_subparsers(
        dest="dlq_command", required=True, metavar="ACTION"
    )
    dlq_list = dlq_commands.add_parser("list", parents=[common], help="show dead letters")
    dlq_list.add_argument("--limit", type=int, default=100)
    dlq_list.add_argument("--json", action="store_true", help="JSON instead of text")
    dlq_list.set_defaults(handler=cmd_dlq_list)
    replay = dlq_commands.add_parser(
        "replay", parents=[common], help="re-publish dead letters to their original subjects"
    )
    replay.add_argument("--seq", type=int, action="append", help="DLQ sequence (repeatable)")
    replay.add_argument("--all", action="store_true", help="replay every dead letter")
    replay.set_defaults(handler=cmd_dlq_replay)

    tier_commands = commands.add_parser("tier", help="storage tiers").add_subparsers(
        dest="tier_command", required=True, metavar="ACTION"
    )
    tier_export = tier_commands.add_parser(
        "export",
        parents=[common],
        help="export closed days (and late rows) as Parquet day files now",
    )
    tier_export.add_argument("--project", help="only this project (default: every project)")
    tier_export.add_argument(
        "--day", help="only this UTC day, YYYY-MM-DD (default: every closed day not exported)"
    )
    tier_export.set_defaults(handler=cmd_tier_export)
    tier_run = tier_commands.add_parser(
        "run", parents=[common], help="run tier jobs now (what a tiering pass does)"
    )
    tier_run.add_argument(
        "--job",
        default="all",
        help="export, cold, archive, retention, restores or all (comma-separated; default all)",
    )
    tier_run.add_argument("--project", help="only this project (default: every project)")
    tier_run.set_defaults(handler=cmd_tier_run)
    tier_compact = tier_commands.add_parser(
        "compact",
        parents=[common],
        help="rebuild loose indexes of closed days and rollups now (what a tiering pass does)",
    )
    tier_compact.set_defaults(handler=cmd_tier_compact)
    tier_status = tier_commands.add_parser(
        "status", parents=[common], help="objects, rows, bytes, days and cost per tier"
    )
    tier_status.add_argument("--project", help="only this project (default: every project)")
    tier_status.add_argument("--json", action="store_true", help="JSON instead of text")
    tier_status.set_defaults(handler=cmd_tier_status)
    tier_restore = tier_commands.add_parser(
        "restore", parents=[common], help="restore a project's archived days for reading"
    )
    tier_restore.add_argument("--project", required=True)
    tier_restore.add_argument("--from", dest="from_day", required=True, help="YYYY-MM-DD")
    tier_restore.add_argument("--to", dest="to_day", required=True, help="YYYY-MM-DD")
    tier_restore.add_argument("--hours", type=int, help="how long restored copies stay readable")
    tier_restore.set_defaults(handler=cmd_tier_restore)
    return parser, dev_errors


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `strata` console script."""
    env = dict(os.environ)  # read once; `up` hands it on to the services it starts
    try:
        settings = from_env(StackSettings, env)
    except SettingsError as exc:
        print(f"strata: error: {exc}", file=sys.stderr)
        sys.exit(2)
    parser, dev_errors = build_parser(settings)
    args = parser.parse_args(argv)
    if getattr(args, "data_dir", None):
        settings = msgspec.structs.replace(settings, data_dir=args.data_dir)
    handler: Command = args.handler
    user_errors: tuple[type[Exception], ...] = (CliError, StackError, *dev_errors)
    try:
        code = handler(args, settings, env)
    except user_errors as exc:
        print(f"strata: error: {exc}", file=sys.stderr)
        code = 1
    except (asyncpg.PostgresError, OSError) as exc:  # the server said no: say what it said
        print(f"strata: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
