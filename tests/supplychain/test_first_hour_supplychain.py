"""Supply-chain items of the first hour: zip bombs of small entries, catalog.json first,
`catalog verify`, and AppLocker publisher rules from the signing certificate."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from supplychain_fixtures import PASSWORD, Pki
from typer.testing import CliRunner

from stockade.cli import applocker as applocker_cli
from stockade.cli import catalog as catalog_cli
from stockade.cli import package as package_cli
from stockade.supplychain import UnsafeArchive, publisher_name, safe_extract

root = typer.Typer()
root.add_typer(package_cli.app, name="package")
root.add_typer(catalog_cli.app, name="catalog")
root.add_typer(applocker_cli.app, name="applocker")


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(root, list(args), env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


# --- zip extraction ---


def test_many_small_zero_entries_are_a_bomb_refused_before_writing(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    chunk = b"\0" * (1 << 20)
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("catalog.json", b"{}")
        for n in range(1000):
            archive.writestr(f"part/{n:04}.bin", chunk)
    assert bomb.stat().st_size < 8 << 20  # ~1 GiB inside a few MiB
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchive) as err:
        safe_extract(bomb, target)
    assert "archive compression ratio" in str(err.value)
    assert not target.exists()  # decided before the first byte was written


def test_package_verify_refuses_the_bomb_with_one_line(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        for n in range(100):
            archive.writestr(f"{n:04}.bin", b"\0" * (1 << 20))
    code, _, err = run("package", "verify", str(bomb), "--no-anchor")
    assert code == 2
    assert "compression ratio" in err


def test_small_compressible_archive_still_extracts(tmp_path: Path) -> None:
    archive_path = tmp_path / "ok.zip"
    with zipfile.ZipFile(archive_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for n in range(50):
            archive.writestr(f"f{n}.txt", b"a" * 10_000)  # 500 KB total: under the floor
    assert len(safe_extract(archive_path, tmp_path / "out")) == 50


def test_catalog_is_extracted_first_and_required(tmp_path: Path) -> None:
    archive_path = tmp_path / "p.zip"
    with zipfile.ZipFile(archive_path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.txt", b"a")
        archive.writestr("catalog.json", b"{}")
        archive.writestr("z.txt", b"z")
    names = safe_extract(archive_path, tmp_path / "out", first="catalog.json")
    assert names[0] == "catalog.json"
    missing = tmp_path / "no-catalog.zip"
    with zipfile.ZipFile(missing, "w") as archive:
        archive.writestr("a.txt", b"a")
    with pytest.raises(UnsafeArchive, match=r"catalog\.json"):
        safe_extract(missing, tmp_path / "out2", first="catalog.json")
    assert not (tmp_path / "out2").exists()


def test_package_without_catalog_is_refused_before_extracting(tmp_path: Path) -> None:
    archive_path = tmp_path / "p.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.writestr("tool.exe", b"MZ" + b"\0" * 100)
    code, _, err = run("package", "verify", str(archive_path), "--no-anchor")
    assert code == 2
    assert "catalog.json" in err
    assert "not a Stockade package" in err


# --- catalog verify ---


def test_catalog_verify_directory(make_tree: Callable[[], Path], pki: Pki) -> None:
    tree = make_tree()
    env = {"SIGN_PW": PASSWORD}
    cert = ["--certificate", str(pki.pfx), "--password-env", "SIGN_PW"]
    code, _, err = run("catalog", "create", str(tree), *cert, env=env)
    assert code == 0, err
    code, out, err = run("catalog", "verify", str(tree), "--ca", str(pki.ca_pem))
    assert code == 0, err
    assert out.startswith("ok:")
    code, out, _ = run("catalog", "verify", str(tree), "--ca", str(pki.ca_pem), "--json")
    assert json.loads(out)["ok"] is True
    (tree / "docs" / "README.txt").write_text("changed\n")
    (tree / "extra.txt").write_text("new\n")
    code, _, err = run("catalog", "verify", str(tree), "--ca", str(pki.ca_pem))
    assert code == 1
    assert "docs/README.txt: sha256 differs" in err
    assert "extra.txt: extra file" in err
    code, _, err = run("catalog", "verify", str(tree))
    assert code == 1  # without --ca the signer is not anchored: fails closed
    code, _, err = run("catalog", "verify", str(tree / "missing"))
    assert code == 2


# --- AppLocker publisher rules ---


def _signer_pem(tmp_path: Path, subject: x509.Name) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=10))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "signer.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _publisher_rules(path: Path) -> dict[str, list[ET.Element]]:
    tree = ET.parse(path)  # noqa: S314 - our own output
    return {
        c.get("Type", ""): [r for r in c if r.tag == "FilePublisherRule"]
        for c in tree.getroot().findall("RuleCollection")
    }


def test_publisher_rules_from_signing_certificate_merged_with_path_rules(tmp_path: Path) -> None:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Washington"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Redmond"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Contoso, Ltd"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Contoso Code Signing"),
        ]
    )
    signer = _signer_pem(tmp_path, subject)
    out = tmp_path / "rules.xml"
    code, _, err = run("applocker", "rules", "-o", str(out), "--publisher-from", str(signer))
    assert code == 0, err
    expected = 'O="CONTOSO, LTD", L=REDMOND, S=WASHINGTON, C=US'
    rules = _publisher_rules(out)
    for kind in ("Exe", "Script", "Msi"):
        ours = [r for r in rules[kind] if r.get("UserOrGroupSid") == "S-1-5-93-2-2"]
        assert len(ours) == 1, kind
        condition = ours[0].find("Conditions/FilePublisherCondition")
        assert condition is not None
        assert condition.get("PublisherName") == expected
        assert condition.get("BinaryName") == "*"
    text = out.read_text()
    assert 'Path="C:\\*"' in text  # the path rules are still there
    merged = tmp_path / "merged.xml"
    merged.write_text(text)
    code, _, err = run(
        "applocker",
        "rules",
        "-o",
        str(merged),
        "--merge",
        str(merged),
        "--publisher-from",
        str(signer),
    )
    assert code == 0
    assert "merged 0 new rule(s)" in err


def test_publisher_name_without_organisation_uses_the_cn(tmp_path: Path, pki: Pki) -> None:
    _, cert, _ = pkcs12.load_key_and_certificates(pki.pfx.read_bytes(), PASSWORD.encode())
    assert cert is not None
    assert publisher_name(cert) == "CN=STOCKADE CODE SIGNING"
    der = tmp_path / "signer.der"
    der.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    out = tmp_path / "r.xml"
    code, _, err = run("applocker", "rules", "-o", str(out), "--publisher-from", str(der))
    assert code == 0, err
    assert 'PublisherName="CN=STOCKADE CODE SIGNING"' in out.read_text()


def test_publisher_from_garbage_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"\xff\xfe not a certificate")
    code, _, err = run(
        "applocker", "rules", "-o", str(tmp_path / "r.xml"), "--publisher-from", str(bad)
    )
    assert code == 2
    assert str(bad) in err
    assert len(err.strip().splitlines()) == 1
