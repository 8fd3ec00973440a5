"""``stockade users``: add, list, show, disable, enable, remove users; their roles, keys,
passwords and TOTP.

Every command is one transaction: through the running server's admin socket when it answers,
otherwise directly on the store (``--direct`` forces that).
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from stockade.authz import Authorizer
from stockade.core import InvalidInput
from stockade.core.errors import AlreadyExists, NotFound
from stockade.identity import SshKey, TotpEnrollment, User
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
    resolve_prefix,
    run_async,
    settings,
)

__all__ = ["app", "key_to_dict", "user_to_dict"]

app = typer.Typer(
    help="Manage users, their roles, SSH keys, passwords and TOTP.", no_args_is_help=True
)
keys_app = typer.Typer(help="Manage a user's SSH public keys.", no_args_is_help=True)
password_app = typer.Typer(help="Manage a user's password.", no_args_is_help=True)
roles_app = typer.Typer(
    help="Change a user's roles (only roles the policy bundle declares).", no_args_is_help=True
)
totp_app = typer.Typer(
    help="Enrol or remove a user's TOTP authenticator (second factor).", no_args_is_help=True
)
app.add_typer(roles_app, name="roles")
app.add_typer(keys_app, name="keys")
app.add_typer(password_app, name="password")
app.add_typer(totp_app, name="totp")

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


def known_roles() -> frozenset[str]:
    """The roles the configured policy bundle declares (``data.stockade.roles``)."""
    return Authorizer(settings=settings().authz).roles()


def check_roles(roles: list[str], *, field: str) -> list[str]:
    """``roles`` in order without repeats; an InvalidInput naming the first role the policy
    bundle does not declare (a typo would otherwise grant nothing, silently)."""
    wanted = list(dict.fromkeys(roles))
    if not wanted:
        return wanted
    known = known_roles()
    for role in wanted:
        if role not in known:
            declared = ", ".join(sorted(known))
            raise InvalidInput(
                field, f"unknown role {role!r}; the policy bundle declares {declared}"
            )
    return wanted


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
    """Add a user with roles and SSH keys (all or nothing).

    Each --role must be one the policy bundle declares (data.stockade.roles). A home left by
    an earlier user of the same name is refused unless ``--reuse-home`` or ``--purge`` is given.
    """
    roles = check_roles(role or [], field="--role")
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
            roles=roles,
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
        shown = ", ".join(value) if isinstance(value, list) else value
        console.print(f"{field:>13}: {shown}", markup=False)  # names are data, not markup
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
    """Remove one of a user's keys (its fingerprint or a unique prefix of it; the SHA256:
    may be left out). Live sessions that logged in with it end at once."""

    async def run(identity: AdminIdentity) -> str:
        user = await identity.get_user(name)
        chosen = resolve_fingerprint(fingerprint, [k.fingerprint for k in user.keys], user=name)
        await identity.remove_key(name, chosen)
        return chosen

    removed = _with_identity(direct, run)
    console.print(f"removed key {removed} from {name}", markup=False)


def resolve_fingerprint(given: str, fingerprints: list[str], *, user: str) -> str:
    """The one of ``fingerprints`` that ``given`` names whole or by a unique prefix, with or
    without its ``SHA256:``."""
    kind = f"ssh key of {user}"
    if not given.startswith("SHA256:") and not any(f.startswith(given) for f in fingerprints):
        given = "SHA256:" + given
    if given not in fingerprints and len(given) < len("SHA256:") + 4:
        raise InvalidInput("fingerprint", "give at least 4 characters after SHA256:")
    return resolve_prefix(given, fingerprints, kind=kind)


@keys_app.command("list")
@handle_errors
def keys_list(name: str, direct: Direct = False, json_output: bool = JSON_OPTION) -> None:
    """List a user's SSH keys: full SHA256 fingerprints, type, size, comment, when added."""
    user = _with_identity(direct, lambda identity: identity.get_user(name))
    if json_output:
        print_json([key_to_dict(k) for k in user.keys])
        return
    print_table(
        f"SSH keys of {user.name}",
        ["fingerprint", "type", "bits", "comment", "added"],
        (
            [k.fingerprint, k.key_type, k.bits, k.comment, k.created_at.isoformat("T", "seconds")]
            for k in user.keys
        ),
    )


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


