"""Several gateways, one host identity: gateways given the same ``gateway.host_key_files``
are one host to the real OpenSSH client (``StrictHostKeyChecking=yes``, one known_hosts entry
under one name), a gateway with another key is refused, and a bad key file (readable by others,
someone else's, missing, garbage, encrypted, a public key, a FIFO) stops the gateway with one line
naming it, and ``stockade up`` with exit 2 before it starts anything. (The tests run as root,
as the Podman and nftables ones do: ``foreign_owner`` chowns a file.)"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from gateway.harness import CLEAN_ENV, GatewayEnv, gateway_env, keygen

from stockade.core.errors import InvalidInput
from stockade.core.settings import GatewaySettings
from stockade.gateway import ALGORITHMS, Gateway
from stockade.gateway._host_keys import load_host_key_files

pytestmark = pytest.mark.timeout(180)

STOCKADE = str(Path(sys.executable).parent / "stockade")
ALIAS = "ssh.stockade.example"


def _strict_ssh(
    env: GatewayEnv, known_hosts: Path, key: Path, *args: str, alg: str = "ssh-ed25519"
) -> list[str]:
    """An OpenSSH login to ``env`` trusting only ``known_hosts``, under the balancer's name (ssh
    takes an option's first value, so not ``env.ssh_cmd``, whose defaults accept new keys)."""
    return [
        "ssh", "-F", "/dev/null",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"HostKeyAlias={ALIAS}",
        "-o", f"HostKeyAlgorithms={alg}",
        "-o", "UpdateHostKeys=no",
        "-o", "BatchMode=yes",
        "-o", "ConnectTimeout=20",
        "-o", "ControlMaster=no", "-o", "ControlPath=none",
        "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
        "-p", str(env.port), "ada@127.0.0.1", *args,
    ]  # fmt: skip


def _known_hosts(path: Path, host_key: Path) -> Path:
    public = host_key.with_name(host_key.name + ".pub").read_text().split()
    path.write_text(f"{ALIAS} {public[0]} {public[1]}\n")
    return path


async def test_gateways_sharing_a_host_key_are_one_host_to_openssh(
    tmp_path: Path, nats_url: str
) -> None:
    shared = keygen(tmp_path / "shared_host_key")
    other = keygen(tmp_path / "other_host_key")
    known = _known_hosts(tmp_path / "known_hosts", shared)
    for sub in ("a", "b", "c"):
        (tmp_path / sub).mkdir()
    async with (
        gateway_env(tmp_path / "a", nats_url, host_key_files=[shared]) as a,
        gateway_env(tmp_path / "b", nats_url, host_key_files=[shared], gateway_id="gw-b") as b,
        gateway_env(tmp_path / "c", nats_url, host_key_files=[other], gateway_id="gw-c") as c,
    ):
        outputs = []
        for env in (a, b):
            key = await env.add_user("ada")
            assert key is not None
            result = await env.run(_strict_ssh(env, known, key, "echo", "through", str(env.port)))
            assert result.returncode == 0, result.stderr
            outputs.append(result.stdout.decode().strip())
        assert outputs == [f"through {a.port}", f"through {b.port}"]
        assert a.port != b.port
        # no generated key was written or presented by the sharing gateways
        assert not (a.data_dir / "gateway" / "ssh_host_ed25519_key").exists()

        key = await c.add_user("ada")
        assert key is not None
        refused = await c.run(_strict_ssh(c, known, key, "echo", "never"))
        assert refused.returncode == 255
        assert b"Host key verification failed" in refused.stderr, refused.stderr
        assert b"never" not in refused.stdout
        assert known.read_text().count("\n") == 1  # nothing learnt


async def test_an_ecdsa_key_file_is_presented_beside_the_ed25519_one(
    tmp_path: Path, nats_url: str
) -> None:
    ed25519, ecdsa = keygen(tmp_path / "ed_key"), keygen(tmp_path / "ec_key", "ecdsa")
    known = _known_hosts(tmp_path / "known_hosts", ecdsa)
    async with gateway_env(tmp_path, nats_url, host_key_files=[ed25519, ecdsa]) as env:
        key = await env.add_user("ada")
        assert key is not None
        old_client = _strict_ssh(env, known, key, "true", alg="ecdsa-sha2-nistp256")
        assert (await env.run(old_client)).returncode == 0
        modern = await env.run(_strict_ssh(env, known, key, "true"))  # ed25519: not in the file
        assert modern.returncode == 255
        assert b"Host key verification failed" in modern.stderr, modern.stderr


