"""Malicious zips are refused before anything is written; nothing lands outside the target."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from stockade.cli import package as package_cli
from stockade.supplychain import UnsafeArchive, ZipLimits, safe_extract


def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return path


def _link(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _snapshot(base: Path) -> set[str]:
    return {p.relative_to(base).as_posix() for p in base.rglob("*")}


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([("../evil.txt", b"x")], "path traversal"),
        ([("ok/../../evil.txt", b"x")], "path traversal"),
        ([("/tmp/evil.txt", b"x")], "absolute path"),
        ([("C:/evil.txt", b"x")], "absolute path"),
        ([("dir\\..\\evil.txt", b"x")], "backslash"),
        ([(_link("link", "/etc"), b"/etc")], "symbolic link"),
        ([("a.txt", b"1"), ("A.TXT", b"2")], "duplicate name"),
        ([("bomb.bin", b"\0" * (64 << 20))], "compression ratio"),
    ],
)
def test_malicious_entries_refused(
    tmp_path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]], reason: str
) -> None:
    archive = _zip(tmp_path / "bad.zip", [("first.txt", b"fine"), *entries])
    target = tmp_path / "work" / "target"
    target.parent.mkdir()
    before = _snapshot(tmp_path)
    with pytest.raises(UnsafeArchive, match=reason) as excinfo:
        safe_extract(archive, target)
    assert excinfo.value.exit_code == 2
    assert _snapshot(tmp_path) == before  # nothing written, not even the harmless entry


def test_total_size_and_entry_limits(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "big.zip", [(f"f{i}", b"x" * 1000) for i in range(5)])
    with pytest.raises(UnsafeArchive, match="total size"):
        safe_extract(archive, tmp_path / "t1", ZipLimits(max_total_bytes=3000))
    with pytest.raises(UnsafeArchive, match="more than 3 entries"):
        safe_extract(archive, tmp_path / "t2", ZipLimits(max_entries=3))
    assert not (tmp_path / "t1").exists()


def test_duplicate_exact_names(tmp_path: Path) -> None:
    path = tmp_path / "dup.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("same", b"1")
        with pytest.warns(UserWarning, match="Duplicate"):
            archive.writestr("same", b"2")
    with pytest.raises(UnsafeArchive, match="duplicate name"):
        safe_extract(path, tmp_path / "t")


def test_safe_zip_extracts(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "ok.zip", [("a/b.txt", b"hello"), ("c.txt", b"world")])
    names = safe_extract(archive, tmp_path / "t")
    assert names == ["a/b.txt", "c.txt"]
    assert (tmp_path / "t" / "a" / "b.txt").read_bytes() == b"hello"


def test_verify_refuses_malicious_package_with_one_line(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "evil.zip", [("../../escape.txt", b"x")])
    app = typer.Typer()
    app.add_typer(package_cli.app, name="package")
    result = CliRunner().invoke(app, ["package", "verify", str(archive)])
    assert result.exit_code == 2
    assert "entry '../../escape.txt': path traversal" in result.stderr
    assert not (tmp_path.parent / "escape.txt").exists()
