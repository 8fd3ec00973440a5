"""Hostile clients against the console (review of issue 12): typed input in recordings, live
views that outlive the viewer's rights, out-of-range parameters, the console over plain HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from stockade.console import COOKIE, PREFIX, issue_login_code
from stockade.identity import SessionRequest
from stockade.store import SessionRow
from tests.console.conftest import Env, _principal

_HEADER = '{"version": 2, "width": 80, "height": 24}\n'


async def _ended_session(env: Env, sid: str, cast: Path) -> None:
    now = datetime.now(UTC)
    async with env.store.transaction() as session:
        row = SessionRow(id=sid, username="ada", workspace="ada", client_ip="127.0.0.1",
                         client_port=1, started_at=now, ended_at=now,
                         recording=str(cast))  # fmt: skip
        session.add(row)


async def test_the_cast_served_to_the_page_has_no_typed_input(env: Env) -> None:
    """record_input puts what a contractor types (a password at a prompt) in the cast; the
    player never needs it, so it must not leave the broker."""
    await env.sign_in("otto")
    cast = env.recordings / "typed.cast"
    cast.write_text(
        _HEADER
        + '[0.1, "o", "Password: "]\n'
        + '[0.2, "i", "hunter2\\r"]\n'
        + '[0.25,"i","spaced-secret"]\n'
        + '[0.26, "\\u0069", "escaped-secret"]\n'
        + '[0.3, "r", "100x30"]\n'
        + '[0.4, "m", "marker"]\n'
        + '[0.5, "o", "ok\\r\\n"]\n'
    )
    await _ended_session(env, "f" * 32, cast)
    served = await env.client.get(f"{PREFIX}/sessions/{'f' * 32}/cast")
    assert served.status_code == 200
    for secret in ("hunter2", "spaced-secret", "escaped-secret"):
        assert secret not in served.text
    events = [json.loads(line) for line in served.text.splitlines()[1:]]
    assert [e[1] for e in events] == ["o", "r", "m", "o"]
    assert json.loads(served.text.splitlines()[0])["version"] == 2


class _Stream:
    """A raw ASGI GET whose response body is read as it comes (httpx's ASGI transport waits
    for the whole body, and a live view never ends by itself)."""

    def __init__(self, app: Any, path: str, cookie: str) -> None:
        self.chunks: list[bytes] = []
        self.status = 0
        self.first = asyncio.Event()
        self.ended = asyncio.Event()
        self._gone = asyncio.Event()
        self._sent_request = False
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "https", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "client": ("127.0.0.1", 5001), "server": ("console.test", 443),
            "headers": [(b"host", b"console.test"), (b"cookie", f"{COOKIE}={cookie}".encode())],
        }  # fmt: skip
        self.task = asyncio.create_task(app(scope, self._receive, self._send))

    async def _receive(self) -> dict[str, Any]:
        if not self._sent_request:
            self._sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            if message.get("body"):
                self.chunks.append(message["body"])
                self.first.set()
            if not message.get("more_body", False):
                self.ended.set()

    async def close(self) -> None:
        self._gone.set()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self.task, 5)


async def _signed_out(env: Env, token: str) -> None:
    assert (await env.client.post(f"{PREFIX}/logout", data={"csrf": token})).status_code == 303


async def _disabled(env: Env, token: str) -> None:
    await env.identity.set_disabled("otto", True)


async def _role_taken(env: Env, token: str) -> None:
    await env.identity.set_roles("otto", [])


@pytest.mark.parametrize("revoke", [_signed_out, _disabled, _role_taken])
async def test_a_live_view_ends_when_the_viewer_loses_the_right_to_watch(
    env: Env, revoke: Callable[[Env, str], Awaitable[None]]
) -> None:
    """Logout, a disabled account or a role taken away end an open live view too, even while
    the watched session keeps printing (the stream used to run on for up to 12 hours)."""
    token = await env.sign_in("otto")
    cookie = env.client.cookies.get(COOKIE)
    assert cookie
    opened = await env.identity.open_session(
        await _principal(env, "ada"),
        SessionRequest(client_ip="127.0.0.1", client_port=1, gateway_id="g", boot_id="b"),
    )
    cast = env.recordings / "live.cast"
    cast.write_text(_HEADER + '[0.1, "o", "start\\r\\n"]\n')
    async with env.store.transaction() as session:
        row = await session.get(SessionRow, opened.session_id)
        assert row is not None
        row.recording = str(cast)

    async def keep_printing() -> None:
        with cast.open("a") as out:
            for i in range(2000):  # bounded: about 100 s at most
                out.write(f'[{1 + i / 10}, "o", "tick {i}\\r\\n"]\n')
                out.flush()
                await asyncio.sleep(0.05)

    writer = asyncio.create_task(keep_printing())
    stream = _Stream(env.app, f"{PREFIX}/sessions/{opened.session_id}/live", cookie)
    try:
        await asyncio.wait_for(stream.first.wait(), 10)
        assert stream.status == 200
        await revoke(env, token)
        try:
            await asyncio.wait_for(stream.ended.wait(), 10)
        except TimeoutError:
            pytest.fail("the live view kept streaming after the viewer lost the right to watch")
        assert await env.identity.is_session_live(opened.session_id)
        assert not writer.done()
        assert b"event: done" not in b"".join(stream.chunks)  # not reported as a session end
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        await stream.close()


@pytest.mark.parametrize("page", ["%C2%B2", "%D9%A3", "1" * 5000])
async def test_page_numbers_that_python_reads_oddly_answer_400(env: Env, page: str) -> None:
    """ "²".isdigit() is true but int("²") raises; int() of 5000 digits raises too: both were
    unhandled ValueErrors (a 500 and a traceback)."""
    await env.sign_in("ada")
    answer = await env.client.get(f"{PREFIX}/sessions?page={page}")
    assert answer.status_code == 400, answer.text
    assert "page" in answer.text


@pytest.mark.parametrize("before", ["9" * 30, str(2**63), "-1", "0"])
async def test_an_audit_cursor_out_of_range_answers_400(env: Env, before: str) -> None:
    """A ``before`` beyond SQLite's and PostgreSQL's 64-bit integers was an OverflowError (500)."""
    await env.sign_in("otto")
    answer = await env.client.get(f"{PREFIX}/audit?before={before}")
    assert answer.status_code == 400, answer.text
    assert "before" in answer.text


async def test_the_console_is_not_served_over_plain_http(env: Env) -> None:
    """The broker serves its app on unix sockets too (plain HTTP, one mounted in each workspace
    for the credential helpers): from there a workspace reached the console's sign-in."""
    code = await issue_login_code(env.codes, "ada")  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=env.app, client=("127.0.0.1", 5002))
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as plain:
        for path in ("login", "sessions", "static/login.js"):
            answer = await plain.get(f"{PREFIX}/{path}")
            assert answer.status_code == 404, path
            assert answer.headers["x-frame-options"] == "DENY"
        posted = await plain.post(f"{PREFIX}/login", json={"code": code})
        assert posted.status_code == 404
        assert "set-cookie" not in posted.headers
    used = await env.client.post(f"{PREFIX}/login", json={"code": code})
    assert used.status_code == 200  # the code was not spent by the plain-HTTP attempt


async def test_forms_from_sandboxed_frames_plain_text_or_multipart_are_refused(env: Env) -> None:
    """Held on review, kept as a guard: ``Origin: null`` (a sandboxed frame, a data: URL), the
    content types a cross-site form may send without a preflight, and method overrides."""
    token = await env.sign_in("ada")
    body = f"csrf={token}&source=192.0.2.77"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for headers in (
        {**form, "Origin": "null"},
        {**form, "Origin": "https://console.test.evil.test"},
        {"Content-Type": "text/plain"},
        {"Content-Type": "multipart/form-data; boundary=x"},
    ):
        answer = await env.client.post(f"{PREFIX}/shield/ban", content=body, headers=headers)
        assert answer.status_code == 403, headers
    for method, override in (("GET", "POST"), ("POST", "DELETE")):
        answer = await env.client.request(
            method, f"{PREFIX}/shield/ban?{body}", headers={"X-HTTP-Method-Override": override}
        )
        assert answer.status_code in (403, 405), (method, override)
    assert await env.bans.all() == []
