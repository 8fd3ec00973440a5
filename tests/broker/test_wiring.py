"""workspace_config: git, Docker and kubectl configured to ask the broker; idempotent, no secret."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from stockade.broker import KubeCluster, workspace_config
from stockade.broker._wiring import MAX_CONFIG_BYTES
from stockade.core.errors import InvalidInput
from stockade.helpers import HELPER_NAMES, static_helper

API = "https://127.0.0.1:8443"


def git_helpers(home: Path) -> list[str]:
    out = subprocess.run(
        ["git", "config", "--global", "--get-all", "credential.helper"],
        capture_output=True,
        text=True,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin", "GIT_CONFIG_NOSYSTEM": "1"},
        check=True,
        timeout=30,
    ).stdout
    return out.split("\n")[:-1]


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    return path


def test_fresh_home(tmp_path: Path, ca: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    workspace_config(home, API, ca, clusters={"prod": KubeCluster("https://10.0.0.1:6443", ca)})
    assert git_helpers(home) == ["", "stockade"]
    assert json.loads((home / ".docker" / "config.json").read_text()) == {"credsStore": "stockade"}
    kube = json.loads((home / ".kube" / "config").read_text())
    assert kube["current-context"] == "prod"
    assert kube["clusters"] == [
        {
            "name": "prod",
            "cluster": {
                "server": "https://10.0.0.1:6443",
                "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode(),
            },
        }
    ]
    assert kube["contexts"] == [
        {"name": "prod", "context": {"cluster": "prod", "user": "stockade@prod"}}
    ]
    exec_ = kube["users"][0]["user"]["exec"]
    assert exec_ == {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": "kubectl-credential-stockade",
        "args": ["--cluster", "prod"],
        "interactiveMode": "Never",
        "provideClusterInfo": True,
    }
    assert (home / ".stockade" / "ca.pem").read_text() == ca.read_text()
    assert (home / ".docker" / "config.json").stat().st_mode & 0o777 == 0o600
    assert API not in "".join(p.read_text() for p in home.rglob("*") if p.is_file())


def test_existing_config_kept_and_idempotent(tmp_path: Path, ca: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n\tname = Alice\n[credential]\n\thelper = store\n")
    (home / ".docker").mkdir()
    (home / ".docker" / "config.json").write_text(
        json.dumps({"credsStore": "desktop", "proxies": {"a": 1}})
    )
    (home / ".kube").mkdir()
    (home / ".kube" / "config").write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "clusters": [{"name": "dev", "cluster": {"server": "https://d"}}],
                "current-context": "dev",
            }
        )
    )
    for _ in range(3):
        workspace_config(home, API, ca, clusters={"prod": KubeCluster("https://p")})
    assert git_helpers(home) == ["store", "", "stockade"]
    text = (home / ".gitconfig").read_text()
    assert text.count("helper = stockade") == 1
    assert "name = Alice" in text
    docker = json.loads((home / ".docker" / "config.json").read_text())
    assert docker == {"credsStore": "stockade", "proxies": {"a": 1}}
    kube = json.loads((home / ".kube" / "config").read_text())
    assert [c["name"] for c in kube["clusters"]] == ["dev", "prod"]
    assert [u["name"] for u in kube["users"]] == ["stockade@prod"]
    assert kube["current-context"] == "dev"


def test_non_json_kubeconfig_left_alone(tmp_path: Path) -> None:
    home = tmp_path
    (home / ".kube").mkdir()
    (home / ".kube" / "config").write_text("apiVersion: v1\nkind: Config\n")
    workspace_config(home, API, None, clusters={"prod": KubeCluster("https://p")})
    assert (home / ".kube" / "config").read_text() == "apiVersion: v1\nkind: Config\n"
    assert not (home / ".stockade").exists()


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="https"):
        workspace_config(tmp_path, "http://127.0.0.1:8443", None)
    with pytest.raises(InvalidInput, match="not a directory"):
        workspace_config(tmp_path / "missing", API, None)


def test_helper_python_writes_wrappers(tmp_path: Path, ca: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    workspace_config(home, API, ca, helper_python=python, clusters={"c": KubeCluster("https://k")})
    bin_dir = home / ".stockade" / "bin"
    assert sorted(p.name for p in bin_dir.iterdir()) == [
        "docker-credential-stockade",
        "git-credential-stockade",
        "kubectl-credential-stockade",
        "stockade_credential_helpers.py",
    ]
    assert git_helpers(home) == ["", str(bin_dir / "git-credential-stockade")]
    kube = json.loads((home / ".kube" / "config").read_text())
    assert kube["users"][0]["user"]["exec"]["command"] == str(
        bin_dir / "kubectl-credential-stockade"
    )
    store = subprocess.run(
        [str(bin_dir / "git-credential-stockade"), "store"],
        input=b"protocol=https\nhost=h\npassword=p\n",
        env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert store.returncode == 0
    docker = subprocess.run(
        [str(bin_dir / "docker-credential-stockade"), "get"],
        input=b"",
        env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert docker.stdout == b"no credentials server URL\n"


def test_helper_python_must_be_absolute(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="absolute interpreter path"):
        workspace_config(tmp_path, API, None, helper_python="python3")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Files outside the home that a hostile home points symlinks at."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "shadow").write_text("root:secret-hash:19000::::::\n")
    (path / "config.json").write_text('{"auths": {"r": {"auth": "c2VjcmV0"}}}')
    return path


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_symlinks_in_the_home_are_never_followed(tmp_path: Path, ca: Path, outside: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").symlink_to(outside / "shadow")
    (home / ".docker").symlink_to(outside)
    (home / ".kube").mkdir()
    (home / ".kube" / "config").symlink_to(outside / "config.json")
    (home / ".stockade").symlink_to(outside)
    before = snapshot(outside)
    workspace_config(
        home, API, ca, clusters={"c": KubeCluster("https://k")}, helper_python="/usr/bin/python3"
    )
    assert snapshot(outside) == before
    assert sorted(p.name for p in outside.iterdir()) == ["config.json", "shadow"]
    # every symlinked entry is left alone: nothing read through it, nothing written through it
    assert (home / ".gitconfig").is_symlink()
    assert (home / ".docker").is_symlink()
    assert (home / ".stockade").is_symlink()
    assert (home / ".kube" / "config").is_symlink()


def test_wrong_types_and_huge_files_are_left_alone(tmp_path: Path, ca: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    os.mkfifo(home / ".gitconfig")
    (home / ".docker").write_text("a file, not a directory")
    (home / ".kube").mkdir()
    (home / ".kube" / "config").write_text("x" * (MAX_CONFIG_BYTES + 1))
    (home / ".stockade").mkdir()
    (home / ".stockade" / "ca.pem").mkdir()
    workspace_config(home, API, ca, clusters={"c": KubeCluster("https://k")})
    assert stat.S_ISFIFO((home / ".gitconfig").stat().st_mode)
    assert (home / ".docker").read_text() == "a file, not a directory"
    assert len((home / ".kube" / "config").read_text()) == MAX_CONFIG_BYTES + 1
    assert (home / ".stockade" / "ca.pem").is_dir()
    assert [p.name for p in home.rglob("*.tmp")] == []


def test_home_itself_must_not_be_a_symlink(tmp_path: Path, outside: Path) -> None:
    link = tmp_path / "link-home"
    link.symlink_to(outside)
    with pytest.raises(InvalidInput, match="not a directory"):
        workspace_config(link, API, None)


def test_helper_binary_installs_the_static_helper(tmp_path: Path, ca: Path) -> None:
    binary = static_helper()
    assert binary is not None, "the static helper is not built: run make venv (make helpers)"
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = home / ".stockade" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "git-credential-stockade").write_text("#!/bin/sh\necho stale\n")  # replaced
    for _ in range(2):  # idempotent
        workspace_config(home, API, ca, helper_binary=binary)
    assert sorted(p.name for p in bin_dir.iterdir()) == [
        "docker-credential-stockade",
        "git-credential-stockade",
        "kubectl-credential-stockade",
        "stockade-credential-helper",
    ]
    for name in HELPER_NAMES:
        assert os.readlink(bin_dir / name) == "stockade-credential-helper"
    assert (bin_dir / "stockade-credential-helper").read_bytes() == binary.read_bytes()
    assert git_helpers(home) == ["", str(bin_dir / "git-credential-stockade")]
    version = subprocess.run(
        [str(bin_dir / "docker-credential-stockade"), "version"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert version.stdout == b"docker-credential-stockade (Stockade)\n"


def test_unreadable_cluster_ca_skips_only_the_kubeconfig(tmp_path: Path, ca: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("hello")
    clusters = {"prod": KubeCluster("https://10.0.0.1:6443", bad)}
    workspace_config(home, API, ca, clusters=clusters)
    assert not (home / ".kube" / "config").exists()  # no kubeconfig trusting the wrong thing
    assert git_helpers(home) == ["", "stockade"]  # the rest of the wiring still happened
    missing = {"prod": KubeCluster("https://10.0.0.1:6443", tmp_path / "absent.pem")}
    workspace_config(home, API, ca, clusters=missing)
    assert not (home / ".kube" / "config").exists()
