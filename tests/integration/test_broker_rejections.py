"""Acceptance 4: expired, revoked, wrong-audience, unknown-kid and forged session tokens, end to
end through each helper: exit 1, one clear line on stderr, never a secret on stdout."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

import pytest
from broker.fixtures import env, openbao
from broker.harness import BrokerEnv

from stockade.broker import workspace_config
from stockade.identity import KeyRing
from stockade.tls import DevCA

__all__ = ["env", "openbao"]

pytestmark = pytest.mark.timeout(120)

HELPERS = {
    "git": (["git-credential-stockade", "get"], b"protocol=https\nhost=git.example.com\n\n"),
    "docker": (["docker-credential-stockade", "get"], b"registry.example.com"),
    "kubectl": (["kubectl-credential-stockade", "--cluster", "prod"], b""),
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forge(token: str, **changes: object) -> str:
    """``token`` with its payload changed and the original signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


async def tokens(env: BrokerEnv, user: str) -> dict[str, str]:
    """One token per way of being wrong, and a good one; the clock is moved past the short one."""
    _, expiring = await env.session_token(user, ttl=60)
    revoked_sid, revoked = await env.session_token(user, ttl=3600)
    await env.identity.end_session(revoked_sid, reason="logout")
    _, wrong_audience = await env.session_token(user, ttl=3600, audience="some-other-service")
    good_sid, good = await env.session_token(user, ttl=3600)
    claims = await env.identity.verify_token(good)
    stranger = KeyRing(env.tmp / "stranger-keys")
    unknown_kid = stranger.sign(
        {
            "jti": secrets.token_hex(8),
            "sub": user,
            "iss": claims.iss,
            "aud": claims.aud,
            "iat": int(claims.iat.timestamp()),
            "nbf": int(claims.iat.timestamp()),
            "exp": int(claims.exp.timestamp()),
            "sid": good_sid,
        }
    )
    forged = forge(good, sub="root", roles=["admin"])
    env.clock.offset += 120
    return {
        "expired": expiring,
        "session_ended": revoked,
        "bad_audience": wrong_audience,
        "unknown_kid": unknown_kid,
        "bad_signature": forged,
        "ok": good,
    }


@pytest.mark.parametrize("helper", sorted(HELPERS))
async def test_rejection_matrix(env: BrokerEnv, helper: str) -> None:
    user = "dev" + secrets.token_hex(3)
    await env.add_user(user)
    assert env.bao is not None
    secret = "s-" + secrets.token_urlsafe(16)
    env.bao.kv_put(f"stockade/{user}/git/git.example.com", {"username": "u", "password": secret})
    env.bao.kv_put(
        f"stockade/{user}/docker/registry.example.com", {"username": "u", "secret": secret}
    )
    env.bao.kv_put(f"stockade/{user}/kubernetes/prod", {"token": secret})
    home = env.tmp / "home"
    home.mkdir()
    workspace_config(home, env.url, env.ca)
    cmd, stdin = HELPERS[helper]
    by_reason = await tokens(env, user)

    good = await env.run(cmd, env=env.session_env(by_reason.pop("ok"), home), stdin=stdin)
    assert good.returncode == 0, good.stderr
    assert secret.encode() in good.stdout

    for reason, token in by_reason.items():
        result = await env.run(cmd, env=env.session_env(token, home), stdin=stdin)
        stderr = result.stderr.decode()
        assert result.returncode == 1, (reason, stderr)
        assert stderr.count("\n") == 1, stderr
        assert stderr == (
            f"{cmd[0]}: session token rejected ({reason}); reconnect to get a fresh session\n"
        )
        assert secret.encode() not in result.stdout
        assert token.encode() not in result.stdout + result.stderr

    events = await env.events.wait_for(5, allow=False)
    assert sorted(e["reason"] for e in events) == sorted(by_reason)
    assert not any(secret in json.dumps(e) for e in env.events.received)


async def test_unreadable_token_and_wrong_ca(env: BrokerEnv, tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    result = await env.run(
        ["kubectl-credential-stockade", "--cluster", "prod"],
        env=env.session_env("garbage", home, STOCKADE_CA=str(env.ca)),
    )
    assert result.stderr == (
        b"kubectl-credential-stockade: session token rejected (malformed); "
        b"reconnect to get a fresh session\n"
    )
    DevCA(tmp_path / "other").ensure()  # a CA that did not sign the broker's certificate
    result = await env.run(
        ["git-credential-stockade", "get"],
        env=env.session_env("t", home, STOCKADE_CA=str(tmp_path / "other" / "ca.pem")),
        stdin=b"protocol=https\nhost=h.example.com\n\n",
    )
    assert result.returncode == 1
    assert b"TLS to the broker failed" in result.stderr
    assert result.stderr.count(b"\n") == 1
