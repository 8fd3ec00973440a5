"""The gateway's host keys: generated per data directory, or shared files given by settings.

Several gateways behind one load balancer must present the same host identity, or clients see a
host-key warning whenever the balancer picks another replica. ``gateway.host_key_files`` names
private keys every replica loads instead of generating its own. Each file must be owned by the
gateway's user and readable only by it (like sshd's ``StrictModes``): a key others can read is no
longer a secret, and one someone else owns could be replaced by theirs. Symbolic links are
followed (Kubernetes mounts Secrets through them); the checks apply to the file opened.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import asyncssh
from cryptography.hazmat.primitives.asymmetric import rsa

from stockade.core.errors import InvalidInput

__all__ = ["load_host_key_files"]

_FIELD = "gateway.host_key_files"
_MAX_KEY_BYTES = 64 * 1024
_MIN_RSA_BITS = 3072  # as for user keys (identity.min_rsa_bits' default)


def _read_owner_only(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InvalidInput(_FIELD, f"{path}: no such file") from None
    except OSError as exc:
        raise InvalidInput(_FIELD, f"{path}: cannot open ({exc.strerror})") from None
    try:
        info = os.fstat(fd)  # the file opened, not whatever the path names a moment later
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(_FIELD, f"{path}: not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise InvalidInput(
                _FIELD,
                f"{path}: mode {mode:04o}, a private host key must be readable only by its"
                " owner (chmod 600)",
            )
        if info.st_uid != os.geteuid():
            raise InvalidInput(
                _FIELD, f"{path}: owned by uid {info.st_uid}, not by the gateway's uid"
            )
        if info.st_size > _MAX_KEY_BYTES:
            raise InvalidInput(_FIELD, f"{path}: {info.st_size} bytes is too large for a key")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(_MAX_KEY_BYTES + 1)
    finally:
        os.close(fd)


def load_host_key_files(
    paths: Sequence[Path], *, signature_algs: Sequence[str]
) -> list[asyncssh.SSHKey]:
    """The private keys in ``paths`` (each owner-only, unencrypted, one per key type, of a type
    the gateway signs with). Raises :class:`InvalidInput` naming the file otherwise."""
    keys: list[asyncssh.SSHKey] = []
    seen: dict[bytes, Path] = {}
    for path in paths:
        data = _read_owner_only(path)
        try:
            key = asyncssh.import_private_key(data)
        except (asyncssh.KeyImportError, ValueError):
            raise InvalidInput(
                _FIELD, f"{path}: not an unencrypted OpenSSH/PEM private key"
            ) from None
        usable = [alg.decode() for alg in key.sig_algorithms]
        if not any(alg in signature_algs for alg in usable):
            raise InvalidInput(
                _FIELD, f"{path}: {key.get_algorithm()} keys are not offered by the gateway"
            )
        pyca = key.pyca_key
        if isinstance(pyca, rsa.RSAPrivateKey) and pyca.key_size < _MIN_RSA_BITS:
            raise InvalidInput(
                _FIELD,
                f"{path}: RSA key of {pyca.key_size} bits is too weak; at least"
                f" {_MIN_RSA_BITS} bits required (or use Ed25519)",
            )
        if key.algorithm in seen:
            raise InvalidInput(
                _FIELD,
                f"{path}: a second {key.get_algorithm()} key (after {seen[key.algorithm]});"
                " clients would only ever see the first",
            )
        seen[key.algorithm] = path
        keys.append(key)
    return keys
