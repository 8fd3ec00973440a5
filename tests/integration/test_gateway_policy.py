"""Obligations and requests decided by a custom policy bundle, with the real OpenSSH client:
``require_mfa`` (keyboard-interactive TOTP, then the key) and ``ssh.x11``."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gateway.harness import CLEAN_ENV, GatewayEnv, gateway_env, policy_bundle, ssh_options

from stockade.identity import totp_code

pytestmark = pytest.mark.timeout(180)

#: The default bundle, plus: role ``mfa`` must pass TOTP; role ``x11`` may forward X11.
EDITS = {
    '"require_mfa": false,': '"require_mfa": "mfa" in input.context.user.roles,',
    'allow if "admin" in input.context.user.roles\n': (
        'allow if "admin" in input.context.user.roles\n\n'
        'allow if {\n\tinput.action == "ssh.x11"\n\t"x11" in input.context.user.roles\n}\n'
    ),
}


@pytest.fixture
async def env(tmp_path: Path, nats_url: str) -> AsyncIterator[GatewayEnv]:
    bundle = policy_bundle(tmp_path / "policy", EDITS)
    async with gateway_env(tmp_path, nats_url, bundle_dir=bundle) as env:
        yield env


def _answering(env: GatewayEnv, code: str) -> dict[str, str]:
    """A client environment whose askpass program answers every prompt with ``code``."""
    script = env.tmp / f"askpass-{code}.sh"
    script.write_text(f"#!/bin/sh\necho '{code}'\n")
    script.chmod(0o700)
    return {**CLEAN_ENV, "SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force"}


def _mfa_cmd(env: GatewayEnv, user: str, key: Path, command: str) -> list[str]:
    # no BatchMode: it turns keyboard-interactive off; one prompt, so one code per attempt;
    # TOTP first: OpenSSH does not go back to a method it already tried
    return [
        "ssh", *ssh_options(env.tmp / "known_hosts"), "-p", str(env.port),
        "-o", "KexAlgorithms=curve25519-sha256", "-o", "KbdInteractiveAuthentication=yes",
        "-o", "NumberOfPasswordPrompts=1", "-o", "PasswordAuthentication=no",
        "-o", "PreferredAuthentications=keyboard-interactive,publickey",
        "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
        f"{user}@127.0.0.1", command,
    ]  # fmt: skip


def _codes(secret: bytes) -> set[str]:
    """The codes the gateway accepts now (±1 time step)."""
    step = int(time.time()) // 30
    return {totp_code(secret, s) for s in (step - 1, step, step + 1)}


async def test_require_mfa_totp_then_key(env: GatewayEnv) -> None:
    key = await env.add_user("mona", "mfa")
    assert key is not None
    enrollment = await env.identity.enable_totp("mona")
    secret = base64.b32decode(enrollment.secret + "=" * (-len(enrollment.secret) % 8))

    code = totp_code(secret, int(time.time()) // 30)
    good = await env.run(_mfa_cmd(env, "mona", key, "echo mfa-ok"), env=_answering(env, code))
    assert good.stdout == b"mfa-ok\n", good.stderr
    await env.succeeded.settle()
    assert len(env.succeeded.matching(username="mona")) == 1
    await env.failed.settle()
    assert env.failed.matching(username="mona") == []

    wrong = next(c for c in (f"{n:06d}" for n in range(1000)) if c not in _codes(secret))
    bad = await env.run(_mfa_cmd(env, "mona", key, "echo no"), env=_answering(env, wrong))
    assert bad.returncode == 255
    assert bad.stdout == b""
    await env.failed.settle()
    events = env.failed.matching(username="mona")
    assert len(events) == 1, events
    assert (events[0]["reason"], events[0]["method"]) == ("bad_totp", "keyboard-interactive")
    assert events[0]["gateway_id"] == "gw-test"

    replay = await env.run(_mfa_cmd(env, "mona", key, "echo no"), env=_answering(env, code))
    assert replay.returncode == 255
    assert replay.stdout == b""
    await env.failed.settle()
    events = env.failed.matching(username="mona")
    assert [e["reason"] for e in events] == ["bad_totp", "bad_totp"], events
    assert len(env.succeeded.matching(username="mona")) == 1


async def test_require_mfa_does_not_touch_other_roles(env: GatewayEnv) -> None:
    key = await env.add_user("nico")
    assert key is not None
    result = await env.run(env.ssh_cmd("nico", "echo plain", key=key))
    assert result.stdout == b"plain\n", result.stderr


def _x11_cmd(env: GatewayEnv, user: str, key: Path) -> list[str]:
    return env.ssh_cmd(user, "echo ran", key=key, options=["-X"])
