"""Node SSH keys: Ed25519 key pairs, authorized_keys changes and sshd hardening over OpenSSH.

Decide, then apply: the remote changes are POSIX shell scripts rendered here by pure functions
(:func:`render_add_keys`, :func:`render_remove_tagged`, :func:`render_harden`) and run by the
OpenSSH ``ssh`` client as ``sh -s`` with the script on stdin, so nothing secret or quoted lands in
the remote command line. ``authorized_keys`` is only ever appended to or filtered line by line:
keys Stockade did not add are never touched.

``node harden`` writes a drop-in (``00-stockade-hardening.conf``, first in lexical order, because
sshd keeps the *first* value it reads) and keeps it only when ``sshd -t`` accepts the whole
configuration and ``sshd -T`` shows it in effect; otherwise the previous drop-in is restored.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from stockade.core import AlreadyExists, BackendError, InvalidInput, ToolMissing

__all__ = [
    "HARDENING",
    "USER_TAG",
    "AuthorizedKey",
    "KeyPair",
    "SshTarget",
    "add_authorized_keys",
    "check_name",
    "fingerprint",
    "generate_keypair",
    "harden_node",
    "list_authorized_keys",
    "load_public_key",
    "node_key_comment",
    "remove_tagged_keys",
    "render_add_keys",
    "render_harden",
    "render_remove_tagged",
    "user_tag",
]

#: Comment prefix marking keys that ``node users`` manages: ``stockade-user:<name>``.
USER_TAG = "stockade-user:"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}$")
_HARDEN_FILE = "00-stockade-hardening.conf"
_DEFAULT_RELOAD = (
    "systemctl reload ssh 2>/dev/null || systemctl reload sshd 2>/dev/null"
    ' || kill -HUP "$(cat /run/sshd.pid)"'
)

#: The drop-in ``node harden`` installs: keys only, no root.
HARDENING = (
    "# Managed by `stockade node harden`; edits are overwritten.\n"
    "PubkeyAuthentication yes\n"
    "PasswordAuthentication no\n"
    "KbdInteractiveAuthentication no\n"
    "PermitEmptyPasswords no\n"
    "PermitRootLogin no\n"
    "AuthenticationMethods publickey\n"
)
# What `sshd -T` must print once the drop-in is in effect.
_EXPECTED = (
    "passwordauthentication no",
    "kbdinteractiveauthentication no",
    "permitrootlogin no",
)


def user_tag(name: str) -> str:
    """The authorized_keys comment marking ``name``'s key: ``stockade-user:<name>``."""
    return USER_TAG + check_name(name, "NAME")


def node_key_comment(owner: str, host: str) -> str:
    """The comment of a node key: ``stockade:<owner>@<host>``."""
    return f"stockade:{check_name(owner, '--owner')}@{check_name(host, '--host')}"


def check_name(value: str, what: str) -> str:
    """``value`` when it is a safe name (letters, digits, ``._@:+-``), else InvalidInput."""
    if not _NAME.match(value):
        raise InvalidInput(what, f"{value!r} must be letters, digits and ._@:+- (not leading -)")
    return value


@dataclass(frozen=True)
class KeyPair:
    """An Ed25519 key pair on disk."""

    private_path: Path
    public_line: str

    @property
    def public_path(self) -> Path:
        """Where the ``.pub`` file lives."""
        return self.private_path.with_name(self.private_path.name + ".pub")

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
        return fingerprint(self.public_line)