def _gateway(tmp_path: Path, files: Sequence[Path]) -> Gateway:
    return Gateway(
        settings=GatewaySettings(port=0, host_key_files=list(files)),
        identity=None,  # type: ignore[arg-type]  # never reached: the key files fail first
        authz=None,  # type: ignore[arg-type]
        publisher=None,  # type: ignore[arg-type]
        data_dir=tmp_path / "data",
    )


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    readable = keygen(tmp_path / "readable")
    readable.chmod(0o644)
    group = keygen(tmp_path / "group")
    group.chmod(0o640)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(os.urandom(300))
    garbage.chmod(0o600)
    encrypted = tmp_path / "encrypted"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(encrypted)],
        check=True,
        env=CLEAN_ENV,
    )
    public = keygen(tmp_path / "pub").with_suffix(".pub")
    public.chmod(0o600)
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    big = tmp_path / "big"
    big.write_bytes(b"A" * 200_000)
    big.chmod(0o600)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)  # would block a plain open() forever
    foreign = keygen(tmp_path / "foreign")
    os.chown(foreign, 65534, 65534)  # 0600 but someone else's: they could swap in their key
    return {
        "mode_0644": (readable, "mode 0644"),
        "fifo": (fifo, "not a regular file"),
        "foreign_owner": (foreign, "owned by uid 65534"),
        "mode_0640": (group, "mode 0640"),
        "missing": (tmp_path / "nonexistent", "no such file"),
        "garbage": (garbage, "not an unencrypted"),
        "encrypted": (encrypted, "not an unencrypted"),
        "public_key": (public, "not an unencrypted"),
        "directory": (directory, "not a regular file"),
        "too_large": (big, "too large"),
    }


CASES = ["mode_0644", "mode_0640", "missing", "garbage", "encrypted", "public_key", "directory",
         "too_large", "fifo", "foreign_owner"]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
async def test_a_bad_host_key_file_stops_the_gateway_naming_it(tmp_path: Path, case: str) -> None:
    path, problem = _bad_files(tmp_path)[case]
    gateway = _gateway(tmp_path, [keygen(tmp_path / "fine"), path])
    with pytest.raises(InvalidInput) as caught:
        await gateway.start()
    message = str(caught.value)
    assert message.startswith("gateway.host_key_files: ")
    assert str(path) in message, message
    assert problem in message, message
    assert "\n" not in message
    assert gateway.listening == []
    assert not (tmp_path / "data" / "gateway").exists()  # nothing generated meanwhile


def test_two_keys_of_one_type_and_an_unoffered_type_are_refused(tmp_path: Path) -> None:
    first, second = keygen(tmp_path / "one"), keygen(tmp_path / "two")
    with pytest.raises(InvalidInput, match="a second ssh-ed25519 key"):
        load_host_key_files([first, second], signature_algs=ALGORITHMS["signature_algs"])
    with pytest.raises(InvalidInput, match="not offered"):
        load_host_key_files([first], signature_algs=["rsa-sha2-512"])
    weak = tmp_path / "weak_rsa"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(weak)],
        check=True,
        env=CLEAN_ENV,
    )
    with pytest.raises(InvalidInput, match="RSA key of 2048 bits is too weak"):
        load_host_key_files([weak], signature_algs=ALGORITHMS["signature_algs"])
    ecdsa = keygen(tmp_path / "three", "ecdsa")
    keys = load_host_key_files([first, ecdsa], signature_algs=ALGORITHMS["signature_algs"])
    assert [k.get_algorithm() for k in keys] == ["ssh-ed25519", "ecdsa-sha2-nistp256"]


def _up(tmp_path: Path, files: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")}
    env.update(
        STOCKADE_DATA_DIR=str(tmp_path / "data"),
        STOCKADE_API__PORT="0",
        STOCKADE_GATEWAY__PORT="0",
        STOCKADE_BROKER__PORT="0",
        STOCKADE_SHIELD__ENFORCERS='["denylist"]',
        STOCKADE_GATEWAY__HOST_KEY_FILES=files,
    )
    return subprocess.run(
        [STOCKADE, "up"], env=env, capture_output=True, text=True, timeout=90, check=False
    )


@pytest.mark.slow
@pytest.mark.parametrize("case", ["mode_0644", "missing", "garbage"])
def test_stockade_up_with_a_bad_host_key_file_is_one_line_exit_2(tmp_path: Path, case: str) -> None:
    path, problem = _bad_files(tmp_path)[case]
    result = _up(tmp_path, f'["{path}"]')
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    assert problem in lines[0]
    assert "Traceback" not in result.stderr


def test_a_symlinked_key_loads_and_the_checks_apply_to_its_target(tmp_path: Path) -> None:
    """Kubernetes mounts a Secret's files as symbolic links into a ``..data`` directory."""
    target = keygen(tmp_path / "real_key")
    link = tmp_path / "host_key"
    link.symlink_to(target)
    (key,) = load_host_key_files([link], signature_algs=ALGORITHMS["signature_algs"])
    assert key.get_algorithm() == "ssh-ed25519"
    target.chmod(0o644)  # the link itself is 0777; what counts is the file read
    with pytest.raises(InvalidInput, match="mode 0644"):
        load_host_key_files([link], signature_algs=ALGORITHMS["signature_algs"])
