"""Reproducible packages: SOURCE_DATE_EPOCH fixes every time in a build, RSA signs the same."""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from supplychain_fixtures import PASSWORD, Pki
from typer.testing import CliRunner

from stockade.cli import package as package_cli

root = typer.Typer()
root.add_typer(package_cli.app, name="package")


def _build(src: Path, out: Path, pki: Pki, env: dict[str, str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    args = ["package", "build", str(src), "-o", str(out), "--certificate", str(pki.pfx)]
    result = CliRunner().invoke(root, [*args, "--password-env", "SIGN_PW"], env=env)
    assert result.exit_code == 0, result.output


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_builds_with_source_date_epoch_are_byte_identical(
    make_tree: Callable[[], Path], pki: Pki, tmp_path: Path
) -> None:
    src = make_tree()
    env = {"SIGN_PW": PASSWORD, "SOURCE_DATE_EPOCH": "1764547200"}  # 2025-12-01, cert valid
    _build(src, tmp_path / "a" / "p.zip", pki, env)
    _build(src, tmp_path / "b" / "p.zip", pki, env)
    first, second = tmp_path / "a" / "p.zip", tmp_path / "b" / "p.zip"
    if _digest(first) != _digest(second):
        with zipfile.ZipFile(first) as one, zipfile.ZipFile(second) as two:
            differing = [n for n in one.namelist() if one.read(n) != two.read(n)]
        pytest.fail(f"entries differ between two builds: {differing}")


def test_without_source_date_epoch_signing_time_is_now(
    make_tree: Callable[[], Path], pki: Pki, tmp_path: Path
) -> None:
    """The control: the signing time really is in the signature, so the epoch is what fixes it."""
    src = make_tree()
    env = {"SIGN_PW": PASSWORD, "SOURCE_DATE_EPOCH": "1764547200"}
    _build(src, tmp_path / "a" / "p.zip", pki, env)
    env["SOURCE_DATE_EPOCH"] = "1764547201"
    _build(src, tmp_path / "b" / "p.zip", pki, env)
    with (
        zipfile.ZipFile(tmp_path / "a" / "p.zip") as one,
        zipfile.ZipFile(tmp_path / "b" / "p.zip") as two,
    ):
        assert one.read("bin/stockade.exe") != two.read("bin/stockade.exe")
        assert one.read("docs/README.txt") == two.read("docs/README.txt")


def test_malformed_source_date_epoch_is_refused(
    make_tree: Callable[[], Path], pki: Pki, tmp_path: Path
) -> None:
    out = tmp_path / "o" / "p.zip"
    out.parent.mkdir()
    args = ["package", "build", str(make_tree()), "-o", str(out), "--certificate", str(pki.pfx)]
    result = CliRunner().invoke(
        root,
        [*args, "--password-env", "SIGN_PW"],
        env={"SIGN_PW": PASSWORD, "SOURCE_DATE_EPOCH": "yesterday"},
    )
    assert result.exit_code == 2
    assert "SOURCE_DATE_EPOCH" in result.stderr
    assert not out.exists()
    assert os.listdir(out.parent) == []
