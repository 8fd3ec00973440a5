"""Fixtures for supply-chain tests: a test CA, code-signing PFX files, a real PE and MSI."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from supplychain_fixtures import PASSWORD, Binaries, Pki


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: rsa.RSAPrivateKey,
    ca: x509.Certificate,
    cn: str,
    *,
    eku: x509.ObjectIdentifier = ExtendedKeyUsageOID.CODE_SIGNING,
    start: timedelta = timedelta(days=-1),
    end: timedelta = timedelta(days=10),
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + start)
        .not_valid_after(now + end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pfx(path: Path, key: rsa.RSAPrivateKey, cert: x509.Certificate, ca: x509.Certificate) -> Path:
    data = pkcs12.serialize_key_and_certificates(
        b"signer",
        key,
        cert,
        [ca],
        serialization.BestAvailableEncryption(PASSWORD.encode()),
    )
    path.write_bytes(data)
    return path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Test CA, a code-signing PFX, an expired one, a TLS-server one, and a second CA's."""
    root = tmp_path_factory.mktemp("pki")
    ca_key, ca = _ca("Stockade Test CA")
    other_key, other_ca = _ca("Other CA")
    (root / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (root / "other-ca.pem").write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
    key, cert = _leaf(ca_key, ca, "Stockade Code Signing")
    e_key, e_cert = _leaf(ca_key, ca, "Expired", start=timedelta(days=-10), end=timedelta(days=-1))
    s_key, s_cert = _leaf(ca_key, ca, "Server", eku=ExtendedKeyUsageOID.SERVER_AUTH)
    o_key, o_cert = _leaf(other_key, other_ca, "Impostor Code Signing")
    return Pki(
        ca_pem=root / "ca.pem",
        pfx=_pfx(root / "signer.pfx", key, cert, ca),
        expired_pfx=_pfx(root / "expired.pfx", e_key, e_cert, ca),
        server_pfx=_pfx(root / "server.pfx", s_key, s_cert, ca),
        other_ca_pem=root / "other-ca.pem",
        other_pfx=_pfx(root / "other.pfx", o_key, o_cert, other_ca),
    )


@pytest.fixture(scope="session")
def ec_pfx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed ECDSA code-signing certificate without chain."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Self Signed EC"))
        .issuer_name(_name("Self Signed EC"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=10))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path_factory.mktemp("ecpki") / "ec.pfx"
    path.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"ec", key, cert, None, serialization.BestAvailableEncryption(PASSWORD.encode())
        )
    )
    return path


_WXS = """<?xml version="1.0" encoding="utf-8"?>
<Wix xmlns="http://schemas.microsoft.com/wix/2006/wi">
  <Product Id="6f1c3c9e-2d1a-4f0e-9a55-0b8f6c1d2e01" Name="StockadeTest" Language="1033"
    Version="1.0.0" Manufacturer="Stockade" UpgradeCode="6f1c3c9e-2d1a-4f0e-9a55-0b8f6c1d2e02">
    <Package InstallerVersion="200" Compressed="yes"/>
    <Media Id="1" Cabinet="t.cab" EmbedCab="yes"/>
    <Directory Id="TARGETDIR" Name="SourceDir">
      <Directory Id="ProgramFilesFolder"><Directory Id="D" Name="StockadeTest">
        <Component Id="C" Guid="6f1c3c9e-2d1a-4f0e-9a55-0b8f6c1d2e03">
          <File Id="F" Source="payload.txt"/>
        </Component>
      </Directory></Directory>
    </Directory>
    <Feature Id="Ft" Level="1"><ComponentRef Id="C"/></Feature>
  </Product>
</Wix>
"""


@pytest.fixture(scope="session")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> Binaries:
    """A PE executable and DLL built with mingw-w64 gcc, and an MSI built with wixl."""
    for tool in ("x86_64-w64-mingw32-gcc", "wixl"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} missing: run `make venv` (scripts/system-deps.sh installs it)")
    root = tmp_path_factory.mktemp("bin")
    (root / "hello.c").write_text("int main(void) { return 0; }\n")
    (root / "lib.c").write_text("__declspec(dllexport) int answer(void) { return 42; }\n")
    subprocess.run(
        ["x86_64-w64-mingw32-gcc", "-s", "-o", "hello.exe", "hello.c"], cwd=root, check=True
    )
    subprocess.run(
        ["x86_64-w64-mingw32-gcc", "-s", "-shared", "-o", "lib.dll", "lib.c"], cwd=root, check=True
    )
    (root / "payload.txt").write_text("payload\n")
    (root / "t.wxs").write_text(_WXS)
    subprocess.run(["wixl", "-o", "setup.msi", "t.wxs"], cwd=root, check=True)
    return Binaries(exe=root / "hello.exe", dll=root / "lib.dll", msi=root / "setup.msi")


@pytest.fixture
def make_tree(binaries: Binaries, tmp_path: Path) -> Callable[[], Path]:
    """Builds a source tree with PE, MSI, PowerShell, plain and vendored files."""

    def build() -> Path:
        src = tmp_path / "src"
        (src / "bin").mkdir(parents=True)
        (src / "scripts").mkdir()
        (src / "vendor" / "kube").mkdir(parents=True)
        (src / "docs").mkdir()
        shutil.copy(binaries.exe, src / "bin" / "stockade.exe")
        shutil.copy(binaries.dll, src / "bin" / "helper.dll")
        shutil.copy(binaries.exe, src / "bin" / "noext-tool")  # PE found by content
        shutil.copy(binaries.msi, src / "setup.msi")
        shutil.copy(binaries.msi, src / "bin" / "installer-data")  # MSI found by content
        (src / "scripts" / "install.ps1").write_text("Write-Host 'install'\r\n")
        (src / "scripts" / "Stockade.psm1").write_text("function Get-Stockade { 'ok' }\r\n")
        (src / "scripts" / "Stockade.psd1").write_text("@{ ModuleVersion = '1.0.0' }\r\n")
        shutil.copy(binaries.exe, src / "vendor" / "kube" / "kubectl.exe")
        (src / "docs" / "README.txt").write_text("read me\n")
        return src

    return build
