"""The CLI habits a newcomer expects in the first hour, and one-line errors instead of tracebacks.

Every case runs the real `stockade` app in-process (typer's runner) against a data dir in
tmp_path; none needs a server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from stockade import __version__
from stockade.cli import _common, app

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


def invoke(
    *args: str, stdin: str | bytes | None = None, env: dict[str, str] | None = None
) -> Result:
    result = runner.invoke(app, list(args), input=stdin, env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"traceback instead of an error line: {result.exception!r}")
    return result


def one_error_line(result: Result, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


# --- tracebacks -> one line, exit 2 ---


def test_token_ttl_overflow() -> None:
    line = one_error_line(invoke("token", "issue", "alice", "--ttl", "999999999999999999999h"))
    assert "--ttl" in line


def test_shield_ban_duration_overflow() -> None:
    line = one_error_line(invoke("shield", "ban", "203.0.113.9", "--for", "99999999999d"))
    assert "--for" in line


def test_policy_eval_input_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "input.json"
    path.write_bytes(b'{"action": "\xff\xfe"}')
    line = one_error_line(invoke("policy", "eval", "--input", str(path)))
    assert str(path) in line
    assert "UTF-8" in line


def test_policy_eval_stdin_not_utf8() -> None:
    line = one_error_line(invoke("policy", "eval", "--input", "-", stdin=b"\xff\xfe{}"))
    assert "stdin" in line


def test_key_file_not_utf8(tmp_path: Path) -> None:
    key = tmp_path / "id.pub"
    key.write_bytes(b"ssh-ed25519 \xff\xfe comment\n")
    line = one_error_line(invoke("users", "add", "alice", "--ssh-key", str(key)))
    assert str(key) in line


def test_policy_eval_deeply_nested_input() -> None:
    nested = '{"a":' * 100_000 + "1" + "}" * 100_000
    line = one_error_line(invoke("policy", "eval", "--input", "-", stdin=nested))
    assert "nested" in line


def test_policy_eval_deep_context_extra_refused() -> None:
    doc = {
        "action": "ssh.connect",
        "resource": {"kind": "workspace", "name": "w", "owner": "a"},
        "context": {"user": {"name": "a"}, "x": json.loads("[" * 200 + "]" * 200)},
    }
    line = one_error_line(invoke("policy", "eval", "--input", "-", stdin=json.dumps(doc)))
    assert "context.extra" in line


def test_applocker_output_in_missing_directory() -> None:
    line = one_error_line(invoke("applocker", "rules", "-o", "/nonexistent/dir/r.xml"))
    assert "/nonexistent/dir" in line


def test_env_ban_schedule_names_the_variable() -> None:
    result = invoke("config", "show", env={"STOCKADE_SHIELD__BAN_SCHEDULE": '["99999999999d"]'})
    line = one_error_line(result)
    assert "STOCKADE_SHIELD__BAN_SCHEDULE" in line
    assert "configuration file" not in line


def test_misspelled_section_variable_is_one_line() -> None:
    line = one_error_line(invoke("config", "show", env={"STOCKADE_SHEILD__THRESHOLD": "3"}))
    assert "STOCKADE_SHIELD__THRESHOLD" in line


def test_toml_syntax_error_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "stockade.toml").write_text("[gateway\nport = 1\n")
    line = one_error_line(invoke("config", "show"))
    assert "stockade.toml" in line
    assert "line 1" in line


def test_handle_errors_maps_os_and_unicode_errors(tmp_path: Path) -> None:
    @_common.handle_errors
    def reads(path: Path) -> None:
        path.read_text(encoding="utf-8")

    with pytest.raises(typer.Exit) as missing:
        reads(tmp_path / "absent")
    assert missing.value.exit_code == 2
    bad = tmp_path / "bad"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(typer.Exit):
        reads(bad)


# --- habits ---


def test_version_flag_and_command() -> None:
    assert invoke("--version").stdout.strip() == f"stockade {__version__}"
    assert invoke("version").stdout.strip() == f"stockade {__version__}"


def test_shell_completion_is_offered() -> None:
    result = invoke("--show-completion", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert "--show-completion" in invoke("--help").stdout
    assert result.exit_code in (0, 1)  # no shell detected here; the option exists


def _commands(group: Any, prefix: list[str]) -> Iterator[list[str]]:
    yield prefix
    ctx = group.context_class(group)  # typer's own (vendored) click
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if hasattr(command, "list_commands"):
            yield from _commands(command, [*prefix, name])
        elif command is not None:
            yield [*prefix, name]


def test_every_help_text_is_plain() -> None:
    root = typer.main.get_command(app)
    seen = 0
    for path in _commands(root, []):
        result = invoke(*path, "--help", env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        assert "``" not in result.stdout, path
        assert "<bool>" not in result.stdout, path
        seen += 1
    assert seen > 30


def test_token_verify_rejection_is_one_line_and_json() -> None:
    result = invoke("token", "verify", "not.a.jwt")
    line = one_error_line(result, 1)
    assert "rejected" in line
    result = invoke("token", "verify", "not.a.jwt", "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["valid"] is False
    assert doc["reason"]


def test_token_verify_json_and_plain() -> None:
    assert invoke("users", "add", "bob").exit_code == 0
    token = invoke("token", "issue", "bob", "--ttl", "5m").stdout.strip()
    plain = invoke("token", "verify", token)
    assert plain.exit_code == 0, plain.output
    assert "sub: bob" in plain.stdout
    doc = json.loads(invoke("token", "verify", token, "--json").stdout)
    assert doc["valid"] is True
    assert doc["sub"] == "bob"


def _input(roles: list[str]) -> str:
    return json.dumps(
        {
            "action": "ssh.shell",
            "resource": {"kind": "workspace", "name": "ws", "owner": "alice", "labels": {}},
            "context": {"user": {"name": "alice", "roles": roles, "groups": []}},
        }
    )


def test_policy_eval_query() -> None:
    default = json.loads(invoke("policy", "eval", "-i", "-", stdin=_input(["sudoer"])).stdout)
    assert default["allow"] is True
    args = ("policy", "eval", "-i", "-", "--query", "data.stockade.obligations")
    obligations = json.loads(invoke(*args, stdin=_input(["sudoer"])).stdout)
    assert obligations["sudo"] is True
    assert "allow" not in obligations
    roles = json.loads(
        invoke("policy", "eval", "-i", "-", "-q", "data.stockade.roles", stdin=_input([])).stdout
    )
    assert sorted(roles) == ["admin", "auditor", "contractor", "developer", "sudoer", "tunneler"]
    undefined = invoke("policy", "eval", "-i", "-", "-q", "data.nothing.here", stdin=_input([]))
    assert json.loads(undefined.stdout) is None
    line = one_error_line(invoke("policy", "eval", "-i", "-", "-q", "1 + 1", stdin=_input([])))
    assert "--query" in line


def test_policy_test_coverage_reports_unhit_lines(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "p.rego").write_text(
        "package stockade\n\nimport rego.v1\n\n"
        'decision := {"allow": allow, "obligations": {}, "reasons": []}\n\n'
        "default allow := false\n\n"
        'allow if input.user == "alice"\n\n'
        'allow if {\n\tinput.user == "bob"\n\tinput.admin\n}\n'
    )
    (bundle / "p_test.rego").write_text(
        "package stockade_test\n\nimport rego.v1\n\nimport data.stockade\n\n"
        'test_alice if stockade.allow with input as {"user": "alice"}\n'
    )
    result = invoke("policy", "test", str(bundle), "--coverage")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    files = report["files"]
    assert list(files) == [str(bundle / "p.rego")]
    entry = files[str(bundle / "p.rego")]
    covered = {
        r for span in entry["covered"] for r in range(span["start"]["row"], span["end"]["row"] + 1)
    }
    missed = {
        r
        for span in entry["not_covered"]
        for r in range(span["start"]["row"], span["end"]["row"] + 1)
    }
    assert 9 in covered  # allow if input.user == "alice"
    assert 13 in missed  # input.admin: never reached (bob is never tried)
    assert 0 < report["coverage"] < 100
    assert "PASS: 1/1" in result.stderr


def test_policy_test_coverage_of_shipped_bundle() -> None:
    result = invoke("policy", "test", "--coverage")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert any(path.endswith("stockade.rego") for path in report["files"])
    assert not any(path.endswith("_test.rego") for path in report["files"])


# --- config show / reference, status ---


def test_config_show_sources_and_secrets(tmp_path: Path) -> None:
    (tmp_path / "stockade.toml").write_text("[shield]\nthreshold = 4\n")
    env = {"STOCKADE_GATEWAY__PORT": "2500", "VAULT_TOKEN": "hvs.top-secret"}
    result = invoke("config", "show", "--json", env=env)
    assert result.exit_code == 0, result.output
    rows = {row["key"]: row for row in json.loads(result.stdout)}
    assert rows["gateway.port"]["source"] == "env"
    assert rows["shield.threshold"]["source"] == "file"
    assert rows["api.port"]["source"] == "default"
    assert rows["vault.token"]["value"] == "[secure]"
    assert "top-secret" not in result.stdout
    table = invoke("config", "show", env={**env, "COLUMNS": "60"})
    assert "[secure]" in table.stdout
    assert "top-secret" not in table.stdout
    assert "env STOCKADE_GATEWAY__PORT" in table.stdout  # piped: never truncated


def test_config_reference_prints_and_writes(tmp_path: Path) -> None:
    printed = invoke("config", "reference").stdout
    assert printed.startswith("# Configuration reference")
    out = tmp_path / "configuration.md"
    assert invoke("config", "reference", "-o", str(out)).exit_code == 0
    assert out.read_text() == printed


def test_status_when_nothing_runs(tmp_path: Path) -> None:
    result = invoke("status", "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["running"] is False
    assert doc["data_dir"] == str((tmp_path / "data").resolve())
    assert "not running" in invoke("status").stdout


def test_token_issue_accepts_a_unique_session_prefix(tmp_path: Path) -> None:
    import asyncio

    from stockade.cli._runtime import keyring_for
    from stockade.core import load_settings
    from stockade.identity import IdentityService
    from stockade.store import Store

    assert invoke("users", "add", "alice").exit_code == 0
    cfg = load_settings()

    async def sessions() -> None:
        store = Store(cfg.database_url)
        identity = IdentityService(store=store, settings=cfg.identity, keyring=keyring_for(cfg))
        try:
            for sid in ("s-7f3a9c01aa", "s-7f3a9c02bb"):
                await identity.start_session(
                    sid, username="alice", workspace="ws", client_ip="127.0.0.1", client_port=1
                )
        finally:
            await store.close()

    asyncio.run(sessions())
    issued = invoke("token", "issue", "alice", "--session", "s-7f3a9c02", "--direct")
    assert issued.exit_code == 0, issued.output
    claims = json.loads(invoke("token", "verify", issued.stdout.strip(), "--json").stdout)
    assert claims["sid"] == "s-7f3a9c02bb"
    line = one_error_line(invoke("token", "issue", "alice", "--session", "s-7f3a9c", "--direct"))
    assert "s-7f3a9c01aa" in line
    assert "s-7f3a9c02bb" in line
    one_error_line(invoke("token", "issue", "alice", "--session", "s-nope", "--direct"))
