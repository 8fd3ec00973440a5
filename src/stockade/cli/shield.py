"""``stockade shield``: list, ban, unban and inspect SSH Shield bans.

Every command talks to NATS, where the ban store lives (KV bucket ``stockade_shield_bans``):

- ``STOCKADE_NATS_URL`` (or ``[bus] url``) set: that server;
- otherwise the embedded server of a running ``stockade up`` on the same data dir, found through
  its ports file in ``<data dir>/nats/run``;
- otherwise (nothing running) a temporary embedded ``nats-server`` is started on the data dir's
  JetStream storage for the duration of the command, so bans made now are in force as soon as
  ``stockade up`` starts (nftables is reconciled from the store at start).

A running shield and every gateway follow the store through a KV watch: a ban or unban made here
takes effect there within milliseconds.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from stockade.bus import Bus, EmbeddedNats
from stockade.core import NotFound, parse_duration
from stockade.core.durations import format_duration
from stockade.core.events import STREAM_AUTH
from stockade.core.settings import Settings
from stockade.shield import DURABLE, Ban, BanStore, manual_ban, manual_unban

from ._common import (
    JSON_OPTION,
    console,
    handle_errors,
    print_json,
    print_table,
    run_async,
    settings,
)

__all__ = ["app"]

app = typer.Typer(help="SSH Shield: brute-force bans.", no_args_is_help=True)


@contextlib.asynccontextmanager
async def _bus(cfg: Settings) -> AsyncIterator[tuple[Bus, str]]:
    timeout = cfg.bus.connect_timeout
    url = cfg.bus.url or await EmbeddedNats.running_url(cfg.data_dir)
    if url is not None:
        mode = "external" if cfg.bus.url else "stockade up"
        token = None if cfg.bus.url else EmbeddedNats.read_token(cfg.data_dir)
        bus = await Bus.connect(url, name="stockade-cli", connect_timeout=timeout, token=token)
        try:
            yield bus, mode
        finally:
            await bus.close()
        return
    embedded = EmbeddedNats(cfg.data_dir, connect_timeout=timeout, auth=True)
    async with embedded as local:
        bus = await Bus.connect(
            local, name="stockade-cli", connect_timeout=timeout, token=embedded.token
        )
        try:
            await bus.ensure_streams()
            yield bus, "temporary embedded server"
        finally:
            await bus.close()


async def _store(bus: Bus, cfg: Settings) -> BanStore:
    return await BanStore.open(bus, strike_memory=cfg.shield.strike_memory.total_seconds())


def _left(row: dict[str, Any]) -> str:
    if not row["active"]:
        return "ended"
    return format_duration(timedelta(seconds=row["remaining_seconds"]))


def _row(ban: Ban, now: float) -> dict[str, Any]:
    return {
        "source": ban.source,
        "strikes": ban.strikes,
        "until": datetime.fromtimestamp(ban.until, UTC).isoformat(timespec="seconds"),
        "remaining_seconds": int(ban.remaining(now)),
        "active": ban.active(now),
        "reason": ban.reason,
    }


@app.command("list")
@handle_errors
def list_bans(
    as_json: bool = JSON_OPTION,
    show_all: Annotated[
        bool, typer.Option("--all", help="Include ended bans whose strikes are remembered.")
    ] = False,
) -> None:
    """List bans in force: source, strikes, until, reason."""
    cfg = settings()

    async def run() -> list[Ban]:
        async with _bus(cfg) as (bus, _):
            store = await _store(bus, cfg)
            return await store.all()

    now = time.time()
    rows = [_row(b, now) for b in run_async(run()) if show_all or b.active(now)]
    if as_json:
        print_json(rows)
        return
    print_table(
        "SSH Shield bans",
        ["source", "strikes", "until", "left", "reason"],
        (
            [
                r["source"],
                r["strikes"],
                r["until"],
                _left(r),
                r["reason"],
            ]
            for r in rows
        ),
    )


@app.command("ban")
@handle_errors
def ban(
    source: Annotated[str, typer.Argument(help="IP address or CIDR.")],
    duration: Annotated[str, typer.Option("--for", help="Ban length, e.g. 10m, 1h, 7d.")] = "1h",
    reason: Annotated[str, typer.Option(help="Why (shown in the list).")] = "manual",
) -> None:
    """Ban SOURCE now (refused for allowlisted addresses)."""
    cfg = settings()
    seconds = parse_duration(duration, field="--for").total_seconds()

    async def run() -> Ban:
        async with _bus(cfg) as (bus, _):
            store = await _store(bus, cfg)
            return await manual_ban(
                store, cfg.shield, source, duration=seconds, reason=reason, bus=bus
            )

    result = run_async(run())
    console.print(
        f"banned {result.source} for {format_duration(timedelta(seconds=int(seconds)))} "
        f"(strike {result.strikes})",
        markup=False,
    )


@app.command("unban")
@handle_errors
def unban(source: Annotated[str, typer.Argument(help="IP address or CIDR, as listed.")]) -> None:
    """Lift SOURCE's ban and forget its strikes."""
    cfg = settings()

    async def run() -> bool:
        async with _bus(cfg) as (bus, _):
            store = await _store(bus, cfg)
            return await manual_unban(store, source, bus=bus)

    if not run_async(run()):
        raise NotFound("ban", source)
    console.print(f"unbanned {source}", markup=False)


@app.command("status")
@handle_errors
def status(as_json: bool = JSON_OPTION) -> None:
    """Bans in force, remembered strikes, and the shield consumer's progress."""
    cfg = settings()

    async def run() -> dict[str, Any]:
        async with _bus(cfg) as (bus, mode):
            store = await _store(bus, cfg)
            records = await store.all()
            consumer = bus.consumer(stream=STREAM_AUTH, durable=DURABLE)
            try:
                state = await consumer.state()
                progress: dict[str, Any] = {
                    "acknowledged_through": state.ack_floor,
                    "pending": state.num_pending,
                    "in_flight": state.num_ack_pending,
                }
            except Exception:
                progress = {"acknowledged_through": None, "pending": None, "in_flight": None}
        now = time.time()
        return {
            "enabled": cfg.shield.enabled,
            "nats": mode,
            "active_bans": sum(1 for b in records if b.active(now)),
            "remembered_sources": len(records),
            "enforcers": list(cfg.shield.enforcers),
            "consumer": progress,
        }

    data = run_async(run())
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        console.print(f"{key}: {value}", markup=False)
