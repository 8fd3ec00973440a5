"""Bad input to `package build`: one clear line naming the file and the fix, exit 2, no package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from supplychain_fixtures import PASSWORD, Pki
from typer.testing import CliRunner

from stockade.cli import package as package_cli
from stockade.supplychain import ExclusionList, is_signable
from tests.conftest import IN_CI

root = typer.Typer()
root.add_typer(package_cli.app, name="package")


def build(src: Path, out: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(
        root, ["package", "build", str(src), "-o", str(out), *args], env=env
    )
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stderr


def assert_one_line_and_no_output(err: str, out: Path) -> None:
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_wrong_password(make_tree: Callable[[], Path], pki: Pki, tmp_path: Path) -> None:
    out = tmp_path / "p.zip"
    code, err = build(
        make_tree(), out, "--certificate", str(pki.pfx), "--password-env", "PW", env={"PW": "no"}
    )
    assert code == 2
    assert str(pki.pfx) in err
    assert "wrong PFX password" in err
    assert_one_line_and_no_output(err, out)


def test_unset_password_variable(make_tree: Callable[[], Path], pki: Pki, tmp_path: Path) -> None:
    out = tmp_path / "p.zip"
    code, err = build(make_tree(), out, "--certificate", str(pki.pfx), "--password-env", "NOPE_X")
    assert code == 2
    assert "NOPE_X is not set" in err
    assert_one_line_and_no_output(err, out)


def test_expired_certificate(make_tree: Callable[[], Path], pki: Pki, tmp_path: Path) -> None:
    out = tmp_path / "p.zip"
    code, err = build(
        make_tree(),
        out,
        "--certificate",
        str(pki.expired_pfx),
        "--password-env",
        "PW",
        env={"PW": PASSWORD},
    )
    assert code == 2
    assert str(pki.expired_pfx) in err
    assert "expired on" in err
    assert_one_line_and_no_output(err, out)


def test_non_code_signing_certificate(
    make_tree: Callable[[], Path], pki: Pki, tmp_path: Path
) -> None:
    out = tmp_path / "p.zip"
    code, err = build(
        make_tree(),
        out,
        "--certificate",
        str(pki.server_pfx),
        "--password-env",
        "PW",
        env={"PW": PASSWORD},
    )
    assert code == 2
    assert "is not a code-signing certificate" in err
    assert_one_line_and_no_output(err, out)


def test_missing_certificate_file(make_tree: Callable[[], Path], tmp_path: Path) -> None:
    out = tmp_path / "p.zip"
    code, err = build(make_tree(), out, "--certificate", str(tmp_path / "none.pfx"))
    assert code == 2
    assert "none.pfx: cannot read the certificate" in err
    assert_one_line_and_no_output(err, out)


def test_missing_osslsigncode(
    make_tree: Callable[[], Path], pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    out = tmp_path / "p.zip"
    code, err = build(
        make_tree(),
        out,
        "--certificate",
        str(pki.pfx),
        "--password-env",
        "PW",
        env={"PW": PASSWORD},
    )
    assert code == 1
    assert "osslsigncode is not installed; install it with: apt-get install -y osslsigncode" in err
    assert_one_line_and_no_output(err, out)


def test_unsignable_file_with_signable_extension(
    make_tree: Callable[[], Path], pki: Pki, tmp_path: Path
) -> None:
    src = make_tree()
    (src / "bin" / "broken.exe").write_bytes(b"not a PE at all")
    out = tmp_path / "p.zip"
    code, err = build(
        src, out, "--certificate", str(pki.pfx), "--password-env", "PW", env={"PW": PASSWORD}
    )
    assert code == 2
    assert "broken.exe" in err
    assert "--exclude-file" in err
    assert_one_line_and_no_output(err, out)


def test_symlink_in_tree_is_refused(
    make_tree: Callable[[], Path], pki: Pki, tmp_path: Path
) -> None:
    src = make_tree()
    (src / "link").symlink_to("/etc/passwd")
    out = tmp_path / "p.zip"
    code, err = build(
        src, out, "--certificate", str(pki.pfx), "--password-env", "PW", env={"PW": PASSWORD}
    )
    assert code == 2
    assert "link: symbolic links cannot be packaged" in err
    assert_one_line_and_no_output(err, out)


def test_existing_output_is_untouched_on_failure(
    make_tree: Callable[[], Path], pki: Pki, tmp_path: Path
) -> None:
    out = tmp_path / "p.zip"
    out.write_bytes(b"previous package")
    code, _ = build(
        make_tree(), out, "--certificate", str(pki.pfx), "--password-env", "PW", env={"PW": "x"}
    )
    assert code == 2
    assert out.read_bytes() == b"previous package"


@pytest.mark.skipif(
    (os.geteuid() != 0 or not shutil.which("setpriv")) and not IN_CI, reason="needs root, setpriv"
)
def test_unreadable_file(make_tree: Callable[[], Path], pki: Pki, tmp_path: Path) -> None:
    """Run the command without CAP_DAC_OVERRIDE/READ_SEARCH so file permissions apply to root."""
    src = make_tree()
    secret = src / "docs" / "secret.txt"
    secret.write_text("nope\n")
    secret.chmod(0o000)
    out = tmp_path / "p.zip"
    code = "from stockade.cli.package import app; app()"
    done = subprocess.run(
        [
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            sys.executable,
            "-c",
            code,
            "build",
            str(src),
            "-o",
            str(out),
            "--certificate",
            str(pki.pfx),
            "--password-env",
            "PW",
        ],
        env={"PW": PASSWORD, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "secret.txt: cannot read it" in lines[0]
    assert "fix its permissions" in lines[0]
    assert not out.exists()


def test_signable_detection_by_content(tmp_path: Path) -> None:
    pe = tmp_path / "a"
    pe.write_bytes(b"MZ" + b"\0" * 0x3A + (0x40).to_bytes(4, "little") + b"PE\0\0" + b"\0" * 32)
    msi = tmp_path / "b"
    msi.write_bytes(bytes.fromhex("D0CF11E0A1B11AE1") + b"\0" * 32)
    fake = tmp_path / "c"
    fake.write_bytes(b"MZ but not a PE")
    assert is_signable(pe)
    assert is_signable(msi)
    assert not is_signable(fake)
    assert is_signable(tmp_path / "x.PS1XML", head=b"")
    assert is_signable(tmp_path / "x.cdxml", head=b"")


@pytest.mark.parametrize(
    ("pattern", "path", "hit"),
    [
        ("*.dll", "deep/dir/x.dll", True),
        ("bin/*.dll", "bin/x.dll", True),
        ("bin/*.dll", "other/bin/x.dll", False),
        ("tools/", "tools/a/b.exe", True),
        ("tools/", "mytools/b.exe", False),
        ("./bin/a.exe", "bin/a.exe", True),
    ],
)
def test_exclusion_patterns(pattern: str, path: str, hit: bool) -> None:
    exclusions = ExclusionList.parse(f"# comment\n{pattern}\n", defaults=False)
    assert (exclusions.match(path) is not None) is hit


def test_default_exclusions_cover_vendored_directories() -> None:
    defaults = ExclusionList()
    assert defaults.match("vendor/kubectl.exe")
    assert defaults.match("bin/third_party/nssm.exe")
    assert not defaults.match("bin/stockade.exe")
