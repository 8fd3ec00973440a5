"""``stockade node keys|harden|users``: Ed25519 node keys and sshd hardening over OpenSSH."""

from __future__ import annotations

import getpass
import socket
from pathlib import Path
from typing import Annotated

import typer

from stockade.cli._common import JSON_OPTION, err_console, handle_errors, print_json, print_table
from stockade.cli._common import settings as load_settings
from stockade.supplychain import (
    SshTarget,
    add_authorized_keys,
    check_name,
    generate_keypair,
    harden_node,
    list_authorized_keys,
    load_public_key,
    remove_tagged_keys,
    user_tag,
)

__all__ = ["app"]

app = typer.Typer(help="Node SSH keys and sshd hardening.", no_args_is_help=True)
keys_app = typer.Typer(help="Generate and deploy the node's Ed25519 key.", no_args_is_help=True)
users_app = typer.Typer(help="Per-user key pairs on a node's login account.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(users_app, name="users")

HostOption = Annotated[str, typer.Option("--host", help="Node address.")]
PortOption = Annotated[int, typer.Option("--port", help="SSH port of the node.")]
IdentityOption = Annotated[
    Path | None, typer.Option("--identity", "-i", help="Private key to log in with.")
]
KnownHostsOption = Annotated[
    Path | None,
    typer.Option("--known-hosts", help="known_hosts file to use (new host keys are added)."),
]
SudoOption = Annotated[bool, typer.Option("--sudo", help="Run the remote change with sudo -n.")]
KeysDirOption = Annotated[
    Path | None,
    typer.Option("--keys-dir", help="Where user key pairs live (default: DATA_DIR/node-users)."),
]


def _default_key() -> Path:
    return load_settings().data_dir / "node-keys" / "id_ed25519"


@keys_app.command("generate")
@handle_errors
def keys_generate(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Private key path (default: DATA_DIR/node-keys/...)."),
    ] = None,
    owner: Annotated[str | None, typer.Option(help="Owner named in the comment.")] = None,
    host: Annotated[str | None, typer.Option("--host", help="Host named in the comment.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
) -> None:
    """Generate an Ed25519 key pair (private 0600) commented ``stockade:OWNER@HOST``."""
    who = check_name(owner or getpass.getuser(), "--owner")
    where = check_name(host or socket.gethostname(), "--host")
    pair = generate_keypair(
        output or _default_key(), comment=f"stockade:{who}@{where}", overwrite=force
    )
    err_console.print(f"wrote {pair.private_path} and {pair.public_path}", markup=False)
    typer.echo(pair.public_line)


@keys_app.command("deploy")
@handle_errors
def keys_deploy(
    host: HostOption,
    user: Annotated[str, typer.Option("--user", help="Account whose authorized_keys to extend.")],
    port: PortOption = 22,
    identity: IdentityOption = None,
    key: Annotated[
        Path | None, typer.Option("--key", help="Public key to deploy (default: node key .pub).")
    ] = None,
    known_hosts: KnownHostsOption = None,
) -> None:
    """Append the node public key to USER's authorized_keys on HOST (idempotent)."""
    line = load_public_key(key or _default_key().with_suffix(".pub"))
    target = SshTarget(host=host, user=user, port=port, identity=identity, known_hosts=known_hosts)
    outcome = add_authorized_keys(target, [line])
    typer.echo(f"{user}@{host}: key {outcome[0] if outcome else 'added'}")


@app.command("harden")
@handle_errors
def harden(
    host: HostOption,
    user: Annotated[str, typer.Option("--user", help="Account to log in as.")] = "root",
    port: PortOption = 22,
    identity: IdentityOption = None,
    known_hosts: KnownHostsOption = None,
    sudo: SudoOption = False,
    sshd_config: Annotated[
        str, typer.Option("--sshd-config", help="sshd_config on the node.")
    ] = "/etc/ssh/sshd_config",
    dropin_dir: Annotated[
        str, typer.Option("--dropin-dir", help="Drop-in directory sshd_config Includes.")
    ] = "/etc/ssh/sshd_config.d",
    reload_command: Annotated[
        str | None,
        typer.Option("--reload-command", help="How to reload sshd (default: systemctl / HUP)."),
    ] = None,
) -> None:
    """Disable password, keyboard-interactive and root login (sshd -t checked, else rolled back)."""
    target = SshTarget(
        host=host, user=user, port=port, identity=identity, known_hosts=known_hosts, sudo=sudo
    )
    harden_node(target, config=sshd_config, dropin_dir=dropin_dir, reload_command=reload_command)
    typer.echo(f"{host}: sshd hardened (keys only, no root login)")


def _user_key_path(keys_dir: Path | None, name: str) -> Path:
    base = keys_dir or load_settings().data_dir / "node-users"
    return base / f"{name}_ed25519"


@users_app.command("add")
@handle_errors
def users_add(
    name: Annotated[str, typer.Argument(help="User to add.")],
    host: HostOption,
    user: Annotated[str, typer.Option("--user", help="Login account on the node.")],
    port: PortOption = 22,
    identity: IdentityOption = None,
    known_hosts: KnownHostsOption = None,
    keys_dir: KeysDirOption = None,
) -> None:
    """Create NAME's key pair (once) and authorize it on HOST, tagged stockade-user:NAME."""
    tag = user_tag(name)
    path = _user_key_path(keys_dir, name)
    if path.with_name(path.name + ".pub").exists():
        line = load_public_key(path.with_name(path.name + ".pub"))
    else:
        line = generate_keypair(path, comment=tag).public_line
    target = SshTarget(host=host, user=user, port=port, identity=identity, known_hosts=known_hosts)
    outcome = add_authorized_keys(target, [line])
    typer.echo(f"{name}: key {outcome[0] if outcome else 'added'} on {user}@{host} ({path})")


@users_app.command("list")
@handle_errors
def users_list(
    host: HostOption,
    user: Annotated[str, typer.Option("--user", help="Login account on the node.")],
    port: PortOption = 22,
    identity: IdentityOption = None,
    known_hosts: KnownHostsOption = None,
    json_output: bool = JSON_OPTION,
) -> None:
    """List the users whose keys Stockade authorized on HOST."""
    target = SshTarget(host=host, user=user, port=port, identity=identity, known_hosts=known_hosts)
    rows = [
        {"name": k.user, "key_type": k.key_type, "fingerprint": k.fingerprint}
        for k in list_authorized_keys(target)
        if k.user is not None
    ]
    if json_output:
        print_json(rows)
        return
    print_table(
        f"users on {user}@{host}",
        ["name", "key type", "fingerprint"],
        [(r["name"], r["key_type"], r["fingerprint"]) for r in rows],
    )


@users_app.command("remove")
@handle_errors
def users_remove(
    name: Annotated[str, typer.Argument(help="User to revoke.")],
    host: HostOption,
    user: Annotated[str, typer.Option("--user", help="Login account on the node.")],
    port: PortOption = 22,
    identity: IdentityOption = None,
    known_hosts: KnownHostsOption = None,
) -> None:
    """Revoke NAME on HOST: remove every key tagged stockade-user:NAME (others stay)."""
    tag = user_tag(name)
    target = SshTarget(host=host, user=user, port=port, identity=identity, known_hosts=known_hosts)
    removed = remove_tagged_keys(target, tag)
    if removed == 0:
        err_console.print(f"{name}: no key on {user}@{host}", markup=False)
        raise typer.Exit(1)
    typer.echo(f"{name}: {removed} key(s) revoked on {user}@{host}")
