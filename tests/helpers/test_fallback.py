"""The helpers without a broker: parsing, protocol errors, nothing written, fast import."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from stockade.helpers import _fallback as helpers
from stockade.helpers._fallback import (
    HelperError,
    git_credential,
    kubectl_cluster,
    parse_git_attributes,
)

BIN = Path(sys.executable).parent


def run(cmd: list[str], stdin: bytes = b"", **env: str) -> subprocess.CompletedProcess[bytes]:
    base = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": "/nonexistent"}
    base.update(env)
    return subprocess.run(cmd, input=stdin, capture_output=True, env=base, timeout=30, check=False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("protocol=https\nhost=example.com\n\n", {"protocol": "https", "host": "example.com"}),
        (
            "protocol=https\nhost=h:8443\npath=a/b.git\nusername=bob\n",
            {"protocol": "https", "host": "h:8443", "path": "a/b.git", "username": "bob"},
        ),
        ("protocol=https\r\nhost=h\r\n\r\nignored=1\n", {"protocol": "https", "host": "h"}),
        (
            "capability[]=authtype\nprotocol=http\nhost=h\n",
            {"capability[]": "authtype", "protocol": "http", "host": "h"},
        ),
        (
            "url=https://u@git.example.com:444/r.git\n",
            {
                "url": "https://u@git.example.com:444/r.git",
                "protocol": "https",
                "host": "git.example.com:444",
                "path": "r.git",
            },
        ),
        ("", {}),
    ],
)
def test_parse_git_attributes(text: str, expected: dict[str, str]) -> None:
    assert parse_git_attributes(text) == expected


@pytest.mark.parametrize("text", ["protocol https\n", "=x\n", "host=a\0b\n"])
def test_parse_git_attributes_rejects_malformed(text: str) -> None:
    with pytest.raises(HelperError, match="malformed credential line"):
        parse_git_attributes(text)


@pytest.mark.parametrize(
    ("args", "info", "expected"),
    [
        (["--cluster", "prod"], {}, ("prod", None)),
        (["--cluster=prod"], {}, ("prod", None)),
        (
            [],
            {"spec": {"cluster": {"server": "https://10.0.0.1:6443", "config": {"cluster": "c1"}}}},
            ("c1", "https://10.0.0.1:6443"),
        ),
        (
            [],
            {"spec": {"cluster": {"server": "https://k8s.example.com:6443"}}},
            ("k8s.example.com", "https://k8s.example.com:6443"),
        ),
    ],
)
def test_kubectl_cluster(
    args: list[str], info: dict[str, object], expected: tuple[str, str | None]
) -> None:
    assert kubectl_cluster(args, info) == expected


def test_kubectl_cluster_needs_a_name() -> None:
    with pytest.raises(HelperError, match="no cluster named"):
        kubectl_cluster([], {})
    with pytest.raises(HelperError, match="unknown argument"):
        kubectl_cluster(["--bogus"], {})


@pytest.mark.parametrize("action", ["store", "erase", "unknown-action"])
def test_git_store_and_erase_succeed_and_print_nothing(action: str) -> None:
    out = io.StringIO()
    git_credential(action, io.BytesIO(b"protocol=https\nhost=h\nusername=u\npassword=p\n"), out)
    assert out.getvalue() == ""


def test_git_get_for_other_protocols_prints_nothing() -> None:
    out = io.StringIO()
    git_credential("get", io.BytesIO(b"protocol=ssh\nhost=h\n"), out)
    assert out.getvalue() == ""


def test_git_store_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    result = run(
        ["git-credential-stockade", "store"],
        b"protocol=https\nhost=h\nusername=u\npassword=hunter2-secret\n\n",
        HOME=str(home),
    )
    assert result.returncode == 0
    assert result.stdout == result.stderr == b""
    assert list(home.iterdir()) == []


def test_git_oversized_input_is_one_line_error() -> None:
    result = run(["git-credential-stockade", "get"], b"host=" + b"a" * (70 * 1024) + b"\n")
    assert result.returncode == 1
    assert result.stderr.decode().count("\n") == 1
    assert b"input larger than" in result.stderr
    assert result.stdout == b"quit=1\n"


def test_git_without_token_says_so() -> None:
    result = run(["git-credential-stockade", "get"], b"protocol=https\nhost=h\n\n")
    assert result.returncode == 1
    assert (
        result.stderr
        == b"git-credential-stockade: STOCKADE_TOKEN is not set; run inside a Stockade session\n"
    )


def test_plain_http_api_is_refused() -> None:
    result = run(
        ["git-credential-stockade", "get"],
        b"protocol=https\nhost=h\n\n",
        STOCKADE_TOKEN="t",
        STOCKADE_API="http://127.0.0.1:1",
    )
    assert result.returncode == 1
    assert b"must be an https:// URL" in result.stderr


def test_unreachable_broker_is_one_line() -> None:
    result = run(
        ["docker-credential-stockade", "get"],
        b"registry.example.com",
        STOCKADE_TOKEN="t",
        STOCKADE_API="https://127.0.0.1:1",
    )
    assert result.returncode == 1
    assert result.stderr.startswith(b"docker-credential-stockade: cannot reach the broker")
    assert result.stderr.count(b"\n") == 1


@pytest.mark.parametrize("action", ["store", "erase"])
def test_docker_store_and_erase_fail_managed_by_stockade(action: str, tmp_path: Path) -> None:
    stdin = (
        b'{"ServerURL":"r.example.com","Username":"u","Secret":"s3"}'
        if action == "store"
        else b"r.example.com"
    )
    result = run(["docker-credential-stockade", action], stdin, HOME=str(tmp_path))
    assert result.returncode == 1
    assert b"managed by Stockade" in result.stdout
    assert b"managed by Stockade" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_docker_get_without_server_url() -> None:
    result = run(["docker-credential-stockade", "get"], b"\n")
    assert result.returncode == 1
    assert result.stdout == b"no credentials server URL\n"


def test_docker_unknown_action_and_usage() -> None:
    result = run(["docker-credential-stockade", "frobnicate"])
    assert result.returncode == 1
    assert b"Unknown credential action `frobnicate`" in result.stdout
    assert run(["docker-credential-stockade"]).returncode == 1
    assert run(["docker-credential-stockade", "version"]).returncode == 0


def test_kubectl_rejects_unsupported_exec_api_version() -> None:
    info = {"apiVersion": "client.authentication.k8s.io/v9", "kind": "ExecCredential", "spec": {}}
    result = run(
        ["kubectl-credential-stockade", "--cluster", "c"], KUBERNETES_EXEC_INFO=json.dumps(info)
    )
    assert result.returncode == 1
    assert b"unsupported ExecCredential apiVersion" in result.stderr
    assert result.stdout == b""


def test_kubectl_rejects_malformed_exec_info() -> None:
    result = run(["kubectl-credential-stockade"], KUBERNETES_EXEC_INFO="{not json")
    assert result.returncode == 1
    assert result.stderr == b"kubectl-credential-stockade: KUBERNETES_EXEC_INFO is not JSON\n"


def test_ca_from_env_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_CA", "/nonexistent/ca.pem")
    with pytest.raises(HelperError, match=r"STOCKADE_CA=/nonexistent/ca\.pem is not a file"):
        helpers._ca_file()


def test_ca_falls_back_to_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STOCKADE_CA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert helpers._ca_file() is None
    (tmp_path / ".stockade").mkdir()
    (tmp_path / ".stockade" / "ca.pem").write_text("pem")
    assert helpers._ca_file() == str(tmp_path / ".stockade" / "ca.pem")


def test_importing_helpers_stays_in_the_standard_library() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import stockade.helpers"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    heavy = {"fastapi", "uvicorn", "hvac", "pydantic", "httpx", "starlette", "structlog", "typing"}
    assert not (heavy & {name.split(".")[0] for name in imported}), sorted(heavy & imported)
    assert "stockade.broker" not in imported


@pytest.mark.parametrize(
    ("api", "parts"),
    [
        ("https://127.0.0.1:8443", ("127.0.0.1", 8443, "")),
        ("https://broker.example.com", ("broker.example.com", 443, "")),
        ("https://[::1]:9443/stockade/", ("::1", 9443, "/stockade")),
        ("HTTPS://h:1/a/b", ("h", 1, "/a/b")),
    ],
)
def test_split_api(api: str, parts: tuple[str, int, str]) -> None:
    assert helpers.split_api(api) == parts


@pytest.mark.parametrize(
    "api", ["http://h:1", "h:1", "https://", "https://u:p@h", "https://h:x", "https://h:99999"]
)
def test_split_api_rejects(api: str) -> None:
    with pytest.raises(HelperError, match="must be an https:// URL"):
        helpers.split_api(api)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", (200, b"{}")),
        (
            b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'3\r\n{"a\r\n4\r\n":1}\r\n0\r\n\r\n',
            (401, b'{"a":1}'),
        ),
        (b"HTTP/1.0 503 Unavailable\r\n\r\nbody until close", (503, b"body until close")),
    ],
)
def test_read_response(raw: bytes, expected: tuple[int, bytes]) -> None:
    assert helpers._read_response(io.BytesIO(raw)) == expected


def test_read_response_rejects() -> None:
    with pytest.raises(OSError, match="not an HTTP response"):
        helpers._read_response(io.BytesIO(b"SSH-2.0-OpenSSH\r\n"))
    big = f"HTTP/1.1 200 OK\r\nContent-Length: {10**7}\r\n\r\n".encode()
    with pytest.raises(HelperError, match="too large"):
        helpers._read_response(io.BytesIO(big))
