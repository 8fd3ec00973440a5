"""Build small OCI layouts and keys for the images tests (real files, no mocks)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


def tar_of(files: dict[str, bytes]) -> bytes:
    """A deterministic tar of ``files`` (path -> content), directories implied."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for name in sorted(files):
            parts = name.split("/")[:-1]
            for n in range(1, len(parts) + 1):
                d = "/".join(parts[:n])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue()


def _put(root: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_layout(root: Path, layers: list[dict[str, bytes]], *, tag: str = "v1") -> Path:
    """An OCI layout at ``root`` with one image of gzip layers built from ``layers``."""
    (root / "blobs" / "sha256").mkdir(parents=True)
    descs = []
    diff_ids = []
    for files in layers:
        raw = tar_of(files)
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        descs.append({"mediaType": LAYER_GZ, **_put(root, gzip.compress(raw, mtime=0))})
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {},
    }
    cfg = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        **_put(root, json.dumps(config).encode()),
    }
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": cfg, "layers": descs}
    mdesc = {"mediaType": MANIFEST, **_put(root, json.dumps(manifest).encode())}
    mdesc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [mdesc]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return root


def read_manifest(root: Path, tag: str | None = None) -> dict[str, Any]:
    """The (first or tagged) image manifest of a layout, parsed."""
    index = json.loads((root / "index.json").read_text())
    entry = index["manifests"][0]
    if tag is not None:
        entry = next(
            m
            for m in index["manifests"]
            if m["annotations"]["org.opencontainers.image.ref.name"] == tag
        )
    return json.loads(blob(root, entry["digest"]))


def blob(root: Path, digest: str) -> bytes:
    """A blob's bytes."""
    return (root / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def layer_digests(root: Path) -> list[str]:
    """The layer digests of a layout's image."""
    return [layer["digest"] for layer in read_manifest(root)["layers"]]


def rewrite_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Store ``manifest`` and point index.json's first entry at it (what a tamperer does)."""
    data = json.dumps(manifest).encode()
    desc = _put(root, data)
    index = json.loads((root / "index.json").read_text())
    index["manifests"][0].update(desc)
    (root / "index.json").write_text(json.dumps(index))


def replace_blob(root: Path, old: str, data: bytes) -> str:
    """Store ``data`` as a blob, point the manifest's layer ``old`` at it, return the digest."""
    desc = _put(root, data)
    manifest = read_manifest(root)
    for layer in manifest["layers"]:
        if layer["digest"] == old:
            layer.update(desc)
    rewrite_manifest(root, manifest)
    return str(desc["digest"])


@dataclass
class KeyFiles:
    """A key pair on disk: private PEM (PKCS#8, 0600), public PEM and a self-signed cert."""

    private: Path
    public: Path
    cert: Path


def make_key(directory: Path, name: str, kind: str) -> KeyFiles:
    """Generate an ``rsa`` or ``ec`` (P-256) key pair with a certificate under ``directory``."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    key = (
        rsa.generate_private_key(65537, 2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    private = directory / f"{name}.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public = directory / f"{name}.pub.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    import datetime

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / f"{name}.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return KeyFiles(private, public, cert_path)


DPKG_STATUS = b"""Package: base-files
Status: install ok installed
Priority: required
Section: admin
Installed-Size: 340
Maintainer: Santiago Vila <sanvila@debian.org>
Architecture: amd64
Version: 12.4+deb12u5
Description: Debian base system miscellaneous files

Package: libc6
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 12000
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u4
Description: GNU C Library: Shared libraries

"""
OS_RELEASE = (
    b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
    b'VERSION_ID="12"\nID=debian\n'
)


def dist_info(name: str, version: str) -> dict[str, bytes]:
    """Files of an installed Python distribution (what Syft's python cataloger reads)."""
    base = f"usr/lib/python3/dist-packages/{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: test\n"
    return {f"{base}/METADATA": meta.encode(), f"{base}/RECORD": f"{name}/__init__.py,,\n".encode()}


def debian_python_layout(root: Path, python: tuple[str, str] = ("requests", "2.31.0")) -> Path:
    """An image with a Debian package database in one layer and a dist-info in another."""
    return write_layout(
        root,
        [
            {"etc/os-release": OS_RELEASE, "var/lib/dpkg/status": DPKG_STATUS},
            dist_info(*python),
        ],
    )
