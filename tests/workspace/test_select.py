"""Runtime selection never falls back to no isolation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stockade.core.errors import ToolMissing
from stockade.workspace import select_runtime


def _path_with(tmp: Path, monkeypatch: pytest.MonkeyPatch, *programs: str) -> None:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for program in programs:
        target = bin_dir / program
        target.write_text("#!/bin/sh\n")
        target.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_auto_prefers_podman(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _path_with(tmp_path, monkeypatch, "podman", "runc", "bwrap")
    assert select_runtime("auto") == "podman"
    assert select_runtime("sandbox") == "sandbox"


def test_auto_falls_back_to_bubblewrap_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _path_with(tmp_path, monkeypatch, "bwrap", "podman")  # podman without runc does not count
    assert select_runtime("auto") == "sandbox"
    with pytest.raises(ToolMissing, match="runc"):
        select_runtime("podman")


def test_neither_refuses_with_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _path_with(tmp_path, monkeypatch)
    with pytest.raises(ToolMissing, match="apt-get install -y podman runc") as err:
        select_runtime("auto")
    assert "bubblewrap" in str(err.value)
    with pytest.raises(ToolMissing, match="bubblewrap"):
        select_runtime("sandbox")
    assert os.environ["PATH"].endswith("bin")
