"""Identity fixtures: real ssh-keygen keys, a key ring with a settable clock, the service on
each database."""

from __future__ import annotations

import base64
import struct
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from stockade.core.settings import IdentitySettings
from stockade.identity import IdentityService, KeyRing
from stockade.store import Store

START = 1_900_000_000.0


@dataclass
class FakeClock:
    """Unix time that moves only when a test says so."""

    now: float = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class GeneratedKey:
    line: str
    """The .pub file's line."""
    fingerprint: str
    """What ``ssh-keygen -lf`` printed."""
    bits: int


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def ssh_keygen_fingerprint(path: Path) -> tuple[int, str]:
    """``(bits, fingerprint)`` as ``ssh-keygen -lf path`` prints them."""
    out = subprocess.run(
        ["ssh-keygen", "-E", "sha256", "-lf", str(path)], check=True, capture_output=True, text=True
    ).stdout.split()
    return int(out[0]), out[1]


def _from_pub(pub: Path) -> GeneratedKey:
    bits, fp = ssh_keygen_fingerprint(pub)
    return GeneratedKey(line=pub.read_text().strip(), fingerprint=fp, bits=bits)


def _sk_lines() -> dict[str, str]:
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    point = ed.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ed_blob = _ssh_string(b"sk-ssh-ed25519@openssh.com") + _ssh_string(point) + _ssh_string(b"ssh:")
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    q = p256.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    ec_blob = (
        _ssh_string(b"sk-ecdsa-sha2-nistp256@openssh.com")
        + _ssh_string(b"nistp256")
        + _ssh_string(q)
        + _ssh_string(b"ssh:")
    )
    return {
        "sk-ed25519": f"sk-ssh-ed25519@openssh.com {base64.b64encode(ed_blob).decode()} yubi@x",
        "sk-ecdsa": f"sk-ecdsa-sha2-nistp256@openssh.com {base64.b64encode(ec_blob).decode()} y@x",
    }


@pytest.fixture(scope="session")
def keygen_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GeneratedKey]:
    """Keys made by the real ``ssh-keygen`` (and security-key public keys it fingerprints)."""
    where = tmp_path_factory.mktemp("sshkeys")
    specs = {
        "ed25519": ["-t", "ed25519"],
        "ecdsa-256": ["-t", "ecdsa", "-b", "256"],
        "ecdsa-384": ["-t", "ecdsa", "-b", "384"],
        "ecdsa-521": ["-t", "ecdsa", "-b", "521"],
        "rsa-3072": ["-t", "rsa", "-b", "3072"],
        "rsa-2048": ["-t", "rsa", "-b", "2048"],
        "dsa": ["-t", "dsa"],
    }
    keys: dict[str, GeneratedKey] = {}
    for name, args in specs.items():
        path = where / name
        subprocess.run(
            ["ssh-keygen", "-q", *args, "-N", "", "-C", f"{name}@test", "-f", str(path)],
            check=True,
        )
        keys[name] = _from_pub(path.with_suffix(".pub"))
    for name, line in _sk_lines().items():
        pub = where / f"{name}.pub"
        pub.write_text(line + "\n")
        keys[name] = _from_pub(pub)
    return keys


@pytest.fixture
def new_key_line() -> Callable[[], str]:
    """Makes a fresh ed25519 ``authorized_keys`` line (in-process, fast)."""

    def make(comment: str = "test@host") -> str:
        public = ed25519.Ed25519PrivateKey.generate().public_key()
        openssh = public.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        return f"{openssh.decode()} {comment}"

    return make


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings() -> IdentitySettings:
    return IdentitySettings()


@pytest.fixture
def keyring(tmp_path: Path, clock: FakeClock) -> KeyRing:
    return KeyRing(tmp_path / "keys", clock=clock)


@pytest.fixture
async def service(
    database_url: str, settings: IdentitySettings, keyring: KeyRing
) -> AsyncIterator[IdentityService]:
    store = Store(database_url)
    await store.migrate()
    try:
        yield IdentityService(store=store, settings=settings, keyring=keyring)
    finally:
        await store.close()
