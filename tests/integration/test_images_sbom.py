"""``stockade sbom`` driving the real scanners (Syft and Trivy from their wheels)."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from cyclonedx.schema import OutputFormat, SchemaVersion
from cyclonedx.validation import make_schemabased_validator
from typer.testing import CliRunner

from stockade.cli import app
from stockade.images._sbom import scanner_binary
from tests.images.layouts import KeyFiles, debian_python_layout, make_key

DEB = "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12&upstream=glibc"
PYPI = "pkg:pypi/requests@2.31.0"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def purls(doc: dict) -> set[str]:
    return {c["purl"] for c in doc.get("components", []) if "purl" in c}


def valid(
    text: str, version: SchemaVersion = SchemaVersion.V1_6, fmt: OutputFormat = OutputFormat.JSON
) -> bool:
    return make_schemabased_validator(fmt, version).validate_str(text) is None


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return debian_python_layout(tmp_path_factory.mktemp("sbom") / "img")


def test_sbom_lists_deb_and_python_like_syft(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "bom.json"
    code, _, err = run("sbom", f"oci:{image}", "-o", str(out))
    assert code == 0, err
    text = out.read_text()
    assert valid(text)
    doc = json.loads(text)
    assert doc["specVersion"] == "1.6"
    assert {DEB, PYPI} <= purls(doc)
    own = subprocess.run(
        [scanner_binary("syft"), "scan", f"oci-dir:{image}", "-o", "cyclonedx-json", "-q"],
        capture_output=True, check=True, timeout=300,
        env={"SYFT_CHECK_FOR_APP_UPDATE": "false", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert purls(doc) == purls(json.loads(own.stdout))


def test_merged_bom_of_two_images(image: Path, tmp_path: Path) -> None:
    other = debian_python_layout(tmp_path / "other", python=("idna", "3.7"))
    code, out, err = run("sbom", f"oci:{image}", f"oci:{other}")
    assert code == 0, err
    assert valid(out)
    doc = json.loads(out)
    refs = [c["bom-ref"] for c in doc["components"]]
    assert [r for r, n in Counter(refs).items() if n > 1] == []
    assert {DEB, PYPI, "pkg:pypi/idna@3.7"} <= purls(doc)
    assert sum(1 for c in doc["components"] if c.get("purl") == DEB) == 1  # shared, listed once
    images = [c for c in doc["components"] if c["type"] == "container"]
    assert len(images) == 2
    deps = {d["ref"]: set(d.get("dependsOn", [])) for d in doc["dependencies"]}
    assert all(DEB in deps[i["bom-ref"]] for i in images)


def test_trivy_backend_converted_from_1_7(image: Path) -> None:
    code, out, err = run("sbom", f"oci:{image}", "--backend", "trivy", "--spec-version", "1.5")
    assert code == 0, err
    assert valid(out, SchemaVersion.V1_5)
    doc = json.loads(out)
    assert doc["specVersion"] == "1.5"
    assert PYPI in purls(doc)


def test_xml_output_validates(image: Path) -> None:
    code, out, err = run("sbom", f"oci:{image}", "--format", "cyclonedx-xml")
    assert code == 0, err
    assert valid(out, fmt=OutputFormat.XML)


def test_spdx_passthrough(image: Path) -> None:
    code, out, err = run("sbom", f"oci:{image}", "--format", "spdx-json")
    assert code == 0, err
    assert json.loads(out)["spdxVersion"].startswith("SPDX-")


def test_clearance_properties(image: Path, tmp_path: Path) -> None:
    table = tmp_path / "clearance.json"
    table.write_text(json.dumps({PYPI: "approved", DEB: "rejected"}))
    code, out, err = run("sbom", f"oci:{image}", "--clearance", str(table))
    assert code == 0, err
    by_purl = {c.get("purl"): c for c in json.loads(out)["components"]}
    props = {
        p["name"]: p["value"]
        for p in by_purl[PYPI]["properties"]
        if p["name"].startswith("stockade")
    }
    assert props == {"stockade:clearance": "approved"}
    assert {"name": "stockade:clearance", "value": "rejected"} in by_purl[DEB]["properties"]


def test_bad_clearance_file(image: Path, tmp_path: Path) -> None:
    table = tmp_path / "clearance.json"
    table.write_text(json.dumps({PYPI: "maybe"}))
    code, _, err = run("sbom", f"oci:{image}", "--clearance", str(table))
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert str(table) in err
    assert "maybe" in err


def test_encrypted_image_refused_then_scanned_with_key(image: Path, tmp_path: Path) -> None:
    key: KeyFiles = make_key(tmp_path, "k", "ec")
    enc = tmp_path / "enc"
    code, _, err = run(
        "image",
        "encrypt",
        "-q",
        f"oci:{image}",
        f"oci:{enc}",
        "--encryption-key",
        f"jwe:{key.public}",
    )
    assert code == 0, err
    code, _, err = run("sbom", f"oci:{enc}")
    assert code == 2
    assert "encrypted" in err
    assert "--decryption-key" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = run("sbom", f"oci:{enc}", "--decryption-key", str(key.private))
    assert code == 0, err
    assert {DEB, PYPI} <= purls(json.loads(out))


def test_rootfs_directory(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    meta = root / "usr/lib/python3/dist-packages/idna-3.7.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: idna\nVersion: 3.7\n")
    (meta / "RECORD").write_text("idna/__init__.py,,\n")
    code, out, err = run("sbom", str(root))
    assert code == 0, err
    assert "pkg:pypi/idna@3.7" in purls(json.loads(out))


def test_manifests_add_referenced_images(image: Path, tmp_path: Path) -> None:
    rendered = tmp_path / "chart.yaml"
    rendered.write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n"
        "spec:\n  template:\n    spec:\n"
        "      containers:\n      - name: a\n        image: registry.local/stockade/broker:0.1.0\n"
    )
    code, out, err = run("sbom", f"oci:{image}", "--manifests", str(rendered))
    assert code == 0, err
    names = [c["name"] for c in json.loads(out)["components"] if c["type"] == "container"]
    assert "registry.local/stockade/broker:0.1.0" in names
