"""The web console in Debian's Chromium (Playwright): first contentful paint and live delay.

1. FCP: the sessions page (50 rows a page) with SESSIONS sessions in the store, served by the
   broker's TLS listener (cookie session, policy decision, count and page query, Jinja2), timed
   by Chromium's performance timeline (``first-contentful-paint``) over ROUNDS loads after a
   warm-up. Anchor: the very HTML of that page (the same 50 rows, same stylesheet and scripts)
   served as a fixed page by the same server, loaded as many times, interleaved. Goal: p50
   ratio <= 1.5x (p90 printed too).
2. live view: a live session's write-through cast (as the gateway's recorder appends it: one
   asciicast line per write, flushed) watched on its session page; a MutationObserver in the
   page stamps ``Date.now()`` when each marker appears; delay = that minus the write's
   ``time.time()``, for LIVE markers. Goal: p99 <= 250 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import async_playwright
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from bench._report import record
from stockade.authz import Authorizer
from stockade.broker import BrokerServer, create_app
from stockade.bus import Bus, EmbeddedNats
from stockade.console import (
    COOKIE,
    LOGIN_BUCKET,
    PREFIX,
    Sessions,
    create_console,
    issue_login_code,
)
from stockade.core.logging import configure_logging
from stockade.core.settings import AuthzSettings, IdentitySettings
from stockade.identity import IdentityService, KeyRing
from stockade.store import SessionRow, Store
from stockade.tls import DevCA

SESSIONS = int(os.environ.get("BENCH_CONSOLE_SESSIONS", "10000"))
ROUNDS = int(os.environ.get("BENCH_CONSOLE_ROUNDS", "30"))
LIVE = int(os.environ.get("BENCH_CONSOLE_LIVE", "100"))
CHROMIUM = "/usr/bin/chromium"
LIVE_ID = "s-live-" + "0" * 17

_FCP = """() => new Promise(resolve => {
  const seen = performance.getEntriesByName('first-contentful-paint');
  if (seen.length) { resolve(seen[0].startTime); return; }
  new PerformanceObserver(list => {
    const e = list.getEntriesByName('first-contentful-paint');
    if (e.length) resolve(e[0].startTime);
  }).observe({type: 'paint', buffered: true});
})"""

_OBSERVE = """() => {
  window.stamps = {};
  const el = document.getElementById('player');
  const scan = () => {
    for (const m of el.innerText.matchAll(/mk(\\d+)e/g)) {
      if (!(m[1] in window.stamps)) window.stamps[m[1]] = Date.now();
    }
  };
  new MutationObserver(scan).observe(el, {subtree: true, childList: true, characterData: true});
  scan();
}"""


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _fill(store: Store, recordings: Path) -> None:
    now = datetime.now(UTC)
    users = [f"user{i:03d}" for i in range(200)]
    rows = []
    for i in range(SESSIONS):
        started = now - timedelta(minutes=i)
        user = users[i % len(users)]
        rows.append(
            SessionRow(
                id=f"s-{uuid.uuid4().hex[:24]}", username=user, workspace=user,
                client_ip=f"198.51.100.{i % 250}", client_port=40000 + i % 20000,
                started_at=started, ended_at=started + timedelta(seconds=90),
                end_reason="closed", recording=str(recordings / f"x{i}.cast"), bytes_in=100,
                bytes_out=2000, gateway_id="bench", fingerprint="SHA256:" + "A" * 43,
            )
        )  # fmt: skip
    rows.append(
        SessionRow(
            id=LIVE_ID,
            username="ada",
            workspace="ada",
            client_ip="127.0.0.1",
            client_port=1,
            started_at=now - timedelta(days=30),
            ended_at=None,
            recording=str(recordings / f"{LIVE_ID}.cast"),
        )
    )
    async with store.transaction() as session:
        session.add_all(rows)


async def main() -> None:
    configure_logging("warning", json_output=True)
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        await _run(Path(tmp))


async def _run(root: Path) -> None:
    nats = EmbeddedNats(root, connect_timeout=10.0, auth=True)
    url = await nats.start()
    bus = await Bus.connect(url, name="bench-console", token=nats.token)
    store = Store(f"sqlite+aiosqlite:///{root / 'db.sqlite'}")
    await store.migrate()
    identity = IdentityService(
        store=store, settings=IdentitySettings(), keyring=KeyRing(root / "keys")
    )
    await identity.add_user("ada", roles=["admin"])
    recordings = root / "recordings"
    recordings.mkdir()
    await _fill(store, recordings)
    codes = await bus.key_value(LOGIN_BUCKET)
    authz = Authorizer(settings=AuthzSettings())
    console = create_console(
        identity=identity, authz=authz, store=store, sessions=Sessions(codes),
        recordings=recordings,
    )  # fmt: skip
    fixed: dict[str, str] = {}

    async def static_page(_request: Request) -> Response:
        return HTMLResponse(fixed["html"], headers={"Cache-Control": "no-store"})

    anchor = Starlette(routes=[Route("/sessions", static_page)])
    app = create_app(
        identity=identity, authz=authz, backends={}, publisher=None,
        mounts={PREFIX: console, "/anchor": anchor},
    )  # fmt: skip
    tls = DevCA(root / "tls").issue("broker", sans=["localhost", "127.0.0.1"], client=False)
    server = BrokerServer(app, tls=tls)
    await server.start()
    try:
        origin = server.url
        code = await issue_login_code(codes, "ada")
        async with httpx.AsyncClient(verify=str(server.ca_path), base_url=origin) as client:
            signed = await client.post(f"{PREFIX}/login", json={"code": code})
            assert signed.status_code == 200, signed.text
            cookie = signed.cookies[COOKIE]
            page_html = (await client.get(f"{PREFIX}/sessions")).text
        assert page_html.count(f'href="{PREFIX}/sessions/s-') == 50
        fixed["html"] = page_html
        await _browser(origin, cookie, recordings)
    finally:
        await server.stop()
        await authz.stop()
        await store.close()
        await bus.close()
        await nats.stop()


async def _browser(origin: str, cookie: str, recordings: Path) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = await browser.new_context(ignore_https_errors=True)
        await context.add_cookies(
            [
                {
                    "name": COOKIE,
                    "value": cookie,
                    "url": f"{origin}{PREFIX}/",
                    "secure": True,
                    "httpOnly": True,
                    "sameSite": "Strict",
                }
            ]
        )
        page = await context.new_page()
        targets = {"console": f"{origin}{PREFIX}/sessions", "static": f"{origin}/anchor/sessions"}
        times: dict[str, list[float]] = {"console": [], "static": []}
        for round_no in range(ROUNDS + 3):
            for name, target in targets.items():
                await page.goto(target)
                fcp = float(await page.evaluate(_FCP))
                if round_no >= 3:  # warm-up rounds are not counted
                    times[name].append(fcp)
        c50, s50 = statistics.median(times["console"]), statistics.median(times["static"])
        c90, s90 = _pct(times["console"], 0.9), _pct(times["static"], 0.9)
        record(
            f"sessions page FCP p50 ({SESSIONS} sessions, 50 rows)",
            value=f"{c50:.1f} ms",
            anchor=f"static page of the same rows {s50:.1f} ms",
            ratio=c50 / s50,
            goal="<= 1.5x",
            met=c50 / s50 <= 1.5,
        )
        record(
            "sessions page FCP p90",
            value=f"{c90:.1f} ms",
            anchor=f"static {s90:.1f} ms",
            ratio=c90 / s90,
        )
        delays = await _live(page, origin, recordings)
        p99 = _pct(delays, 0.99)
        record(
            f"live view delay p99 ({len(delays)} writes)",
            value=f"{p99:.1f} ms (p50 {statistics.median(delays):.1f} ms)",
            anchor="goal 250 ms",
            ratio=p99 / 250.0,
            goal="<= 250 ms",
            met=p99 <= 250.0,
        )
        await browser.close()


async def _live(page: Any, origin: str, recordings: Path) -> list[float]:
    cast = recordings / f"{LIVE_ID}.cast"
    started = time.time()
    with cast.open("w", encoding="utf-8") as out:
        out.write(json.dumps({"version": 2, "width": 100, "height": 30}) + "\n")
        out.write(json.dumps([0.0, "o", "live-bench ready\r\n"]) + "\n")
        out.flush()
        await page.goto(f"{origin}{PREFIX}/sessions/{LIVE_ID}")
        await page.wait_for_function(
            "() => (document.querySelector('#player .ap-term') || {}).innerText"
            "?.includes('live-bench ready')",
            timeout=30_000,
        )
        await page.evaluate(_OBSERVE)
        written: dict[str, float] = {}
        for i in range(LIVE):
            await asyncio.sleep(0.05 + (i % 7) * 0.01)
            written[str(i)] = time.time() * 1000
            out.write(json.dumps([time.time() - started, "o", f"mk{i}e\r\n"]) + "\n")
            out.flush()
        await asyncio.sleep(1.0)
    stamps: dict[str, float] = await page.evaluate("window.stamps")
    missing = [k for k in written if k not in stamps]
    assert not missing, f"markers never shown: {missing[:10]}"
    return [stamps[k] - written[k] for k in written]
