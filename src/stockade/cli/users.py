"""``stockade users``: add, list, show, disable, enable, remove users; their keys and passwords.

Every command is one transaction: through the running server's admin socket when it answers,
otherwise directly on the store (``--direct`` forces that).
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from stockade.core import InvalidInput
from stockade.core.errors import AlreadyExists, NotFound
from stockade.identity import SshKey, User
from stockade.workspace import claim_homes, guard_homes

from ._admin import AdminIdentity, admin_identity
from ._common import (
    JSON_OPTION,
    PurgeHome,
    ReuseHome,
    console,
    handle_errors,
    home_choice,
    print_json,
    print_table,
    read_text_arg,
    run_async,
    settings,
)

__all__ = ["app", "key_to_dict", "user_to_dict"]

app = typer.Typer(help="Manage users, their SSH keys and passwords.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage a user's SSH public keys.", no_args_is_help=True)
password_app = typer.Typer(help="Manage a user's password.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(password_app, name="password")

T = TypeVar("T")

Direct = Annotated[
    bool,
    typer.Option("--direct", help="Open the store directly even if `stockade up` is running."),
]


def _with_identity(direct: bool, action: Callable[[AdminIdentity], Awaitable[T]]) -> T:
    async def run() -> T:
        async with admin_identity(settings(), direct=direct) as identity:
            return await action(identity)

    return run_async(run())


async def _user_exists(identity: AdminIdentity, name: str) -> bool:
    try:
        await identity.get_user(name)
    except NotFound:
        return False
    return True


def key_to_dict(key: SshKey) -> dict[str, Any]:
    return {
        "fingerprint": key.fingerprint,
        "key_type": key.key_type,
        "bits": key.bits,
        "comment": key.comment,
        "created_at": key.created_at.isoformat(),
    }


def user_to_dict(user: User) -> dict[str, Any]:
    return {
        "name": user.name,
        "display_name": user.display_name,
        "email": user.email,
        "roles": list(user.roles),
        "groups": list(user.groups),
        "disabled": user.disabled,
        "has_password": user.has_password,
        "totp_enabled": user.totp_enabled,
        "created_at": user.created_at.isoformat(),
        "keys": [key_to_dict(k) for k in user.keys],
    }


def _key_lines(sources: list[str]) -> list[str]:
    lines: list[str] = []
    for source in sources:
        text = read_text_arg(source, field=f"--ssh-key {source}")
        found = [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        if not found:
            raise InvalidInput(f"--ssh-key {source}", "holds no public key")
        lines.extend(found)
    return lines


@app.command("add")
@handle_errors
def add(
    name: Annotated[str, typer.Argument(help="Login name (lowercase, up to 32 characters).")],
    role: Annotated[
        list[str] | None, typer.Option("--role", "-r", help="Role; repeat for several.")
    ] = None,
    group: Annotated[list[str] | None, typer.Option("--group", "-g", help="Group; repeat.")] = None,
    ssh_key: Annotated[
        list[str] | None,
        typer.Option("--ssh-key", "-k", help="Public key file (OpenSSH format) or - for stdin."),
    ] = None,
    display_name: Annotated[str, typer.Option(help="Full name.")] = "",
    email: Annotated[str, typer.Option(help="E-mail address.")] = "",
    direct: Direct = False,
    json_output: bool = JSON_OPTION,
    reuse_home: ReuseHome = False,
    purge: PurgeHome = False,
) -> None:
    """Add a user with roles and SSH keys (all or nothing). A home left by an earlier user of
    the same name is refused unless ``--reuse-home`` or ``--purge`` is given."""
    lines = _key_lines(ssh_key or [])
    data_dir = settings().data_dir
    choice = home_choice(reuse_home, purge)

    async def create(identity: AdminIdentity) -> User:
        if await _user_exists(identity, name):  # before any home is purged for the name
            raise AlreadyExists("user", name)
        guard_homes(data_dir, name, name, choice=choice)
        return await identity.add_user(
            name,
            display_name=display_name,
            email=email,
            roles=role or [],
            groups=group or [],
            ssh_keys=lines,
        )

    user = _with_identity(direct, create)
    # the user's default workspace bears their name: its homes are theirs from now on
    claim_homes(data_dir, name, name, owner_id=f"user:{name}@{user.created_at.isoformat()}")
    if json_output:
        print_json(user_to_dict(user))
    else:
        console.print(f"added user [bold]{user.name}[/] with {len(user.keys)} key(s)")


@app.command("list")
@handle_errors
def list_users(direct: Direct = False, json_output: bool = JSON_OPTION) -> None:
    """List users."""
    users = _with_identity(direct, lambda identity: identity.list_users())
    if json_output:
        print_json([user_to_dict(u) for u in users])
        return
    print_table(
        "Users",
        ["name", "roles", "groups", "keys", "password", "totp", "disabled"],
        (
            [
                u.name,
                ",".join(u.roles),
                ",".join(u.groups),
                len(u.keys),
                "yes" if u.has_password else "",
                "yes" if u.totp_enabled else "",
                "DISABLED" if u.disabled else "",
            ]
            for u in users
        ),
    )


@app.command("show")
@handle_errors
def show(name: str, direct: Direct = False, json_output: bool = JSON_OPTION) -> None:
    """Show one user and their keys."""
    user = _with_identity(direct, lambda identity: identity.get_user(name))
    if json_output:
        print_json(user_to_dict(user))
        return
    data = user_to_dict(user)
    for field in ("name", "display_name", "email", "roles", "groups", "disabled", "created_at"):
        value = data[field]
        console.print(f"{field:>13}: {', '.join(value) if isinstance(value, list) else value}")
    print_table(
        "SSH keys",
        ["fingerprint", "type", "bits", "comment"],
        ([k.fingerprint, k.key_type, k.bits, k.comment] for k in user.keys),
    )


def _set_disabled(name: str, disabled: bool, direct: bool) -> None:
    user = _with_identity(direct, lambda identity: identity.set_disabled(name, disabled))
    console.print(f"user [bold]{user.name}[/] {'disabled' if user.disabled else 'enabled'}")


@app.command("disable")
@handle_errors
def disable(name: str, direct: Direct = False) -> None:
    """Disable a user: their logins and tokens stop working at once."""
    _set_disabled(name, True, direct)


@app.command("enable")
@handle_errors
def enable(name: str, direct: Direct = False) -> None:
    """Enable a disabled user."""
    _set_disabled(name, False, direct)


@app.command("remove")
@handle_errors
def remove(name: str, direct: Direct = False) -> None:
    """Remove a user with their keys (past sessions stay in the audit record)."""
    _with_identity(direct, lambda identity: identity.remove_user(name))
    console.print(f"removed user [bold]{name}[/]")


@keys_app.command("add")
@handle_errors
def keys_add(
    name: str,
    source: Annotated[str, typer.Argument(help="Public key file, or - for stdin.")],
    direct: Direct = False,
) -> None:
    """Register a public key for a user."""
    lines = _key_lines([source])
    if len(lines) != 1:
        raise InvalidInput(source, f"holds {len(lines)} keys; add them one at a time")
    key = _with_identity(direct, lambda identity: identity.add_key(name, lines[0]))
    console.print(f"added {key.key_type} key {key.fingerprint} to [bold]{name}[/]")


@keys_app.command("remove")
@handle_errors
def keys_remove(
    name: str,
    fingerprint: Annotated[str, typer.Argument(help="SHA256:... as `users show` prints it.")],
    direct: Direct = False,
) -> None:
    """Remove one of a user's keys."""
    _with_identity(direct, lambda identity: identity.remove_key(name, fingerprint))
    console.print(f"removed key {fingerprint} from [bold]{name}[/]")


@password_app.command("set")
@handle_errors
def password_set(
    name: str,
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Read the password from standard input.")
    ] = False,
    direct: Direct = False,
) -> None:
    """Set a user's password (prompted twice on a terminal; never a command-line argument)."""
    if stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("New password: ")
        if getpass.getpass("Repeat: ") != password:
            raise InvalidInput("password", "the two entries differ")
    if not password:
        raise InvalidInput("password", "must not be empty")
    _with_identity(direct, lambda identity: identity.set_password(name, password))
    console.print(f"password set for [bold]{name}[/]")


@password_app.command("clear")
@handle_errors
def password_clear(name: str, direct: Direct = False) -> None:
    """Remove a user's password (key login only)."""
    _with_identity(direct, lambda identity: identity.set_password(name, None))
    console.print(f"password cleared for [bold]{name}[/]")
