"""Issue 12 end to end: ``stockade up`` as a real process, the real OpenSSH client, and Debian's
Chromium driven by Playwright (``executable_path``; Playwright's own browsers are never used).

Each test signs in through the one-time URL that ``stockade console login`` prints and records
every request the page makes: none may leave the broker's origin.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from integration.test_up import Server, _keygen, cli

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CLEAN = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}
KILL_MESSAGE = "session terminated by an administrator"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data")
    yield srv
    if srv.proc is not None:
        srv.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Console:
    """A signed-in browser context whose every request is recorded."""

    def __init__(
        self,
        browser: Browser,
        url: str,
        *,
        width: int = 1280,
        height: int = 800,
        scheme: Literal["light", "dark"] = "light",
    ) -> None:
        self.origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
        self.context: BrowserContext = browser.new_context(
            ignore_https_errors=True,
            viewport={"width": width, "height": height},
            color_scheme=scheme,
        )
        self.requests: list[str] = []
        self.context.on("request", lambda request: self.requests.append(request.url))
        self.page: Page = self.context.new_page()
        self.page.goto(url)
        self.page.wait_for_url(re.compile(r".*/console/sessions$"), timeout=15_000)

    def foreign(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(self.origin + "/")]

    def csrf(self) -> str:
        token = self.page.locator("input[name=csrf]").first.get_attribute("value")
        assert token
        return token

    def close(self) -> None:
        self.context.close()


def _login_url(server: Server, user: str) -> str:
    made = cli(server.data_dir, "console", "login", user)
    assert made.returncode == 0, made.stderr
    url = made.stdout.strip()
    assert re.fullmatch(r"https://127\.0\.0\.1:\d+/console/login#code=[-_A-Za-z0-9]{43}", url), url
    return url


def _ssh(port: int, key: Path, kh: Path) -> list[str]:
    return [
        "ssh", "-p", str(port), "-F", "/dev/null", "-i", str(key), "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={kh}", "-o", "StrictHostKeyChecking=accept-new",
        "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "LogLevel=ERROR",
    ]  # fmt: skip


def _until(check: Callable[[], Any], within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def _sessions(server: Server) -> list[dict[str, Any]]:
    listed = cli(server.data_dir, "sessions", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows: list[dict[str, Any]] = json.loads(listed.stdout)
    return rows


def _users(server: Server, tmp_path: Path) -> Path:
    """Users ada (admin), otto (auditor) and carl (contractor, with a key); carl's key path."""
    key = tmp_path / "carl"
    pub = _keygen(key)
    for args in (
        ("ada", "--role", "admin"),
        ("otto", "--role", "auditor"),
        ("carl", "--role", "contractor", "--ssh-key", str(pub)),
    ):
        added = cli(server.data_dir, "users", "add", *args)
        assert added.returncode == 0, added.stderr
    return key


def _terminal_text(page: Page) -> str:
    return str(page.locator("#player .ap-term").inner_text())


def test_recorded_session_plays_in_the_console(
    server: Server, browser: Browser, tmp_path: Path
) -> None:
    server.start()
    port = server.listening("SSH gateway")
    key = _users(server, tmp_path)
    ran = subprocess.run(
        [*_ssh(port, key, tmp_path / "kh"), "carl@127.0.0.1", "echo console-marker-$((6*7))"],
        capture_output=True, env=CLEAN, timeout=60, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert b"console-marker-42" in ran.stdout
    (row,) = _until(lambda: [r for r in _sessions(server) if r["ended_at"] and r["recording"]])

    console = Console(browser, _login_url(server, "ada"))
    page = console.page
    page.get_by_role("link", name=row["session_id"]).click()
    page.wait_for_url(re.compile(rf".*/console/sessions/{row['session_id']}$"))
    page.locator("#player .ap-term").wait_for(timeout=15_000)
    page.wait_for_function(
        "() => document.querySelector('#player .ap-term').innerText.includes('console-marker-42')",
        timeout=15_000,
    )
    assert "console-marker-42" in _terminal_text(page)
    assert "$((6*7))" not in _terminal_text(page)  # output only: typed input is not replayed
    assert page.get_by_label("Speed").count() == 1
    assert page.get_by_label("Idle time limit").count() == 1
    page.screenshot(path=str(tmp_path / "session-player.png"), full_page=True)
    assert (tmp_path / "session-player.png").stat().st_size > 10_000

    # htmx (under the strict CSP) swaps the filtered rows in place and pushes the URL.
    page.goto(console.origin + "/console/sessions")
    page.evaluate("window.sameDocument = true")
    page.get_by_label("User").fill("nobody-here")
    page.get_by_label("User").press("Enter")
    page.wait_for_url(re.compile(r".*user=nobody-here.*"))
    page.get_by_text("No session matches.").wait_for()
    assert page.evaluate("window.sameDocument === true")  # no full reload

    # Keyboard: the first Tab lands on the skip link, and focus is visible.
    page.goto(console.origin + "/console/sessions")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", "")
    for name in ("audit", "shield", "workspaces", "users"):
        page.goto(f"{console.origin}/console/{name}")
        assert page.locator("h1").count() == 1
    users = page.locator("table").inner_text()
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", str(key.with_suffix(".pub"))], capture_output=True, text=True,
        check=True,
    ).stdout.split()[1]  # fmt: skip
    assert fingerprint in users  # whole, never shortened
    assert console.foreign() == [], console.foreign()

    light = console.page.evaluate("getComputedStyle(document.body).backgroundColor")
    console.close()

    # A phone in dark mode: the page fits 390 px without a horizontal scroll of the page itself,
    # and follows the system's colour scheme.
    phone = Console(browser, _login_url(server, "ada"), width=390, height=844, scheme="dark")
    width = phone.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, width
    dark = phone.page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert (light, dark) == ("rgb(255, 255, 255)", "rgb(13, 17, 23)")
    phone.page.screenshot(path=str(tmp_path / "sessions-phone.png"))
    assert phone.foreign() == [], phone.foreign()
    phone.close()
    assert server.stop() == 0


