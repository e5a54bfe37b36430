"""`strata users`: dashboard accounts and their role per project (docs/dashboard.md).

A password is generated and printed once unless `--password-stdin` reads one; only its argon2id
hash is stored. Resetting a password or removing a user ends their sessions at once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import asyncpg
import msgspec

from libs.common import users
from libs.common.settings import StackSettings
from strata_cli.targets import CliError, check_project_id, connect_db, database_url

T = TypeVar("T")
NO_ROLE = "none"


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    """(password, generated): read from stdin with --password-stdin, else a new random one."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        try:
            users.check_password(password)
        except users.UserError as exc:
            raise CliError(str(exc)) from None
        return password, False
    return users.generate_password(), True


def _run(settings: StackSettings, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    url = database_url(settings)

    async def run() -> T:
        conn = await connect_db(url)
        try:
            async with conn.transaction():
                return await work(conn)
        except users.UserError as exc:
            raise CliError(str(exc)) from None
        except asyncpg.UndefinedTableError:
            raise CliError("the database schema is out of date: run `strata migrate`") from None
        finally:
            await conn.close()

    return asyncio.run(run())


def cmd_users_create(
    args: argparse.Namespace, settings: StackSettings, env: Mapping[str, str]
) -> int:
    if args.role:
        try:
            users.check_role(args.role)
        except users.UserError as exc:
            raise CliError(str(exc)) from None
    if args.project:
        check_project_id(args.project)
    if bool(args.project) != bool(args.role):
        raise CliError("--project and --role go together (or leave both out)")
    password, generated = _password(args)

    async def work(conn: asyncpg.Connection) -> users.User:
        user = await users.create_user(conn, args.email, password, name=args.name or "")
        if args.project:
            await users.set_role(conn, user.id, args.project, args.role)
        return user

    user = _run(settings, work)
    where = f" as {args.role} of {args.project}" if args.project else ""
    print(f"created user {user.email} ({user.id}){where}", file=sys.stderr)
    if generated:
        print("the password below is shown only once", file=sys.stderr)
        print(password)
    return 0


def cmd_users_list(
    args: argparse.Namespace, settings: StackSettings, env: Mapping[str, str]
) -> int:
    found = _run(settings, users.list_users)
    if args.json:
        out: list[dict[str, Any]] = [
            {**msgspec.to_builtins(user), "projects": msgspec.to_builtins(members)}
            for user, members in found
        ]
        print(msgspec.json.encode(out).decode())
        return 0
    rows = [("EMAIL", "ID", "NAME", "PROJECTS")]
    rows += [
        (
            user.email,
            user.id,
            user.name,
            ", ".join(f"{m.project_id}:{m.role}" for m in members) or "-",
        )
        for user, members in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_users_set_role(
    args: argparse.Namespace, settings: StackSettings, env: Mapping[str, str]
) -> int:
    check_project_id(args.project)
    if args.role != NO_ROLE:
        try:
            users.check_role(args.role)
        except users.UserError as exc:
            raise CliError(f"{exc} (or {NO_ROLE} to remove the membership)") from None

    async def work(conn: asyncpg.Connection) -> str:
        user = await users.require_user(conn, args.email)
        if args.role == NO_ROLE:
            if not await users.remove_membership(conn, user.id, args.project):
                raise CliError(f"{user.email} is not a member of {args.project}")
            return f"{user.email} is no longer a member of {args.project}"
        await users.set_role(conn, user.id, args.project, args.role)
        return f"{user.email} is now {args.role} of {args.project}"

    print(_run(settings, work))
    return 0


def cmd_users_remove(
    args: argparse.Namespace, settings: StackSettings, env: Mapping[str, str]
) -> int:
    async def work(conn: asyncpg.Connection) -> str:
        user = await users.require_user(conn, args.email)
        await users.remove_user(conn, user.id)
        return user.email

    print(f"removed {_run(settings, work)} (their sessions ended)")
    return 0


def cmd_users_reset_password(
    args: argparse.Namespace, settings: StackSettings, env: Mapping[str, str]
) -> int:
    password, generated = _password(args)

    async def work(conn: asyncpg.Connection) -> str:
        user = await users.require_user(conn, args.email)
        await users.set_password(conn, user.id, password)
        return user.email

    email = _run(settings, work)
    print(f"new password set for {email}; their sessions ended", file=sys.stderr)
    if generated:
        print("the password below is shown only once", file=sys.stderr)
        print(password)
    return 0


def add_user_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """`strata users create|list|set-role|remove|reset-password`."""
    user_commands = commands.add_parser("users", help="dashboard users and roles").add_subparsers(
        dest="users_command", required=True, metavar="ACTION"
    )
    stdin_help = "read the password from the first line of stdin instead of generating one"
    create = user_commands.add_parser(
        "create", parents=[common], help="create a user (prints a generated password once)"
    )
    create.add_argument("email", metavar="EMAIL")
    create.add_argument("--project", help="make the user a member of this project...")
    create.add_argument("--role", help="...with this role: viewer, analyst or admin")
    create.add_argument("--name", default="", help="the user's display name")
    create.add_argument("--password-stdin", action="store_true", help=stdin_help)
    create.set_defaults(handler=cmd_users_create)
    listing = user_commands.add_parser("list", parents=[common], help="users and their roles")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    listing.set_defaults(handler=cmd_users_list)
    set_role = user_commands.add_parser(
        "set-role", parents=[common], help="set a user's role in a project (none: remove)"
    )
    set_role.add_argument("email", metavar="EMAIL")
    set_role.add_argument("--project", required=True)
    set_role.add_argument("--role", required=True, help="viewer, analyst, admin or none")
    set_role.set_defaults(handler=cmd_users_set_role)
    remove = user_commands.add_parser("remove", parents=[common], help="delete a user")
    remove.add_argument("email", metavar="EMAIL")
    remove.set_defaults(handler=cmd_users_remove)
    reset = user_commands.add_parser(
        "reset-password",
        parents=[common],
        help="set a new password (generated unless --password-stdin); ends their sessions",
    )
    reset.add_argument("email", metavar="EMAIL")
    reset.add_argument("--password-stdin", action="store_true", help=stdin_help)
    reset.set_defaults(handler=cmd_users_reset_password)
