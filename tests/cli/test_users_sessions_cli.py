"""`stockade users roles|keys list|totp` and `stockade sessions` ids, prefixes and recordings.

Every case runs the real `stockade` app in-process (typer's runner) on a data dir in tmp_path,
against the real store (SQLite) and the shipped policy bundle; none needs a server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from stockade.cli import _common, app
from stockade.cli._runtime import keyring_for
from stockade.core import load_settings
from stockade.identity import IdentityService, totp_code
from stockade.store import Store

runner = CliRunner()


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith(("STOCKADE_", "VAULT_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STOCKADE_DATA_DIR", str(tmp_path / "data"))
    _common.settings.cache_clear()
    yield
    _common.settings.cache_clear()


def invoke(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Result:
    result = runner.invoke(app, list(args), input=stdin, env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"traceback instead of an error line: {result.exception!r}")
    return result


def ok(*args: str, stdin: str | None = None) -> Result:
    result = invoke(*args, stdin=stdin)
    assert result.exit_code == 0, (args, result.output)
    return result


def one_error_line(result: Result, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


def roles_of(name: str) -> list[str]:
    roles: list[str] = json.loads(ok("users", "show", name, "--json").stdout)["roles"]
    return roles


def keygen(path: Path, comment: str) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )
    return path.with_name(path.name + ".pub")


# --- roles ---


def test_add_refuses_a_role_the_bundle_does_not_declare() -> None:
    line = one_error_line(invoke("users", "add", "alice", "--role", "contracter"))
    assert "--role" in line
    assert "'contracter'" in line
    assert "contractor" in line  # the declared roles are named, so the typo is obvious
    assert one_error_line(invoke("users", "show", "alice"))  # nothing was added


def test_roles_add_remove_set() -> None:
    ok("users", "add", "alice", "--role", "developer")
    ok("users", "roles", "add", "alice", "contractor", "sudoer", "contractor")
    assert roles_of("alice") == ["developer", "contractor", "sudoer"]
    ok("users", "roles", "remove", "alice", "developer")
    assert roles_of("alice") == ["contractor", "sudoer"]
    ok("users", "roles", "set", "alice", "tunneler")
    assert roles_of("alice") == ["tunneler"]
    ok("users", "roles", "add", "alice", "tunneler")  # already there: nothing changes
    assert roles_of("alice") == ["tunneler"]


def test_roles_typo_is_one_line_and_changes_nothing() -> None:
    ok("users", "add", "alice", "--role", "developer")
    for verb in ("add", "set"):
        line = one_error_line(invoke("users", "roles", verb, "alice", "sudoer", "contracter"))
        assert "'contracter'" in line
        assert "ROLE" in line
    assert roles_of("alice") == ["developer"]
    line = one_error_line(invoke("users", "roles", "remove", "alice", "sudoer"))
    assert "sudoer" in line
    one_error_line(invoke("users", "roles", "add", "nobody", "developer"))


def test_roles_follow_a_custom_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "p.rego").write_text(
        "package stockade\n\nimport rego.v1\n\n"
        'roles := {"ops", "dev"}\n\n'
        'decision := {"allow": false, "obligations": {}, "reasons": ["no"]}\n'
    )
    os.environ["STOCKADE_AUTHZ__POLICY_DIR"] = str(bundle)  # monkeypatch restores STOCKADE_*
    try:
        ok("users", "add", "bob", "--role", "ops")
        line = one_error_line(invoke("users", "roles", "add", "bob", "developer"))
        assert "dev, ops" in line
    finally:
        del os.environ["STOCKADE_AUTHZ__POLICY_DIR"]


# --- keys list and fingerprint prefixes ---


def test_keys_list_shows_full_fingerprints_comments_and_time(tmp_path: Path) -> None:
    pub = keygen(tmp_path / "k1", "alice@laptop")
    ok("users", "add", "alice", "--ssh-key", str(pub))
    fingerprint = json.loads(ok("users", "show", "alice", "--json").stdout)["keys"][0][
        "fingerprint"
    ]
    assert re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", fingerprint)
    table = invoke("users", "keys", "list", "alice", env={"COLUMNS": "60"})
    assert table.exit_code == 0, table.output
    assert fingerprint in table.stdout  # whole, on one line, though wider than 60 columns
    assert "alice@laptop" in table.stdout
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", table.stdout)
    rows = json.loads(ok("users", "keys", "list", "alice", "--json").stdout)
    assert [(r["fingerprint"], r["comment"], r["key_type"]) for r in rows] == [
        (fingerprint, "alice@laptop", "ssh-ed25519")
    ]
    assert rows[0]["created_at"]
    one_error_line(invoke("users", "keys", "list", "nobody"))


def test_keys_remove_takes_a_unique_fingerprint_prefix(tmp_path: Path) -> None:
    ok("users", "add", "alice")
    for index in range(2):
        ok("users", "keys", "add", "alice", str(keygen(tmp_path / f"k{index}", f"k{index}")))
    keys = json.loads(ok("users", "keys", "list", "alice", "--json").stdout)
    first, second = (k["fingerprint"] for k in keys)
    for too_short in ("SHA256:", "SHA256:ab", first[7:9]):
        line = one_error_line(invoke("users", "keys", "remove", "alice", too_short))
        assert "at least 4 characters" in line  # a bare SHA256: never removes the only key
    common = next(i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b)
    short = first[len("SHA256:") : common + 4]  # without SHA256:, unique
    removed = ok("users", "keys", "remove", "alice", short)
    assert first in removed.stdout
    left = json.loads(ok("users", "keys", "list", "alice", "--json").stdout)
    assert [k["fingerprint"] for k in left] == [second]
    one_error_line(invoke("users", "keys", "remove", "alice", "SHA256:zzzz-not-a-key"))


# --- TOTP ---


def test_totp_enroll_prints_a_working_secret_sealed_at_rest(tmp_path: Path) -> None:
    ok("users", "add", "alice")
    result = ok("users", "totp", "enroll", "alice")
    uri = re.search(r"otpauth://totp/\S+", result.stdout)
    assert uri is not None
    secret_line = re.search(r"secret: ((?:[A-Z2-7]{1,4} ?)+)", result.stdout)
    assert secret_line is not None
    secret = secret_line.group(1).replace(" ", "")
    assert f"secret={secret}" in uri.group(0)
    assert "alice" in uri.group(0)
    assert json.loads(ok("users", "show", "alice", "--json").stdout)["totp_enabled"] is True

    raw = base64.b32decode(secret + "=" * (-len(secret) % 8))
    with sqlite3.connect(tmp_path / "data" / "stockade.db") as db:
        (stored,) = db.execute("SELECT totp_secret FROM users WHERE name = 'alice'").fetchone()
    stored_bytes = stored.encode() if isinstance(stored, str) else bytes(stored)
    assert secret.encode() not in stored_bytes
    assert raw not in stored_bytes
    assert base64.b64encode(raw)[:16] not in stored_bytes

    cfg = load_settings()

    async def verify(code: str) -> bool:
        store = Store(cfg.database_url)
        identity = IdentityService(store=store, settings=cfg.identity, keyring=keyring_for(cfg))
        try:
            return await identity.verify_totp("alice", code)
        finally:
            await store.close()

    import time

    assert asyncio.run(verify(totp_code(raw, int(time.time()) // 30))) is True

    line = one_error_line(invoke("users", "totp", "enroll", "alice"))
    assert "--replace" in line
    again = ok("users", "totp", "enroll", "alice", "--replace")
    assert secret not in again.stdout  # a new secret
    ok("users", "totp", "disable", "alice")
    assert json.loads(ok("users", "show", "alice", "--json").stdout)["totp_enabled"] is False
    one_error_line(invoke("users", "totp", "disable", "alice"))


def test_totp_secret_is_not_logged(tmp_path: Path) -> None:
    ok("users", "add", "alice")
    result = invoke("users", "totp", "enroll", "alice", env={"STOCKADE_LOG__LEVEL": "debug"})
    assert result.exit_code == 0, result.output
    secret = re.search(r"secret=([A-Z2-7]+)", result.stdout)
    assert secret is not None
    assert secret.group(1) not in result.stderr


# --- sessions: full ids, prefixes, recordings ---


def _sessions(tmp_path: Path, ids: dict[str, str | None]) -> None:
    """Sessions of alice, ended, each with its recording path (None: not recorded)."""
    cfg = load_settings()

    async def run() -> None:
        store = Store(cfg.database_url)
        identity = IdentityService(store=store, settings=cfg.identity, keyring=keyring_for(cfg))
        try:
            for sid, recording in ids.items():
                await identity.start_session(
                    sid, username="alice", workspace="alice", client_ip="127.0.0.1", client_port=1
                )
                await identity.end_session(sid, exit_status=0, recording=recording or "")
        finally:
            await store.close()

    asyncio.run(run())


def _cast(path: Path, events: list[tuple[float, str]]) -> Path:
    header = {"version": 2, "width": 80, "height": 24, "timestamp": 0}
    lines = [json.dumps(header)] + [json.dumps([at, "o", text]) for at, text in events]
    path.write_text("\n".join(lines) + "\n")
    return path


LONG_A = "s-20261201T101010-" + "a" * 40 + "1-tail"
LONG_B = "s-20261201T101010-" + "a" * 40 + "2-tail"
LONG_C = "s-20261201T111111-" + "c" * 40


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    ok("users", "add", "alice")
    cast = _cast(tmp_path / "a.cast", [(0.5, "hello "), (100.0, "after a long pause\r\n")])
    _sessions(tmp_path, {LONG_A: str(cast), LONG_B: None, LONG_C: None})
    return cast


def test_sessions_list_prints_full_ids(recorded: Path) -> None:
    table = invoke("sessions", "list", env={"COLUMNS": "80"})
    assert table.exit_code == 0, table.output
    for sid in (LONG_A, LONG_B, LONG_C):
        assert sid in table.stdout
    assert "…" not in table.stdout
    ids = ok("sessions", "list", "--ids").stdout.split()
    assert sorted(ids) == sorted([LONG_A, LONG_B, LONG_C])


def test_sessions_ambiguous_prefix_lists_the_candidates(recorded: Path) -> None:
    for verb in ("play", "kill"):
        line = one_error_line(invoke("sessions", verb, "s-20261201T1010"))
        assert LONG_A in line
        assert LONG_B in line
        assert LONG_C not in line
    line = one_error_line(invoke("sessions", "kill", "s-2"))
    assert "at least 6 characters" in line
    one_error_line(invoke("sessions", "play", "s-nothing-like-it"))
    one_error_line(invoke("sessions", "play", "bad id!"))


def test_sessions_export_to_stdout_by_prefix(recorded: Path, tmp_path: Path) -> None:
    result = ok("sessions", "export", LONG_A[:-4], "-o", "-")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["version"] == 2
    assert lines[1:] == [[0.5, "o", "hello "], [100.0, "o", "after a long pause\r\n"]]
    assert not (tmp_path / "-").exists()
    out = tmp_path / "copy.cast"
    written = ok("sessions", "export", LONG_A, "-o", str(out))
    assert written.stdout.strip() == str(out)
    assert out.read_text() == result.stdout


def test_sessions_play_not_recorded(recorded: Path) -> None:
    line = one_error_line(invoke("sessions", "play", LONG_C[:20]), code=1)
    assert LONG_C in line
    assert "not recorded (policy did not require it)" in line
    line = one_error_line(invoke("sessions", "export", LONG_B, "-o", "-"), code=1)
    assert "not recorded" in line
    assert "not recorded" in invoke("sessions", "play", "--help").stdout


def test_sessions_play_limits_idle_time(recorded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stockade.gateway import _recorder

    slept: list[float] = []
    original = _recorder.play_cast

    def play_recording_sleeps(*args: object, **kwargs: object) -> int:
        return original(*args, **{**kwargs, "sleep": slept.append})  # type: ignore[arg-type]

    monkeypatch.setattr("stockade.gateway.play_cast", play_recording_sleeps)
    result = ok("sessions", "play", LONG_A, "-i", "0.25")
    assert "hello after a long pause" in result.stdout
    assert slept == [0.25, 0.25]  # 0.5 s and 99.5 s pauses, both cut to the limit
    slept.clear()
    ok("sessions", "play", LONG_A)
    assert slept == [0.5, 2.0]  # the default limit: 2 s
    slept.clear()
    ok("sessions", "play", LONG_A, "--idle-time-limit", "1000", "--speed", "2")
    assert slept == [0.25, 99.5 / 2]
    for bad in ("0", "-1", "nan", "inf"):
        line = one_error_line(invoke("sessions", "play", LONG_A, "-i", bad))
        assert "--idle-time-limit" in line


# --- start-up: a command loads only its own group ---

_PROBE = """
import sys
sys.argv = ["stockade", *sys.argv[1:]]
from stockade.cli import main
try:
    main()
except SystemExit as exit:
    code = exit.code
heavy = sorted(m for m in sys.modules if m.split(".")[:2] in (
    ["stockade", "supplychain"], ["stockade", "images"], ["stockade", "worktrace"],
    ["stockade", "gateway"], ["stockade", "console"]) or m == "jsonschema")
print("LOADED", ",".join(heavy))
"""


@pytest.mark.parametrize("argv", [["users", "list"], ["sessions", "list"], ["--version"]])
def test_a_command_loads_only_what_it_needs(argv: list[str], tmp_path: Path) -> None:
    import sys

    env = {**os.environ, "STOCKADE_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    loaded = [line for line in done.stdout.splitlines() if line.startswith("LOADED")]
    assert loaded == ["LOADED "], (done.stdout, done.stderr)


def test_full_app_still_lists_every_group() -> None:
    from stockade.cli import COMMANDS

    help_text = invoke("--help", env={"COLUMNS": "200"}).stdout
    for name in COMMANDS:
        assert name in help_text


def test_users_show_prints_names_literally() -> None:
    ok("users", "add", "alice", "--display-name", "[red]Al[/red] [link=x]ice")
    shown = ok("users", "show", "alice").stdout
    assert "[red]Al[/red] [link=x]ice" in shown
