"""The console app in process against real services (SQLite store, NATS KV, the shipped policy):
sign-in, security headers, CSRF, origin checks, roles, and hostile requests."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from stockade.console import (
    COOKIE,
    PREFIX,
    issue_login_code,
)
from stockade.identity import SessionRequest
from stockade.store import SessionRow
from tests.console.conftest import Env, _principal


async def test_a_code_works_once_and_never_for_a_forged_one(env: Env) -> None:
    code = await issue_login_code(env.codes, "ada")  # type: ignore[arg-type]
    first = await env.client.post(f"{PREFIX}/login", json={"code": code})
    assert first.status_code == 200
    set_cookie = first.headers["set-cookie"]
    for flag in ("Secure", "HttpOnly", "SameSite=strict", f"Path={PREFIX}"):
        assert flag.lower() in set_cookie.lower(), set_cookie
    again = await env.client.post(f"{PREFIX}/login", json={"code": code})
    assert again.status_code == 403
    for forged in ("", "x" * 43, "../" * 10, "a" * 5000, 42, None, ["x"]):
        answer = await env.client.post(f"{PREFIX}/login", json={"code": forged})
        assert answer.status_code == 403, forged


async def test_concurrent_redeems_of_one_code_let_one_in(env: Env) -> None:
    code = await issue_login_code(env.codes, "ada")  # type: ignore[arg-type]
    answers = await asyncio.gather(
        *(env.client.post(f"{PREFIX}/login", json={"code": code}) for _ in range(8))
    )
    assert sorted(a.status_code for a in answers) == [200] + [403] * 7


async def test_login_refuses_other_origins_forms_and_users_without_a_console_role(
    env: Env,
) -> None:
    code = await issue_login_code(env.codes, "ada")  # type: ignore[arg-type]
    cross = await env.client.post(
        f"{PREFIX}/login", json={"code": code}, headers={"Origin": "https://evil.test"}
    )
    assert cross.status_code == 403
    as_form = await env.client.post(f"{PREFIX}/login", data={"code": code})
    assert as_form.status_code == 415
    dev = await issue_login_code(env.codes, "dev")  # type: ignore[arg-type]
    refused = await env.client.post(f"{PREFIX}/login", json={"code": dev})
    assert refused.status_code == 403
    assert "console.view requires role admin or auditor" in refused.text
    assert COOKIE not in refused.headers.get("set-cookie", "")


async def test_every_page_has_the_security_headers_and_needs_a_session(env: Env) -> None:
    for path in ("sessions", "audit", "shield", "users", "workspaces", "login", "nowhere"):
        answer = await env.client.get(f"{PREFIX}/{path}")
        assert answer.headers["x-frame-options"] == "DENY"
        csp = answer.headers["content-security-policy"]
        assert "script-src 'self' 'wasm-unsafe-eval'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        if path not in ("login", "nowhere"):
            assert answer.status_code == 303
            assert answer.headers["location"] == f"{PREFIX}/login"
    posted = await env.client.post(f"{PREFIX}/shield/ban", data={"source": "192.0.2.1"})
    assert posted.status_code == 401


async def test_pages_have_no_inline_script_or_style(env: Env) -> None:
    await env.sign_in("ada")
    for path in ("sessions", "audit", "shield", "users", "workspaces", "login"):
        html = (await env.client.get(f"{PREFIX}/{path}")).text
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert "src=" in tag, tag
        assert re.search(r"\sstyle=", html) is None
        assert re.search(r"\son[a-z]+=", html) is None
        assert "<style" not in html


async def test_csrf_and_origin_are_checked_before_any_action(env: Env) -> None:
    token = await env.sign_in("ada")
    for data, headers in (
        ({"source": "192.0.2.1"}, {}),
        ({"source": "192.0.2.1", "csrf": ""}, {}),
        ({"source": "192.0.2.1", "csrf": ("B" if token[0] == "A" else "A") + token[1:]}, {}),
        ({"source": "192.0.2.1", "csrf": token}, {"Origin": "https://evil.test"}),
    ):
        answer = await env.client.post(f"{PREFIX}/shield/ban", data=data, headers=headers)
        assert answer.status_code == 403, (data, headers)
    as_json = await env.client.post(
        f"{PREFIX}/shield/ban", json={"source": "192.0.2.1", "csrf": token}
    )
    assert as_json.status_code == 403
    twice = await env.client.post(
        f"{PREFIX}/shield/ban",
        content=f"csrf={token}&source=192.0.2.1&source=192.0.2.2",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert twice.status_code == 400
    assert await env.bans.all() == []
    done = await env.client.post(
        f"{PREFIX}/shield/ban", data={"source": "192.0.2.1", "csrf": token, "duration": "10m"}
    )
    assert done.status_code == 303
    (ban,) = await env.bans.all()
    assert ban.source == "192.0.2.1"
    assert ban.reason == "manual (console: ada)"


async def test_an_auditor_reads_but_cannot_ban_unban_or_kill(env: Env) -> None:
    token = await env.sign_in("otto")
    for path in ("sessions", "audit", "shield", "users", "workspaces"):
        assert (await env.client.get(f"{PREFIX}/{path}")).status_code == 200, path
    ban = await env.client.post(f"{PREFIX}/shield/ban", data={"source": "192.0.2.5", "csrf": token})
    assert ban.status_code == 403
    assert "console.ban requires role admin" in ban.text
    unban = await env.client.post(
        f"{PREFIX}/shield/unban", data={"source": "192.0.2.5", "csrf": token}
    )
    assert unban.status_code == 403
    opened = await env.identity.open_session(
        await _principal(env, "ada"),
        SessionRequest(client_ip="127.0.0.1", client_port=1, gateway_id="g", boot_id="b"),
    )
    kill = await env.client.post(
        f"{PREFIX}/sessions/{opened.session_id}/kill", data={"csrf": token, "confirm": "yes"}
    )
    assert kill.status_code == 403
    assert await env.identity.is_session_live(opened.session_id)
    assert await env.bans.all() == []


async def test_a_role_taken_away_counts_at_once_and_logout_ends_the_cookie(env: Env) -> None:
    token = await env.sign_in("otto")
    assert (await env.client.get(f"{PREFIX}/users")).status_code == 200
    await env.identity.set_roles("otto", [])
    assert (await env.client.get(f"{PREFIX}/users")).status_code == 403
    await env.identity.set_roles("otto", ["auditor"])
    cookie = env.client.cookies.get(COOKIE)
    out = await env.client.post(f"{PREFIX}/logout", data={"csrf": token})
    assert out.status_code == 303
    env.client.cookies.set(COOKIE, cookie or "", domain="console.test", path=PREFIX)
    assert (await env.client.get(f"{PREFIX}/users")).status_code == 303


async def test_recordings_are_served_only_from_the_recordings_directory(
    env: Env, tmp_path: Path
) -> None:
    await env.sign_in("ada")
    outside = tmp_path / "secret.cast"
    outside.write_text('{"version": 2, "width": 80, "height": 24}\n[0.1, "o", "secret"]\n')
    link = env.recordings / "link.cast"
    link.symlink_to(outside)
    inside = env.recordings / "ok.cast"
    inside.write_text('{"version": 2, "width": 80, "height": 24}\n[0.1, "o", "hello"]\n[0.2, "o"')
    now = datetime.now(UTC)
    async with env.store.transaction() as session:
        for sid, path in (("a" * 32, outside), ("b" * 32, link), ("c" * 32, inside),
                          ("d" * 32, env.recordings / ".." / "secret.cast")):  # fmt: skip
            session.add(SessionRow(id=sid, username="ada", workspace="ada", client_ip="127.0.0.1",
                                   client_port=1, started_at=now, ended_at=now,
                                   recording=str(path)))  # fmt: skip
    for sid in ("a" * 32, "b" * 32, "d" * 32):
        answer = await env.client.get(f"{PREFIX}/sessions/{sid}/cast")
        assert answer.status_code == 404, sid
        assert '"o", "secret"' not in answer.text
    served = await env.client.get(f"{PREFIX}/sessions/{'c' * 32}/cast")
    assert served.status_code == 200
    assert served.text.splitlines()[1] == '[0.1, "o", "hello"]'
    assert len(served.text.splitlines()) == 2  # the unfinished last line is left out
    listing = await env.client.get(f"{PREFIX}/sessions?user=ada&state=ended")
    assert listing.text.count(f"{PREFIX}/sessions/") >= 4


@pytest.mark.parametrize(
    "query",
    ["state=bogus", "page=0", "page=-1", "page=abc", "since=yesterday-ish", "user=" + "x" * 200,
     "user=a%00b"],
)  # fmt: skip
async def test_hostile_filters_answer_400(env: Env, query: str) -> None:
    await env.sign_in("ada")
    answer = await env.client.get(f"{PREFIX}/sessions?{query}")
    assert answer.status_code == 400, answer.text


async def test_audit_export_and_search_filters_are_validated(env: Env) -> None:
    await env.sign_in("ada")
    assert (await env.client.get(f"{PREFIX}/audit?decision=maybe")).status_code == 400
    exported = await env.client.get(f"{PREFIX}/audit/export")
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    for line in exported.text.splitlines():
        json.loads(line)


async def test_a_kill_needs_the_confirmation_then_ends_the_session(env: Env) -> None:
    token = await env.sign_in("ada")
    opened = await env.identity.open_session(
        await _principal(env, "ada"),
        SessionRequest(client_ip="127.0.0.1", client_port=1, gateway_id="g", boot_id="b"),
    )
    url = f"{PREFIX}/sessions/{opened.session_id}/kill"
    unconfirmed = await env.client.post(url, data={"csrf": token})
    assert unconfirmed.status_code == 400
    assert await env.identity.is_session_live(opened.session_id)
    done = await env.client.post(url, data={"csrf": token, "confirm": "yes"})
    assert done.status_code == 303
    assert not await env.identity.is_session_live(opened.session_id)
    info = await env.identity.get_session(opened.session_id)
    assert info.end_reason == "killed"
    again = await env.client.post(url, data={"csrf": token, "confirm": "yes"})
    assert again.status_code == 400
    unknown = await env.client.post(
        f"{PREFIX}/sessions/{'9' * 32}/kill", data={"csrf": token, "confirm": "yes"}
    )
    assert unknown.status_code == 404


async def test_htmx_gets_the_rows_only_and_a_history_restore_the_whole_page(env: Env) -> None:
    await env.sign_in("otto")
    for path in ("sessions", "audit"):
        whole = await env.client.get(f"{PREFIX}/{path}")
        rows = await env.client.get(f"{PREFIX}/{path}", headers={"HX-Request": "true"})
        restored = await env.client.get(
            f"{PREFIX}/{path}",
            headers={"HX-Request": "true", "HX-History-Restore-Request": "true"},
        )
        assert "<html" in whole.text
        assert "<html" not in rows.text
        assert "<html" in restored.text
        assert rows.headers["vary"] == "HX-Request"
