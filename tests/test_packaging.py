"""Packaging metadata: an SPDX license with its text shipped, and no setuptools deprecation."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_spdx_with_the_apache_text() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License")
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    terms = text.split("END OF TERMS AND CONDITIONS")[0]
    assert "9. Accepting Warranty or Additional Liability" in terms
    assert "10." not in terms  # the canonical text has nine sections, nothing added


def test_metadata_builds_without_deprecation_warnings(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-W",
            "error::DeprecationWarning",
            "-c",
            "import sys; from setuptools import build_meta;"
            " print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "deprecated" not in (done.stdout + done.stderr).lower()
    metadata = next(tmp_path.glob("*.dist-info")) / "METADATA"
    text = metadata.read_text()
    assert "License-Expression: Apache-2.0" in text
    assert "License-File: LICENSE" in text


def test_httpcore_finds_sniffio() -> None:
    """httpcore imports sniffio in every lock it sets up and falls back when it is missing; each
    failed import scans sys.path (the broker paid ~0.5 ms of CPU per Vault call for it)."""
    import importlib.util

    assert importlib.util.find_spec("sniffio") is not None
