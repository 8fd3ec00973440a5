"""Worktrace as a service of the composition root: ``stockade serve worktrace`` (and the same
code in ``stockade up``) follows the export, its alerts reach the bus (the audit stream), its
``kill_session`` obligations (the default policy, real regorus) go out as ``SessionKill``, and
the follower's state file carries it across a restart. Real nats-server, real files."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from stockade.bus import Bus
from stockade.cli._instance import probe_listener
from stockade.cli._runtime import SERVICES, Runtime
from stockade.cli._worktrace import start_worktrace, state_path
from stockade.core import ConfigError
from stockade.core.events import SUBJECT_SESSION_KILL, SUBJECT_WORKTRACE_ALERT
from stockade.core.settings import Settings, WorktraceSettings
from stockade.tls import DevCA

from .conftest import WORKSPACE_LABELS, exec_event, line


def _settings(tmp_path: Path, nats_url: str, **worktrace: Any) -> Settings:
    DevCA(tmp_path / "tls").ensure()
    return Settings(
        data_dir=tmp_path / "wt",
        bus={"url": nats_url},
        api={"port": 0},
        tls={"directory": tmp_path / "tls"},
        authz={"decision_log": False},
        worktrace={"anomalies": False, **worktrace},
    )


@contextlib.asynccontextmanager
async def _listening(nats_url: str, *subjects: str) -> AsyncIterator[list[tuple[str, bytes]]]:
    bus = await Bus.connect(nats_url, name="test-listener")
    seen: list[tuple[str, bytes]] = []

    async def on(subject: str, data: bytes) -> None:
        seen.append((subject, data))

    try:
        for subject in subjects:
            await bus.subscribe(subject, on)
        await bus.flush()
        yield seen
    finally:
        await bus.close()


async def _until(condition: Any, what: str) -> None:
    for _ in range(500):  # bounded: through a real server and a 5 ms follower poll
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what} did not happen")


def _escape(session: str) -> bytes:
    labels = WORKSPACE_LABELS | {"stockade.dev/session": session}
    return line(exec_event("/usr/bin/nsenter", "-t 1 -m -u -n -i -p bash", labels=labels)) + b"\n"


def test_worktrace_is_a_service_of_up_and_serve() -> None:
    assert "worktrace" in SERVICES


async def test_serve_worktrace_alerts_kills_and_resumes_after_a_restart(
    tmp_path: Path, nats_url: str
) -> None:
    export = tmp_path / "tetragon.log"
    export.write_bytes(_escape("before-worktrace"))  # history: not read at the first start
    settings = _settings(tmp_path, nats_url, export_file=export)
    first, second = f"s-{secrets.token_hex(4)}", f"s-{secrets.token_hex(4)}"
    async with _listening(nats_url, SUBJECT_SESSION_KILL, SUBJECT_WORKTRACE_ALERT) as seen:

        def kills() -> list[bytes]:
            return [d for s, d in seen if s == SUBJECT_SESSION_KILL]

        runtime = Runtime(settings, services=frozenset({"authz", "worktrace"}))
        await runtime.start()
        try:
            assert runtime.worktrace is not None
            shown = [(x.what, x.where) for x in runtime.listeners if x.what.startswith("Worktrace")]
            assert len(shown) == 1
            assert shown[0][1] == f"file {export}"
            assert "responses via authz" in shown[0][0]
            assert probe_listener(shown[0][1]).state == "-"  # status: shown, never "down"
            with export.open("ab") as handle:
                handle.write(_escape(first))
            await _until(lambda: any(first.encode() in d for d in kills()), "the kill")
        finally:
            await runtime.stop()
        assert not any(b"before-worktrace" in d for _, d in seen)
        assert any(s == SUBJECT_WORKTRACE_ALERT and first.encode() in d for s, d in seen)

        state = state_path(settings.worktrace, settings.data_dir)
        assert state == settings.data_dir / "worktrace" / "follower.json"
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        assert stat.S_IMODE(state.parent.stat().st_mode) == 0o700
        assert list(state.parent.iterdir()) == [state]  # no temporary file left behind

        with export.open("ab") as handle:  # written while Worktrace is down
            handle.write(_escape(second))
        runtime = Runtime(settings, services=frozenset({"authz", "worktrace"}))
        await runtime.start()
        try:
            await _until(lambda: any(second.encode() in d for d in kills()), "the resumed kill")
        finally:
            await runtime.stop()
        assert sum(first.encode() in d for d in kills()) == 1  # read once across the restart


async def test_state_file_setting_is_used(tmp_path: Path, nats_url: str) -> None:
    export = tmp_path / "tetragon.log"
    export.touch()
    chosen = tmp_path / "elsewhere" / "pos.json"
    chosen.parent.mkdir()
    settings = _settings(tmp_path, nats_url, export_file=export, state_file=chosen, respond=False)
    session = f"s-{secrets.token_hex(4)}"
    async with _listening(nats_url, SUBJECT_WORKTRACE_ALERT) as seen:
        runtime = Runtime(settings, services=frozenset({"worktrace"}))
        await runtime.start()
        try:
            assert "alerts only" in runtime.listeners[-1].what
            with export.open("ab") as handle:
                handle.write(_escape(session))
            await _until(lambda: any(session.encode() in d for _, d in seen), "the alert")
            await _until(chosen.exists, "the commit")
        finally:
            await runtime.stop()
    assert stat.S_IMODE(chosen.stat().st_mode) == 0o600
    assert not (settings.data_dir / "worktrace" / "follower.json").exists()


async def test_no_source_no_worktrace(tmp_path: Path, nats_url: str) -> None:
    """``stockade up`` without a source runs no Worktrace; ``stockade serve worktrace`` would
    serve nothing and refuses, naming the setting."""
    assert (
        await start_worktrace(WorktraceSettings(), bus=None, authz=None, data_dir=tmp_path) is None
    )  # type: ignore[arg-type]
    disabled = WorktraceSettings(enabled=False, export_file=tmp_path / "t.log")
    assert await start_worktrace(disabled, bus=None, authz=None, data_dir=tmp_path) is None  # type: ignore[arg-type]
    runtime = Runtime(_settings(tmp_path, nats_url), services=frozenset({"worktrace"}))
    with pytest.raises(ConfigError, match=r"worktrace\.export_file"):
        await runtime.start()


def test_two_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="export_file or nats_subject, not both"):
        WorktraceSettings(export_file=tmp_path / "t.log", nats_subject="tetragon.events")


async def test_serve_worktrace_needs_authz_when_it_responds(tmp_path: Path, nats_url: str) -> None:
    settings = _settings(tmp_path, nats_url, export_file=tmp_path / "t.log")
    with pytest.raises(ConfigError, match=r"peers\.authz"):
        await Runtime(settings, services=frozenset({"worktrace"})).start()


async def test_nats_source(tmp_path: Path, nats_url: str) -> None:
    subject = f"test.tetragon.{secrets.token_hex(4)}"
    settings = _settings(tmp_path, nats_url, nats_subject=subject, respond=False)
    session = f"s-{secrets.token_hex(4)}"
    async with _listening(nats_url, SUBJECT_WORKTRACE_ALERT) as seen:
        runtime = Runtime(settings, services=frozenset({"worktrace"}))
        await runtime.start()
        try:
            assert runtime.listeners[-1].where == f"nats {subject}"
            bus = await Bus.connect(nats_url, name="tetragon-shipper")
            try:
                await bus.nc.publish(subject, _escape(session).rstrip(b"\n"))
                await bus.flush()
            finally:
                await bus.close()
            await _until(lambda: any(session.encode() in d for _, d in seen), "the alert")
        finally:
            await runtime.stop()


async def test_a_state_file_in_a_missing_directory_is_refused(
    tmp_path: Path, nats_url: str
) -> None:
    settings = _settings(
        tmp_path,
        nats_url,
        export_file=tmp_path / "t.log",
        state_file=tmp_path / "no-such-dir" / "pos.json",
        respond=False,
    )
    with pytest.raises(ConfigError, match=r"worktrace\.state_file: directory .*no-such-dir"):
        await Runtime(settings, services=frozenset({"worktrace"})).start()


def test_a_link_planted_at_the_temporary_state_file_is_not_written_through(tmp_path: Path) -> None:
    """ATTACK: where the state's directory is shared, a symlink (or a hard link) at
    ``<state>.tmp`` must not make the commit truncate or write another file."""
    from stockade.worktrace import FileFollower

    export = tmp_path / "tetragon.log"
    export.write_bytes(b'{"a": 1}\n')
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    state = tmp_path / "state.json"
    (tmp_path / "state.json.tmp").symlink_to(victim)
    follower = FileFollower(export, state=state)
    assert follower.poll() == [b'{"a": 1}']
    follower.commit()
    assert victim.read_bytes() == b"precious"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert not state.is_symlink()
    (tmp_path / "state.json.tmp").hardlink_to(victim)
    with export.open("ab") as handle:
        handle.write(b'{"b": 2}\n')
    assert follower.poll() == [b'{"b": 2}']
    follower.commit()
    assert victim.read_bytes() == b"precious"


async def test_a_restart_before_the_first_commit_does_not_skip_what_was_written(
    tmp_path: Path, nats_url: str
) -> None:
    """BROKE: the first start begins at the export's end and commits only after a batch. A run
    that failed before its first batch (an idle export, then a surprise) was started again with
    no state file, so at the export's end once more: what was written during the backoff
    (up to 30 s) was never read -- a way to blind Worktrace for the time of a restart. The first
    start now records where it began, and every restart goes on from there."""
    export = tmp_path / "tetragon.log"
    export.write_bytes(_escape("before-worktrace"))  # history: not read at the first start
    settings = _settings(tmp_path, nats_url, export_file=export, respond=False).worktrace
    bus = await Bus.connect(nats_url, name="test-worktrace-restart")
    session = f"s-{secrets.token_hex(4)}"
    try:
        async with _listening(nats_url, SUBJECT_WORKTRACE_ALERT) as seen:
            runner = await start_worktrace(settings, bus=bus, authz=None, data_dir=tmp_path / "d")
            assert runner is not None
            try:
                await asyncio.sleep(0.2)
                runner._source.close()  # the run ends before any batch: the supervisor restarts
                await _until(lambda: runner.restarts == 1, "the restart")
                with export.open("ab") as handle:  # written during the backoff
                    handle.write(_escape(session))
                for _ in range(300):  # bounded: the 1 s backoff, then a 5 ms poll
                    if any(session.encode() in d for _, d in seen):
                        break
                    await asyncio.sleep(0.02)
                assert any(session.encode() in d for _, d in seen), "the restart skipped it"
            finally:
                await runner.stop()
            assert not any(b"before-worktrace" in d for _, d in seen)
    finally:
        await bus.close()