def fingerprint(public_line: str) -> str:
    """OpenSSH SHA-256 fingerprint of an ``authorized_keys``-style line."""
    parts = public_line.split()
    blob = next((p for p in parts if p.startswith("AAAA")), "")
    try:
        raw = base64.b64decode(blob, validate=True)
    except ValueError as exc:
        raise InvalidInput("public key", "not an OpenSSH public key line") from exc
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def generate_keypair(path: Path, *, comment: str, overwrite: bool = False) -> KeyPair:
    """Write a new Ed25519 key pair: ``path`` (0600, OpenSSH format) and ``path.pub``."""
    pub_path = path.with_name(path.name + ".pub")
    if not overwrite and (path.exists() or pub_path.exists()):
        raise AlreadyExists("key", str(path), detail="pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = f"{public.decode()} {comment}"
    for target, data, mode in ((path, private, 0o600), (pub_path, (line + "\n").encode(), 0o644)):
        target.unlink(missing_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(target, mode)
    return KeyPair(private_path=path, public_line=line)


def load_public_key(path: Path) -> str:
    """The single public key line of ``path`` (a ``.pub`` file)."""
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(
            str(path), "cannot read the public key; run `node keys generate`"
        ) from exc
    if len(lines) != 1 or not lines[0].startswith(("ssh-ed25519 ", "ssh-rsa ", "ecdsa-sha2-")):
        raise InvalidInput(str(path), "expected one OpenSSH public key line")
    fingerprint(lines[0])
    return lines[0]


@dataclass(frozen=True)
class SshTarget:
    """Where and as whom to run remote commands with the OpenSSH client."""

    host: str
    user: str = "root"
    port: int = 22
    identity: Path | None = None
    known_hosts: Path | None = None
    sudo: bool = False

    def __post_init__(self) -> None:
        check_name(self.host, "--host")
        check_name(self.user, "--user")
        if not 0 < self.port < 65536:
            raise InvalidInput("--port", f"{self.port} is not a TCP port")
        if self.identity is not None and not self.identity.is_file():
            raise InvalidInput(str(self.identity), "identity key not found; pass a private key")

    def command(self, ssh: str) -> list[str]:
        """The ``ssh`` argv that runs ``sh -s`` (the script comes on stdin)."""
        cmd = [ssh, "-p", str(self.port), "-o", "StrictHostKeyChecking=accept-new"]
        cmd += ["-o", "ConnectTimeout=15", "-o", "LogLevel=ERROR"]
        if self.identity is not None:
            cmd += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts is not None:
            cmd += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        cmd += ["-l", self.user, "--", self.host]
        cmd += ["sudo -n sh -s" if self.sudo else "sh -s"]
        return cmd

    def run(self, script: str) -> subprocess.CompletedProcess[str]:
        """Run ``script`` remotely; a connection failure is a BackendError naming the host."""
        ssh = shutil.which("ssh")
        if not ssh:
            raise ToolMissing("ssh", "openssh-client")
        done = subprocess.run(
            self.command(ssh), input=script, capture_output=True, text=True, check=False
        )
        if done.returncode == 255:
            reason = (done.stderr.strip().splitlines() or ["connection failed"])[-1]
            raise BackendError(f"ssh {self.user}@{self.host}:{self.port}: {reason}")
        return done


def _heredoc(text: str, marker: str) -> str:
    if marker in text:
        raise InvalidInput("content", f"must not contain the line {marker}")
    return f"<<'{marker}'\n{text.rstrip(chr(10))}\n{marker}\n"


_AK_PRELUDE = (
    "set -eu\n"
    "umask 077\n"
    'ak="$HOME/.ssh/authorized_keys"\n'
    'mkdir -p "$HOME/.ssh"\n'
    'touch "$ak"\n'
    'chmod 700 "$HOME/.ssh"\n'
    'chmod 600 "$ak"\n'
)


def render_add_keys(lines: list[str]) -> str:
    """Script appending each key line unless its key blob is present (never rewrites others)."""
    out = [_AK_PRELUDE]
    out.append('if [ -s "$ak" ] && [ -n "$(tail -c1 "$ak")" ]; then printf "\\n" >> "$ak"; fi\n')
    for line in lines:
        blob = next(p for p in line.split() if p.startswith("AAAA"))
        out.append(
            f'if grep -qF -- {shlex.quote(blob)} "$ak"; then echo present; else\n'
            f"  printf '%s\\n' {shlex.quote(line)} >> \"$ak\"; echo added\nfi\n"
        )
    return "".join(out)


def render_remove_tagged(tag: str) -> str:
    """Script removing the lines whose comment is exactly ``tag``; prints how many went."""
    return _AK_PRELUDE + (
        f"tag={shlex.quote(tag)}\n"
        'tmp="$ak.stockade-tmp"\n'
        'awk -v t="$tag" \'$NF == t { next } { print }\' "$ak" > "$tmp"\n'
        'removed=$(( $(wc -l < "$ak") - $(wc -l < "$tmp") ))\n'
        'chmod 600 "$tmp"\n'
        'mv "$tmp" "$ak"\n'
        'echo "$removed"\n'
    )


_LIST_SCRIPT = 'cat "$HOME/.ssh/authorized_keys" 2>/dev/null || true\n'


def render_harden(
    *,
    config: str = "/etc/ssh/sshd_config",
    dropin_dir: str = "/etc/ssh/sshd_config.d",
    reload_command: str | None = None,
    content: str = HARDENING,
) -> str:
    """Script installing ``content`` as the hardening drop-in, checked and rolled back.

    Exit 3: ``sshd -t`` rejected the configuration; exit 4: the drop-in is not in effect
    (``config`` does not Include ``dropin_dir``). In both cases the old drop-in is back.
    """
    target = f"{dropin_dir.rstrip('/')}/{_HARDEN_FILE}"
    checks = " && ".join(f'printf "%s\\n" "$eff" | grep -qx {shlex.quote(e)}' for e in _EXPECTED)
    return (
        "set -u\n"
        "umask 022\n"
        "sshd=$(command -v sshd || echo /usr/sbin/sshd)\n"
        f"cfg={shlex.quote(config)}\n"
        f"dir={shlex.quote(dropin_dir)}\n"
        f"f={shlex.quote(target)}\n"
        'b="$f.stockade-bak"\n'
        'mkdir -p "$dir" || exit 5\n'
        'if [ -e "$f" ]; then cp -p "$f" "$b" || exit 5; had=1; else had=0; fi\n'
        'rollback() { if [ "$had" = 1 ]; then mv -f "$b" "$f"; else rm -f "$f"; fi; }\n'
        f'cat > "$f.tmp" {_heredoc(content, "STOCKADE_EOF")}'
        'chmod 644 "$f.tmp" && mv -f "$f.tmp" "$f" || { rollback; exit 5; }\n'
        'if ! out=$("$sshd" -t -f "$cfg" 2>&1); then\n'
        '  rollback; printf "%s\\n" "$out" >&2; exit 3\n'
        "fi\n"
        'eff=$("$sshd" -T -f "$cfg" 2>/dev/null)\n'
        f"if ! {{ {checks}; }}; then\n"
        '  rollback; echo "$cfg does not Include $dir/*.conf first" >&2; exit 4\n'
        "fi\n"
        'rm -f "$b"\n'
        f"{reload_command or _DEFAULT_RELOAD} || {{ echo 'reload failed' >&2; exit 6; }}\n"
        "echo hardened\n"
    )


@dataclass(frozen=True)
class AuthorizedKey:
    """One line of a remote ``authorized_keys``."""

    key_type: str
    fingerprint: str
    comment: str

    @property
    def user(self) -> str | None:
        """The ``node users`` name when Stockade manages this key."""
        return self.comment.removeprefix(USER_TAG) if self.comment.startswith(USER_TAG) else None


def _parse_authorized_keys(text: str) -> list[AuthorizedKey]:
    keys = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        index = next((i for i, p in enumerate(parts) if p.startswith("AAAA")), None)
        if index is None or index == 0:
            continue
        keys.append(
            AuthorizedKey(
                key_type=parts[index - 1],
                fingerprint=fingerprint(parts[index]),
                comment=" ".join(parts[index + 1 :]),
            )
        )
    return keys


def _checked(done: subprocess.CompletedProcess[str], target: SshTarget, what: str) -> str:
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise BackendError(f"{target.host}: {what} failed: {reason}")
    return done.stdout


def add_authorized_keys(target: SshTarget, lines: list[str]) -> list[str]:
    """Append ``lines`` to the remote user's authorized_keys; returns added/present per line."""
    out = _checked(target.run(render_add_keys(lines)), target, "updating authorized_keys")
    return out.split()


def remove_tagged_keys(target: SshTarget, tag: str) -> int:
    """Remove the remote keys whose comment is ``tag``; returns how many were removed."""
    out = _checked(target.run(render_remove_tagged(tag)), target, "updating authorized_keys")
    return int(out.strip() or 0)


def list_authorized_keys(target: SshTarget) -> list[AuthorizedKey]:
    """The remote user's authorized keys."""
    return _parse_authorized_keys(
        _checked(target.run(_LIST_SCRIPT), target, "reading authorized_keys")
    )


def harden_node(
    target: SshTarget,
    *,
    config: str = "/etc/ssh/sshd_config",
    dropin_dir: str = "/etc/ssh/sshd_config.d",
    reload_command: str | None = None,
) -> None:
    """Install the hardening drop-in on ``target`` (see :func:`render_harden`)."""
    script = render_harden(config=config, dropin_dir=dropin_dir, reload_command=reload_command)
    done = target.run(script)
    detail = (done.stderr.strip().splitlines() or [""])[0][:300]
    if done.returncode == 3:
        raise BackendError(
            f"{target.host}: sshd -t rejected the configuration; previous drop-in kept: {detail}"
        )
    if done.returncode == 4:
        raise BackendError(f"{target.host}: hardening not in effect, rolled back: {detail}")
    _checked(done, target, "hardening sshd")