def test_live_session_is_watched_and_killed(
    server: Server, browser: Browser, tmp_path: Path
) -> None:
    server.start()
    port = server.listening("SSH gateway")
    key = _users(server, tmp_path)
    client = subprocess.Popen(
        [*_ssh(port, key, tmp_path / "kh"), "carl@127.0.0.1",
         'echo live-ready; while read -r line; do echo "got-$line"; done'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=CLEAN,
    )  # fmt: skip
    try:
        assert client.stdout is not None
        assert client.stdin is not None
        assert client.stdout.readline() == b"live-ready\n"
        (row,) = _until(lambda: [r for r in _sessions(server) if not r["ended_at"]])
        console = Console(browser, _login_url(server, "ada"))
        page = console.page
        page.goto(f"{console.origin}/console/sessions?state=live")
        page.get_by_role("link", name=row["session_id"]).click()
        page.locator("#player .ap-term").wait_for(timeout=15_000)
        page.wait_for_function(
            "() => document.querySelector('#player .ap-term').innerText.includes('live-ready')",
            timeout=15_000,
        )
        client.stdin.write(b"alpha-77\n")
        client.stdin.flush()
        page.wait_for_function(  # bounded wait; the delay itself is measured in bench/
            "() => document.querySelector('#player .ap-term').innerText.includes('got-alpha-77')",
            timeout=15_000,
        )
        page.screenshot(path=str(tmp_path / "live.png"))
        # Kill needs the confirmation box: without it the server refuses (and nothing ends).
        page.get_by_role("button", name="Kill session").click()
        assert client.poll() is None  # the browser's required checkbox stopped the submit
        page.get_by_label(re.compile("I confirm")).check()
        page.get_by_role("button", name="Kill session").click()
        page.wait_for_load_state()
        assert page.url.endswith("?killed=1"), page.locator("main").inner_text()
        _out, err = client.communicate(timeout=30)
        assert KILL_MESSAGE.encode() in err, err
        assert page.get_by_role("status").first.inner_text() == "Session killed."
        assert console.foreign() == [], console.foreign()
        console.close()
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    (ended,) = _sessions(server)
    assert ended["end_reason"] == "killed", ended
    assert server.stop() == 0


def _audit_rows(page: Page, origin: str, action: str) -> list[str]:
    page.goto(f"{origin}/console/audit?action={action}")
    return [str(t) for t in page.locator("ol.events summary").all_inner_texts()]


def test_ban_unban_auditor_csrf_one_time_code_and_logout(
    server: Server, browser: Browser, tmp_path: Path
) -> None:
    server.start()
    _users(server, tmp_path)
    source = "203.0.113.77"
    url = _login_url(server, "ada")
    console = Console(browser, url)
    page = console.page
    origin = console.origin

    # The code worked once; the same link again is refused.
    again = console.context.request.post(
        f"{origin}/console/login",
        data=json.dumps({"code": url.split("#code=")[1]}),
        headers={"Content-Type": "application/json"},
    )
    assert again.status == 403, again.text()

    # Ban from the form, then it is in `stockade shield list`.
    page.goto(f"{origin}/console/shield")
    page.get_by_label("Source (IP or CIDR)").fill(source)
    page.get_by_label("For", exact=True).fill("2h")
    page.get_by_label("Reason", exact=True).fill("seen probing")
    page.get_by_role("button", name="Ban", exact=True).click()
    page.wait_for_url(re.compile(r".*/console/shield$"))
    assert source in page.locator("table").inner_text()
    listed = cli(server.data_dir, "shield", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (ban,) = [b for b in json.loads(listed.stdout) if b["source"] == source]
    assert "console: ada" in ban["reason"]

    # Without the CSRF token, or with a wrong one, a ban answers 403 and bans nothing.
    for form in ({"source": "198.51.100.9", "duration": "1h"},
                 {"source": "198.51.100.9", "duration": "1h", "csrf": "x" * 43}):  # fmt: skip
        forged = console.context.request.post(f"{origin}/console/shield/ban", form=form)
        assert forged.status == 403, forged.status

    # Unban from the page.
    page.get_by_role("button", name=f"Unban {source}").click()
    page.wait_for_url(re.compile(r".*/console/shield$"))
    assert source not in page.locator("table").inner_text()

    # The audit page shows both actions with the admin's name.
    def both() -> list[str]:
        rows = _audit_rows(page, origin, "console.ban")
        kinds = {k for k in ("shield.ban", "shield.unban") for r in rows if f"{k} {source}" in r}
        return rows if len(kinds) == 2 else []

    rows = _until(both)
    assert rows, _audit_rows(page, origin, "console.ban")
    mine = [r.split() for r in rows if source in r]
    assert mine, rows
    assert all("ada" in words and "allow" in words for words in mine), rows
    assert "198.51.100.9" not in " ".join(_audit_rows(page, origin, "console.ban"))

    # The export of the current filter is JSON lines of those events.
    exported = console.context.request.get(f"{origin}/console/audit/export?action=console.ban")
    assert exported.status == 200
    lines = [json.loads(x) for x in exported.text().splitlines()]
    assert lines
    assert all(x["action"] == "console.ban" for x in lines)

    # Logout: the old cookie is refused afterwards.
    (cookie,) = [c for c in console.context.cookies() if c["name"] == "stockade_console"]
    assert cookie["httpOnly"]
    assert cookie["secure"]
    assert cookie["sameSite"] == "Strict"
    page.get_by_role("button", name=re.compile("Sign out")).click()
    page.wait_for_url(re.compile(r".*/console/login$"))
    replay = browser.new_context(ignore_https_errors=True)
    replay.add_cookies([cookie])  # type: ignore[list-item]
    refused = replay.request.get(f"{origin}/console/sessions", max_redirects=0)
    assert refused.status == 303
    assert refused.headers["location"].endswith("/console/login")
    replay.close()
    assert console.foreign() == [], console.foreign()
    console.close()

    # An auditor views every page, but every ban and kill answers 403 and is audited.
    auditor = Console(browser, _login_url(server, "otto"))
    for name in ("sessions", "audit", "shield", "users", "workspaces"):
        seen = auditor.context.request.get(f"{origin}/console/{name}")
        assert seen.status == 200, (name, seen.status)
        assert seen.headers["x-frame-options"] == "DENY"
        assert "script-src 'self'" in seen.headers["content-security-policy"]
        assert "unsafe-inline" not in seen.headers["content-security-policy"]
    auditor.page.goto(f"{origin}/console/shield")
    token = auditor.csrf()
    denied = auditor.context.request.post(
        f"{origin}/console/shield/ban", form={"csrf": token, "source": "198.51.100.10"}
    )
    assert denied.status == 403, denied.status
    killed = auditor.context.request.post(
        f"{origin}/console/sessions/{'0' * 32}/kill", form={"csrf": token, "confirm": "yes"}
    )
    assert killed.status == 403, killed.status
    listed = cli(server.data_dir, "shield", "list", "--json")
    assert "198.51.100.10" not in listed.stdout

    def denial() -> list[str]:
        rows = _audit_rows(auditor.page, origin, "console.ban")
        return [r for r in rows if "otto" in r and "deny" in r and "198.51.100.10" in r]

    assert _until(denial), _audit_rows(auditor.page, origin, "console.ban")
    assert auditor.foreign() == [], auditor.foreign()
    auditor.close()
    assert server.stop() == 0
