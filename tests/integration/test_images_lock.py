"""Stockade's own supply chain: the hashed lock files and the install step that uses them.

The tamper test runs only the locked install step (``pip install --require-hashes -r LOCK``)
into a fresh virtual environment, from pip's cache and the configured index, with one
package's hashes altered in a copy of the lock: pip must refuse, and install nothing.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "requirements" / "runtime.lock"
DEV = ROOT / "requirements" / "dev.lock"
BUILD = ROOT / "requirements" / "build.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.M)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, str]:
    return {_norm(name): version for name, version in _PIN.findall(lock.read_text())}


def requirement_names(specs: list[str]) -> set[str]:
    return {_norm(re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0]) for spec in specs}


def test_every_pin_has_hashes() -> None:
    for lock in (RUNTIME, DEV, BUILD):
        blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text())
        for block in blocks:
            if _PIN.match(block):
                assert "--hash=sha256:" in block, (
                    f"{lock.name}: {block.splitlines()[0]} has no hash"
                )


def test_locks_cover_pyproject() -> None:
    """A dependency added to pyproject.toml without `make lock` fails here."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, dev = pins(RUNTIME), pins(DEV)
    missing = requirement_names(project["dependencies"]) - set(runtime)
    assert not missing, f"not in runtime.lock (run make lock): {sorted(missing)}"
    missing_dev = requirement_names(project["optional-dependencies"]["dev"]) - set(dev)
    assert not missing_dev, f"not in dev.lock (run make lock): {sorted(missing_dev)}"
    differ = {n: (v, dev.get(n)) for n, v in runtime.items() if dev.get(n) != v}
    assert not differ, f"dev.lock pins runtime packages differently: {differ}"
    assert "celine-regorus" in runtime  # the third-party regorus build, pinned by hash


def _tamper(lock: Path, package: str, out: Path) -> None:
    """Flip the last hex digit of every hash of ``package`` in a copy of ``lock``."""
    text = lock.read_text()
    start = re.search(rf"^{re.escape(package)}==", text, re.M)
    assert start is not None, f"{package} not in {lock.name}"
    end = re.search(r"\n(?=\S)", text[start.end() :])
    stop = start.end() + (end.start() + 1 if end else len(text) - start.end())
    block = text[start.start() : stop]

    def flip(m: re.Match[str]) -> str:
        digest = m.group(1)
        last = "0" if digest[-1] != "0" else "1"
        return f"--hash=sha256:{digest[:-1]}{last}"

    changed = re.sub(r"--hash=sha256:([0-9a-f]{64})", flip, block)
    assert changed != block
    out.write_text(text[: start.start()] + changed + text[stop:])


@pytest.mark.slow
def test_tampered_lock_fails_the_locked_install(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    lock = tmp_path / "runtime.lock"
    _tamper(RUNTIME, "jwcrypto", lock)
    proc = subprocess.run(
        [
            sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
            "--require-hashes", "--only-binary", ":all:", "-r", str(lock),
        ],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stdout
    assert "DO NOT MATCH THE HASHES" in proc.stderr, proc.stderr[-2000:]
    assert "jwcrypto" in proc.stderr
    site = list((venv / "lib").glob("python3*/site-packages"))
    installed = [p.name for s in site for p in s.iterdir() if p.name.endswith(".dist-info")]
    assert installed == [], f"pip installed packages before refusing: {installed}"


def test_lock_copy_tampering_is_detected_textually(tmp_path: Path) -> None:
    """The tamper helper changes hashes of exactly one package (so the test above is precise)."""
    lock = tmp_path / "runtime.lock"
    _tamper(RUNTIME, "jwcrypto", lock)
    before, after = pins(RUNTIME), pins(lock)
    assert before == after
    old = set(re.findall(r"sha256:[0-9a-f]{64}", RUNTIME.read_text()))
    new = set(re.findall(r"sha256:[0-9a-f]{64}", lock.read_text()))
    assert 0 < len(old - new) <= 8


def test_runtime_set_excludes_dev_tools() -> None:
    """`make up` installs runtime.lock only: no test, lint or lock tooling reaches production."""
    runtime = pins(RUNTIME)
    for tool in (
        "pytest",
        "mypy",
        "ruff",
        "import-linter",
        "pip-tools",
        "cyclonedx-bom",
        "schemathesis",
    ):
        assert tool not in runtime, f"{tool} is in runtime.lock"
        assert tool in pins(DEV)
