"""`stockade package build|verify` and `catalog create` with real osslsigncode and openssl."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from supplychain_fixtures import PASSWORD, Pki
from typer.testing import CliRunner

from stockade.cli import catalog as catalog_cli
from stockade.cli import package as package_cli
from stockade.supplychain import safe_extract

SIGNABLE = [
    "bin/helper.dll",
    "bin/installer-data",
    "bin/noext-tool",
    "bin/stockade.exe",
    "scripts/Stockade.psd1",
    "scripts/Stockade.psm1",
    "scripts/install.ps1",
    "setup.msi",
]

root = typer.Typer()
root.add_typer(package_cli.app, name="package")
root.add_typer(catalog_cli.app, name="catalog")


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(root, list(args), env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def build(src: Path, out: Path, pki: Pki, *extra: str) -> tuple[int, str, str]:
    return run(
        "package",
        "build",
        str(src),
        "-o",
        str(out),
        "--certificate",
        str(pki.pfx),
        "--password-env",
        "SIGN_PW",
        *extra,
        env={"SIGN_PW": PASSWORD},
    )


@pytest.fixture
def package(make_tree: Callable[[], Path], pki: Pki, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(source tree, package zip, unpacked copy of the zip)."""
    src = make_tree()
    out = tmp_path / "out" / "stockade.zip"
    out.parent.mkdir()
    code, _, err = build(src, out, pki, "--jobs", "2")
    assert code == 0, err
    unpacked = tmp_path / "unpacked"
    safe_extract(out, unpacked)
    return src, out, unpacked