# -- roles ---------------------------------------------------------------------------------------

RoleArgs = Annotated[
    list[str], typer.Argument(help="Role names the policy bundle declares (data.stockade.roles).")
]


def _change_roles(name: str, direct: bool, change: Callable[[list[str]], list[str]]) -> None:
    async def run(identity: AdminIdentity) -> User:
        user = await identity.get_user(name)
        wanted = change(list(user.roles))
        if wanted == list(user.roles):
            return user
        return await identity.set_roles(name, wanted)

    user = _with_identity(direct, run)
    shown = ", ".join(user.roles) or "(none)"
    console.print(f"roles of {user.name}: {shown}", markup=False)


@roles_app.command("add")
@handle_errors
def roles_add(name: str, role: RoleArgs, direct: Direct = False) -> None:
    """Give USER one or more roles; live sessions are re-decided at once."""
    added = check_roles(role, field="ROLE")
    _change_roles(name, direct, lambda current: [*current, *(r for r in added if r not in current)])


@roles_app.command("remove")
@handle_errors
def roles_remove(name: str, role: RoleArgs, direct: Direct = False) -> None:
    """Take one or more roles from USER (also roles the bundle no longer declares); live
    sessions are re-decided at once and closed when no longer allowed."""

    def change(current: list[str]) -> list[str]:
        for r in role:
            if r not in current:
                raise NotFound("role", f"{r} of user {name} (has: {', '.join(current) or 'none'})")
        return [r for r in current if r not in role]

    _change_roles(name, direct, change)


@roles_app.command("set")
@handle_errors
def roles_set(name: str, role: RoleArgs, direct: Direct = False) -> None:
    """Replace USER's roles with exactly these; live sessions are re-decided at once."""
    wanted = check_roles(role, field="ROLE")
    _change_roles(name, direct, lambda _current: wanted)


# -- TOTP ----------------------------------------------------------------------------------------


def _group(secret: str) -> str:
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


@totp_app.command("enroll")
@handle_errors
def totp_enroll(
    name: str,
    replace: Annotated[
        bool,
        typer.Option("--replace", help="Replace an enrolled authenticator (the old one stops)."),
    ] = False,
    direct: Direct = False,
) -> None:
    """Give USER a new TOTP secret and print it once, to this terminal only.

    Prints the otpauth:// URI (paste it into a QR generator you trust, or an authenticator
    that takes URIs) and the secret in groups of four for typing by hand. The secret never
    appears in arguments or logs; it is stored sealed (AES-GCM) with the data dir's key.
    """

    async def run(identity: AdminIdentity) -> TotpEnrollment:
        # identity checks an enrolled secret in the transaction that writes: of two enrolments
        # at once without --replace, one is refused (never a secret shown, then replaced)
        return await identity.enable_totp(name, replace=replace)

    enrollment = _with_identity(direct, run)
    out = sys.stdout
    out.write(f"TOTP enrolled for {name}. Shown once; add it to the authenticator now.\n")
    out.write(f"uri:    {enrollment.uri}\n")
    out.write(f"secret: {_group(enrollment.secret)}  (SHA1, 6 digits, 30 s)\n")
    out.flush()


@totp_app.command("disable")
@handle_errors
def totp_disable(name: str, direct: Direct = False) -> None:
    """Remove USER's TOTP secret: codes stop being accepted, so where policy requires a second
    factor (require_mfa) the user can no longer log in until enrolled again."""

    async def run(identity: AdminIdentity) -> None:
        user = await identity.get_user(name)
        if not user.totp_enabled:
            raise InvalidInput("user", f"{name} has no TOTP enrolled")
        await identity.disable_totp(name)

    _with_identity(direct, run)
    console.print(f"TOTP disabled for {name}", markup=False)
