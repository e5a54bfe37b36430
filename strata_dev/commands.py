"""The development commands of `strata`: `up` (the whole stack on one machine) and `demo` (realistic
traffic). They live here, not in the operator CLI, because a production image installs neither
this package nor the embedded servers it needs."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from libs.common import keys
from libs.common.settings import StackSettings
from strata_cli.local_stack import StackError, load_dev_json, say
from strata_cli.targets import CliError, check_project_id, connect_db, database_url
from strata_dev.demo import (
    DEMO_PROJECTS,
    DemoError,
    DemoPlan,
    IngestClient,
    IngestTarget,
    SendStats,
    iter_backfill,
    send_backfill,
    send_live,
    write_ndjson,
)
from strata_dev.embedded import EmbeddedError
from strata_dev.stack import StackState, load_state, prepare_data_dir, run_stack, save_state

# --- up -------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace, settings: StackSettings, env: Mapping[str, str]) -> int:
    data_dir = prepare_data_dir(settings)
    return asyncio.run(run_stack(settings, env, data_dir, demo=args.demo))


# --- demo -----------------------------------------------------------------------------------


def _demo_projects(count: int) -> tuple[str, ...]:
    if count < 1:
        raise CliError("--projects must be at least 1")
    extra = tuple(f"demo{i}" for i in range(len(DEMO_PROJECTS) + 1, count + 1))
    return (DEMO_PROJECTS + extra)[:count]


async def _demo_targets(
    settings: StackSettings, projects: tuple[str, ...], ingest_url: str, state: StackState
) -> dict[str, IngestTarget]:
    """Write keys of the demo projects: kept from `strata up` in the data dir, or created in
    the database (and added to `state`) for projects that have none yet."""
    missing = [p for p in projects if not state.keys.get(p, {}).get("write")]
    if missing:
        conn = await connect_db(database_url(settings))
        try:
            for project in missing:
                await keys.ensure_project(conn, project)
                _, secret = await keys.create_key(conn, project, "write", name="strata demo")
                state.keys.setdefault(project, {})["write"] = secret
        finally:
            await conn.close()
    return {p: IngestTarget(ingest_url, state.keys[p]["write"]) for p in projects}


def cmd_demo(args: argparse.Namespace, settings: StackSettings, env: Mapping[str, str]) -> int:
    projects = (args.project,) if args.write_key else _demo_projects(args.projects)
    for project in projects:
        check_project_id(project)
    if args.days < 1 or args.visitors < 0:
        raise CliError("--days must be at least 1 and --visitors not negative")
    plan = DemoPlan(
        projects=projects, days=args.days, visitors_per_day=args.visitors, seed=args.seed
    )
    if args.output:
        count = write_ndjson(plan, args.output, args.batch_size)
        print(f"wrote {count:,} events of {', '.join(projects)} to {args.output}")
        return 0

    data_dir = Path(settings.data_dir)
    ingest_url = args.ingest_url or load_dev_json(data_dir)["ingest_url"]
    state = load_state(data_dir)
    known_keys = msgspec.json.encode(state.keys)

    async def send(client: IngestClient) -> None:
        if args.backfill:
            say(f"demo: sending {args.days} day(s) of {', '.join(projects)} to {ingest_url}")
            await send_backfill(
                iter_backfill(plan, args.batch_size),
                client,
                concurrency=args.concurrency,
                progress=say,
                total_days=args.days,
            )
        if args.live:
            say(f"demo: live traffic, ~{args.live_rate:g} sessions/minute (Ctrl-C stops)")
            await send_live(
                client, projects, sessions_per_minute=args.live_rate, seed=args.seed, progress=say
            )

    async def run() -> SendStats:
        if args.write_key:
            targets = {args.project: IngestTarget(ingest_url, args.write_key)}
        else:
            targets = await _demo_targets(settings, projects, ingest_url, state)
        stats = SendStats()
        async with aiohttp.ClientSession() as http:
            sending = asyncio.create_task(send(IngestClient(http, targets, stats)))
            # Ctrl-C or SIGTERM end the demo where it is, with a summary rather than a
            # traceback; events ingest already acknowledged stay accepted.
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, sending.cancel)
            try:
                await sending
            except asyncio.CancelledError:
                say(f"demo: stopped ({stats.accepted:,} events accepted)")
        return stats

    try:
        stats = asyncio.run(run())
    except DemoError as exc:
        raise CliError(str(exc)) from None
    finally:
        if data_dir.is_dir() and msgspec.json.encode(state.keys) != known_keys:
            save_state(data_dir, state)  # new keys: reused by the next `strata demo`
    if stats.rejected:
        raise CliError(f"{stats.rejected:,} events rejected; first: {stats.first_rejection}")
    return 0


def add_commands(commands: Any, common: argparse.ArgumentParser, settings: StackSettings) -> None:
    """Register `up` and `demo` on the `strata` parser; defaults of `demo` come from settings."""
    up = commands.add_parser(
        "up", parents=[common], help="run the whole stack in the foreground (Ctrl-C stops it)"
    )
    up.add_argument("--demo", action="store_true", help="also stream demo traffic once ready")
    up.set_defaults(handler=cmd_up)

    demo = commands.add_parser(
        "demo", parents=[common], help="stream realistic demo traffic to a running stack"
    )
    demo.add_argument("--projects", type=int, default=len(DEMO_PROJECTS), help="how many sites")
    demo.add_argument("--days", type=int, default=settings.demo_days, help="days of history")
    demo.add_argument(
        "--visitors", type=int, default=settings.demo_visitors, help="daily visitors per project"
    )
    demo.add_argument("--seed", type=int, default=settings.demo_seed, help="same seed, same data")
    demo.add_argument(
        "--backfill",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send the history first",
    )
    demo.add_argument(
        "--live",
        action=argparse.BooleanOptionalAction,
        default=settings.demo_live,
        help="then keep sending live traffic until Ctrl-C",
    )
    demo.add_argument(
        "--live-rate",
        type=float,
        default=settings.demo_live_sessions_per_minute,
        help="live sessions per minute, all projects together",
    )
    demo.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    demo.add_argument("--batch-size", type=int, default=100, help="events per request")
    demo.add_argument("--output", help="write the history as NDJSON to this file, send nothing")
    demo.add_argument("--ingest-url", help="default: ingest_url of the local stack's dev.json")
    demo.add_argument("--write-key", help="send one project's traffic with this key")
    demo.add_argument("--project", default="demo", help="the project of --write-key")
    demo.set_defaults(handler=cmd_demo)


# Errors of the local stack that are the user's to fix: one line, no traceback.
USER_ERRORS: tuple[type[Exception], ...] = (StackError, EmbeddedError, DemoError)
