"""Homes never change hands silently (issue 10, deliver 7): ``stockade users add`` and
``stockade workspaces add`` refuse a name whose home an earlier holder left, unless
``--reuse-home`` or ``--purge`` is given; a purged name gets a fresh uid."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from stockade.cli import _common, app
from stockade.workspace import UidAllocator, workspace_homes

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


def invoke(*args: str) -> Result:
    result = runner.invoke(app, [*args, "--direct"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"traceback instead of an error line: {result.exception!r}")
    return result


def _leave_files(data: Path, name: str) -> list[Path]:
    """What a session would have left: a file in each of the name's homes."""
    homes = workspace_homes(data, name)
    for home in homes:
        home.mkdir(parents=True, exist_ok=True)
        (home / "private-notes").write_text(f"{name}'s notes")
    return homes


def test_a_re_created_user_does_not_inherit_the_old_home(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert invoke("users", "add", "alice").exit_code == 0
    homes = _leave_files(data, "alice")
    assert invoke("users", "remove", "alice").exit_code == 0
    refused = invoke("users", "add", "alice")
    assert refused.exit_code == 2, refused.output
    assert "--reuse-home" in refused.stderr
    assert "alice" in refused.stderr
    assert "Traceback" not in refused.output
    assert invoke("users", "show", "alice").exit_code != 0  # nothing was created
    assert all((home / "private-notes").exists() for home in homes)  # nor deleted

    both = invoke("users", "add", "alice", "--reuse-home", "--purge")
    assert both.exit_code == 2
    assert "--reuse-home/--purge" in both.stderr

    kept = invoke("users", "add", "alice", "--reuse-home")
    assert kept.exit_code == 0, kept.output
    assert all((home / "private-notes").exists() for home in homes)
    # handed over for good: a later add of the same user is not asked again ...
    assert invoke("users", "remove", "alice").exit_code == 0
    # ... but each re-creation is a new holder again
    assert invoke("users", "add", "alice").exit_code == 2


def test_purge_deletes_the_home_and_gives_a_fresh_uid(tmp_path: Path) -> None:
    data = tmp_path / "data"
    uids = UidAllocator(data / "workspace-uids.json")
    assert invoke("users", "add", "bob").exit_code == 0
    old_uid = uids.uid("bob")
    homes = _leave_files(data, "bob")
    assert invoke("users", "remove", "bob").exit_code == 0
    purged = invoke("users", "add", "bob", "--purge")
    assert purged.exit_code == 0, purged.output
    assert not any(home.exists() for home in homes)
    assert uids.uid("bob") != old_uid


def test_purge_of_a_name_still_in_use_deletes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert invoke("users", "add", "carol").exit_code == 0
    homes = _leave_files(data, "carol")
    again = invoke("users", "add", "carol", "--purge")
    assert again.exit_code == 2
    assert "already exists" in again.stderr
    assert all((home / "private-notes").exists() for home in homes)


def test_a_re_created_workspace_does_not_inherit_the_old_home(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for user in ("dave", "erin"):
        assert invoke("users", "add", user).exit_code == 0
    added = invoke("workspaces", "add", "lab", "--owner", "dave", "--backend", "container")
    assert added.exit_code == 0, added.output
    homes = _leave_files(data, "lab")
    assert invoke("workspaces", "remove", "lab").exit_code == 0
    refused = invoke("workspaces", "add", "lab", "--owner", "erin")
    assert refused.exit_code == 2, refused.output
    assert "belonged to dave" in refused.stderr
    purged = invoke("workspaces", "add", "lab", "--owner", "erin", "--purge")
    assert purged.exit_code == 0, purged.output
    assert not any(home.exists() for home in homes)


def test_a_home_from_before_records_is_refused(tmp_path: Path) -> None:
    """A home on disk with no owner record (left before records existed) is someone else's."""
    data = tmp_path / "data"
    _leave_files(data, "frank")
    refused = invoke("users", "add", "frank")
    assert refused.exit_code == 2
    assert "unknown owner" in refused.stderr