def osslsigncode_verify(path: Path, ca: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["osslsigncode", "verify", "-in", str(path), "-CAfile", str(ca)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_build_signs_every_signable_file_and_keeps_excluded_identical(
    package: tuple[Path, Path, Path], pki: Pki
) -> None:
    src, _, unpacked = package
    doc = json.loads((unpacked / "catalog.json").read_text())
    assert doc["format_version"] == 1
    statuses = {path: entry["status"] for path, entry in doc["files"].items()}
    assert sorted(p for p, s in statuses.items() if s == "signed") == SIGNABLE
    assert statuses["vendor/kube/kubectl.exe"] == "excluded"
    assert statuses["docs/README.txt"] == "unsigned"
    for rel in SIGNABLE:
        done = osslsigncode_verify(unpacked / rel, pki.ca_pem)
        assert done.returncode == 0, f"{rel}: {done.stdout[-500:]}"
        assert (unpacked / rel).read_bytes() != (src / rel).read_bytes()
    for rel in ("vendor/kube/kubectl.exe", "docs/README.txt"):
        assert (unpacked / rel).read_bytes() == (src / rel).read_bytes()
    assert osslsigncode_verify(unpacked / "vendor/kube/kubectl.exe", pki.ca_pem).returncode != 0


def test_zip_is_deterministic(package: tuple[Path, Path, Path]) -> None:
    _, out, _ = package
    with zipfile.ZipFile(out) as archive:
        infos = archive.infolist()
    names = [i.filename for i in infos]
    assert names == sorted(names)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.external_attr >> 16 for i in infos} == {0o100644}


def test_rebuild_with_fixed_epoch_gives_identical_unsigned_entries(
    make_tree: Callable[[], Path], pki: Pki, tmp_path: Path
) -> None:
    src = make_tree()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    env = {"SIGN_PW": PASSWORD, "SOURCE_DATE_EPOCH": "1700000000"}
    for name in ("a", "b"):
        args = ["package", "build", str(src), "-o", str(tmp_path / name / "p.zip")]
        args += ["--certificate", str(pki.pfx), "--password-env", "SIGN_PW"]
        assert run(*args, env=env)[0] == 0
    with (
        zipfile.ZipFile(tmp_path / "a" / "p.zip") as first,
        zipfile.ZipFile(tmp_path / "b" / "p.zip") as second,
    ):
        assert first.namelist() == second.namelist()
        for name in ("docs/README.txt", "vendor/kube/kubectl.exe"):
            assert first.getinfo(name).CRC == second.getinfo(name).CRC
        created = json.loads(first.read("catalog.json"))["created"]
        assert created == "2023-11-14T22:13:20Z"


def test_verify_accepts_zip_and_directory(package: tuple[Path, Path, Path], pki: Pki) -> None:
    _, out, unpacked = package
    code, stdout, err = run("package", "verify", str(out), "--ca", str(pki.ca_pem))
    assert code == 0, err
    assert "8 signatures" in stdout
    code, stdout, err = run("package", "verify", str(unpacked), "--ca", str(pki.ca_pem), "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["ok"] is True
    assert report["signatures_checked"] == len(SIGNABLE)
    code, _, err = run("package", "verify", str(unpacked))
    assert code == 1  # intact, but nobody said whose signature to trust
    assert "catalog.json.p7s: signer not anchored" in err
    code, stdout, _ = run("package", "verify", str(unpacked), "--no-anchor")
    assert code == 0
    assert "not anchored" in stdout


@pytest.mark.parametrize("rel", ["bin/stockade.exe", "scripts/install.ps1", "docs/README.txt"])
def test_one_changed_byte_fails_naming_file(
    package: tuple[Path, Path, Path], pki: Pki, rel: str
) -> None:
    _, _, unpacked = package
    target = unpacked / rel
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    code, _, err = run("package", "verify", str(unpacked), "--ca", str(pki.ca_pem))
    assert code == 1
    assert f"{rel}: sha256 differs from the catalog" in err


def test_authenticode_is_checked_even_when_catalog_is_rewritten(
    package: tuple[Path, Path, Path], pki: Pki
) -> None:
    """A tampered PE whose new hash was put into the catalog still fails (catalog signature
    and Authenticode both catch it)."""
    _, _, unpacked = package
    target = unpacked / "bin" / "stockade.exe"
    data = bytearray(target.read_bytes())
    data[200] ^= 0x01
    target.write_bytes(bytes(data))
    doc = json.loads((unpacked / "catalog.json").read_text())
    doc["files"]["bin/stockade.exe"]["sha256"] = hashlib.sha256(data).hexdigest()
    (unpacked / "catalog.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    code, _, err = run("package", "verify", str(unpacked), "--ca", str(pki.ca_pem))
    assert code == 1
    assert "catalog.json.p7s: signature does not match the catalog" in err
    assert "bin/stockade.exe: Authenticode" in err


def test_added_and_removed_files_fail(package: tuple[Path, Path, Path], pki: Pki) -> None:
    _, _, unpacked = package
    (unpacked / "bin" / "implant.dll").write_bytes(b"MZ evil")
    (unpacked / "scripts" / "Stockade.psm1").unlink()
    code, _, err = run("package", "verify", str(unpacked), "--ca", str(pki.ca_pem))
    assert code == 1
    assert "bin/implant.dll: extra file not listed in the catalog" in err
    assert "scripts/Stockade.psm1: missing file listed in the catalog" in err


def test_replaced_catalog_signature_fails(
    package: tuple[Path, Path, Path], pki: Pki, tmp_path: Path
) -> None:
    _, _, unpacked = package
    # A valid signature by another CA's code-signing certificate over the same catalog.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(unpacked / "catalog.json", other / "catalog.json")
    from stockade.supplychain import load_certificate
    from stockade.supplychain._catalog import sign_catalog

    impostor = load_certificate(pki.other_pfx, PASSWORD.encode())
    data = (unpacked / "catalog.json").read_bytes()
    (unpacked / "catalog.json.p7s").write_bytes(sign_catalog(data, impostor))
    code, _, err = run("package", "verify", str(unpacked), "--ca", str(pki.ca_pem))
    assert code == 1
    assert "catalog.json.p7s: signer does not chain to the trusted CA" in err
    # Without --ca, the Authenticode signatures no longer match the catalog signer's root.
    code, _, err = run("package", "verify", str(unpacked), "--no-anchor")
    assert code == 1
    assert "bin/stockade.exe: Authenticode" in err
    # Garbage instead of a signature.
    (unpacked / "catalog.json.p7s").write_bytes(b"\x30\x03garbage")
    code, _, err = run("package", "verify", str(unpacked), "--ca", str(pki.ca_pem))
    assert code == 1
    assert "catalog.json.p7s:" in err
    (unpacked / "catalog.json.p7s").unlink()
    code, _, err = run("package", "verify", str(unpacked), "--ca", str(pki.ca_pem))
    assert code == 1
    assert "catalog.json.p7s: missing catalog signature" in err


def test_exclusion_file_patterns_and_comments(
    make_tree: Callable[[], Path], pki: Pki, tmp_path: Path
) -> None:
    src = make_tree()
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("# our own helper comes prebuilt\nbin/helper.dll\n*.psd1  # manifests\n")
    out = tmp_path / "p.zip"
    code, _, err = build(src, out, pki, "--exclude-file", str(exclude))
    assert code == 0, err
    with zipfile.ZipFile(out) as archive:
        doc = json.loads(archive.read("catalog.json"))
        assert archive.read("bin/helper.dll") == (src / "bin/helper.dll").read_bytes()
    statuses = {p: e["status"] for p, e in doc["files"].items()}
    assert statuses["bin/helper.dll"] == "excluded"
    assert statuses["scripts/Stockade.psd1"] == "excluded"
    assert statuses["vendor/kube/kubectl.exe"] == "excluded"
    assert statuses["bin/stockade.exe"] == "signed"


def test_catalog_create_and_cdf(package: tuple[Path, Path, Path], pki: Pki, tmp_path: Path) -> None:
    _, _, unpacked = package
    (unpacked / "catalog.json").unlink()
    (unpacked / "catalog.json.p7s").unlink()
    (unpacked / "docs" / "new.txt").write_text("added before cataloguing\n")
    cdf = tmp_path / "package.cdf"
    code, _, err = run(
        "catalog",
        "create",
        str(unpacked),
        "--certificate",
        str(pki.pfx),
        "--password-file",
        str(_password_file(tmp_path)),
        "--cdf",
        str(cdf),
    )
    assert code == 0, err
    doc = json.loads((unpacked / "catalog.json").read_text())
    assert doc["files"]["docs/new.txt"]["status"] == "unsigned"
    assert doc["files"]["bin/stockade.exe"]["status"] == "signed"
    assert doc["files"]["vendor/kube/kubectl.exe"]["status"] == "excluded"
    text = cdf.read_text()
    assert "[CatalogHeader]" in text
    assert "<hash>bin\\stockade.exe=bin\\stockade.exe" in text
    code, _, err = run("package", "verify", str(unpacked), "--ca", str(pki.ca_pem))
    assert code == 0, err
    # A CDF inside the tree would be an unlisted file.
    code, _, err = run(
        "catalog",
        "create",
        str(unpacked),
        "--certificate",
        str(pki.pfx),
        "--password-env",
        "PW",
        "--cdf",
        str(unpacked / "x.cdf"),
        env={"PW": PASSWORD},
    )
    assert code == 2
    assert "--cdf must be outside DIR" in err


def _password_file(tmp_path: Path) -> Path:
    path = tmp_path / "pw"
    path.write_text(PASSWORD + "\n")
    return path


def test_self_signed_ec_certificate_without_chain(
    make_tree: Callable[[], Path], ec_pfx: Path, tmp_path: Path
) -> None:
    src = make_tree()
    out = tmp_path / "ec.zip"
    code, _, err = run(
        "package",
        "build",
        str(src),
        "-o",
        str(out),
        "--certificate",
        str(ec_pfx),
        "--password",
        PASSWORD,
    )
    assert code == 0, err
    assert "warning: --password is visible" in err
    code, _, err = run("package", "verify", str(out), "--no-anchor")
    assert code == 0, err
