"""Credential helpers for git, Docker and kubectl: console scripts that import the standard library
only (``json``, ``os``, ``socket``, ``ssl``), so they start fast.

Each helper asks the broker and prints what its caller's protocol wants; nothing is ever written
to disk. These are the fallback for the static helper (:func:`stockade.helpers.static_helper`),
with the same behaviour, messages and exit codes.

Environment:

``STOCKADE_CREDENTIAL_SOCKET``
    The broker's unix socket (absolute path). When set, plain HTTP/1.1 goes over it and nothing
    else below is needed: a per-session socket identifies the session by itself. The token, when
    set, is still sent (the broker's shared socket needs it).
``STOCKADE_TOKEN``
    The session JWT, for the TLS route (a sandbox session with a per-session socket needs none
    and gets none).
``STOCKADE_API``
    The broker's base URL, ``https://host:port`` (the gateway sets it). Plain ``http`` is refused:
    the token never travels in the clear.
``STOCKADE_CA``
    PEM file of the CA that signed the broker's certificate. Unset: ``$HOME/.stockade/ca.pem`` when
    that file exists (:func:`stockade.broker.workspace_config` writes it), else the system store.

Run as a file (``python3 helpers.py git get``) it needs no installed Stockade at all.

Exit status: 0 on success; 1 with one line on stderr when the token is rejected, policy denies,
the backend is down, or the input is malformed. ``docker-credential-stockade`` also prints its
error message on stdout, where Docker's client looks for it, and prints the standard
``credentials not found in native keychain`` for a miss.
"""

from __future__ import annotations

import json
import os
import sys

TYPE_CHECKING = False  # importing typing would cost the helpers milliseconds at every call
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import IO, Any, NoReturn

__all__ = ["docker_main", "git_main", "kubectl_main"]

ENV_SOCKET = "STOCKADE_CREDENTIAL_SOCKET"
ENV_TOKEN = "STOCKADE_TOKEN"  # noqa: S105 - a variable name
ENV_API = "STOCKADE_API"
ENV_CA = "STOCKADE_CA"
#: The CA file looked for under ``$HOME`` when ``STOCKADE_CA`` is unset.
HOME_CA = os.path.join(".stockade", "ca.pem")
#: Largest helper input read from stdin (git attributes, a Docker server URL).
MAX_INPUT_BYTES = 64 * 1024
#: Seconds to wait for the broker.
TIMEOUT = 10.0
#: Largest broker response read.
MAX_RESPONSE_BYTES = 256 * 1024

DOCKER_NOT_FOUND = "credentials not found in native keychain"
DOCKER_MISSING_URL = "no credentials server URL"
#: Docker Hub's server URL as the Docker CLI stores it, and the hosts meaning the same registry.
DOCKER_HUB = "https://index.docker.io/v1/"
DOCKER_HUB_HOSTS = frozenset({"index.docker.io", "docker.io", "registry-1.docker.io"})
DOCKER_MANAGED = "credentials are managed by Stockade; {action} is not supported"
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")


class HelperError(Exception):
    """A failure to report as one line and exit 1."""


class Missing(Exception):
    """The broker has no credential for this target (HTTP 404)."""


def _clean(text: str, limit: int = 300) -> str:
    """One printable line from broker- or peer-supplied text."""
    line = "".join(ch if ch.isprintable() else " " for ch in text[:limit])
    return line.strip() or "no detail"


def _ca_file() -> str | None:
    explicit = os.environ.get(ENV_CA)
    if explicit:
        if not os.path.isfile(explicit):
            raise HelperError(f"{ENV_CA}={explicit} is not a file")
        return explicit
    home = os.environ.get("HOME")
    if home:
        candidate = os.path.join(home, HOME_CA)
        if os.path.isfile(candidate):
            return candidate
    return None


def _error_message(status: int, body: bytes) -> str:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    reason = _clean(str(doc.get("reason") or doc.get("message") or ""))
    if status == 401:
        return f"session token rejected ({reason}); reconnect to get a fresh session"
    if status == 403:
        return f"denied by policy ({reason})"
    if status == 503:
        return f"secrets backend unavailable ({reason})"
    if status in (400, 413, 422):
        return f"request refused as malformed ({reason})"
    return f"broker answered HTTP {status} ({reason})"


def split_api(api: str) -> tuple[str, int, str]:
    """``(host, port, path prefix)`` of an ``https://host[:port][/prefix]`` URL; IPv6 hosts in
    brackets. Raises :class:`HelperError` for anything else (plain ``http`` included)."""
    scheme, sep, rest = api.partition("://")
    authority, _, prefix = rest.partition("/")
    if scheme.lower() != "https" or not sep or "@" in authority:
        raise HelperError(f"{ENV_API} must be an https:// URL, got {_clean(api, 100)!r}")
    if authority.startswith("["):
        host, _, tail = authority[1:].partition("]")
        port_text = tail.removeprefix(":") if tail.startswith(":") else tail
    else:
        host, _, port_text = authority.partition(":")
    if not host or (port_text and not port_text.isdigit()) or int(port_text or 443) > 65535:
        raise HelperError(f"{ENV_API} must be an https:// URL, got {_clean(api, 100)!r}")
    return host, int(port_text or 443), ("/" + prefix).rstrip("/")


def _read_response(stream: IO[bytes]) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response (Content-Length, chunked or until close)."""
    status_line = stream.readline(1024)
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise OSError("not an HTTP response")
    headers: dict[bytes, bytes] = {}
    for _ in range(100):
        line = stream.readline(8192)
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    else:
        raise OSError("too many response headers")
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        chunks: list[bytes] = []
        total = 0
        for _ in range(10_000):
            size = int(stream.readline(64).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            total += size
            if total > MAX_RESPONSE_BYTES:
                raise HelperError("broker response too large")
            chunks.append(stream.read(size))
            stream.readline(8)
        return int(parts[1]), b"".join(chunks)
    length = headers.get(b"content-length")
    if length is not None and not length.isdigit():
        raise OSError("bad Content-Length")
    if length is not None:
        if int(length) > MAX_RESPONSE_BYTES:
            raise HelperError("broker response too large")
        return int(parts[1]), stream.read(int(length))
    data = stream.read(MAX_RESPONSE_BYTES + 1)
    if len(data) > MAX_RESPONSE_BYTES:
        raise HelperError("broker response too large")
    return int(parts[1]), data


def request(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` as JSON to the broker's ``path``: over ``STOCKADE_CREDENTIAL_SOCKET`` when
    set, else over TLS to ``STOCKADE_API`` with the session token.

    Returns the decoded JSON object. Raises :class:`Missing` on 404 and :class:`HelperError`
    with a one-line message for everything else that is not a 200. HTTP/1.1 is spoken directly
    over the socket: ``http.client`` would cost the helper its ``email`` imports.
    """
    token = os.environ.get(ENV_TOKEN, "").strip()
    if any(ch in token for ch in "\r\n\0 "):
        raise HelperError(f"{ENV_TOKEN} contains characters a token cannot have")
    payload = json.dumps(body).encode()
    socket_path = os.environ.get(ENV_SOCKET, "")
    if socket_path:
        status, data = _over_unix(socket_path, path, payload, token)
    else:
        status, data = _over_tls(path, payload, token)
    if status == 404:
        raise Missing()
    if status != 200:
        raise HelperError(_error_message(status, data))
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise HelperError("broker answered with malformed JSON") from exc
    if not isinstance(doc, dict):
        raise HelperError("broker answered with malformed JSON")
    return doc


def _head(path: str, authority: str, token: str, length: int) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {authority}\r\n{auth}"
        f"Content-Type: application/json\r\nAccept: application/json\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


def _over_unix(socket_path: str, path: str, payload: bytes, token: str) -> tuple[int, bytes]:
    if not socket_path.startswith("/"):
        raise HelperError(f"{ENV_SOCKET} must be an absolute path")
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.settimeout(TIMEOUT)
            raw.connect(socket_path)
            with raw.makefile("rb") as stream:
                raw.sendall(_head(path, "stockade", token, len(payload)) + payload)
                return _read_response(stream)
    except (OSError, ValueError) as exc:
        raise HelperError(
            f"cannot reach the broker at {_clean(socket_path, 200)}: "
            f"{_clean(getattr(exc, 'strerror', None) or str(exc) or type(exc).__name__, 120)}"
        ) from exc


def _over_tls(path: str, payload: bytes, token: str) -> tuple[int, bytes]:
    api = os.environ.get(ENV_API, "").strip()
    if not token:
        raise HelperError(f"{ENV_TOKEN} is not set; run inside a Stockade session")
    if not api:
        raise HelperError(f"{ENV_API} is not set; run inside a Stockade session")
    host, port, prefix = split_api(api)
    import socket
    import ssl

    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        context = ssl.create_default_context(cafile=_ca_file())
        with (
            socket.create_connection((host, port), timeout=TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
            tls.makefile("rb") as stream,
        ):
            tls.sendall(_head(prefix + path, authority, token, len(payload)) + payload)
            return _read_response(stream)
    except ssl.SSLError as exc:
        raise HelperError(
            f"TLS to the broker failed ({_clean(str(exc), 120)}); set {ENV_CA} to its CA file"
        ) from exc
    except (OSError, ValueError) as exc:
        raise HelperError(
            f"cannot reach the broker at {authority}: {_clean(str(exc) or type(exc).__name__, 120)}"
        ) from exc


def _read_input(stream: IO[bytes]) -> str:
    data = stream.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise HelperError(f"input larger than {MAX_INPUT_BYTES} bytes")
    try:
        return str(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise HelperError("input is not UTF-8") from exc


def _fail(prog: str, message: str, *, stdout: IO[str] | None = None) -> NoReturn:
    if stdout is not None:
        stdout.write(message + "\n")
        stdout.flush()
    sys.stderr.write(f"{prog}: {message}\n")
    sys.stderr.flush()
    raise SystemExit(1)


# -- git -------------------------------------------------------------------------------------------


def parse_git_attributes(text: str) -> dict[str, str]:
    """git's credential input: ``key=value`` lines up to a blank line or the end.

    Multi-valued keys (``capability[]``, ``wwwauth[]``) keep their last value. Raises
    :class:`HelperError` for a line without ``=`` or with a NUL byte.
    """
    attrs: dict[str, str] = {}
    for line in text.split("\n"):
        line = line.removesuffix("\r")
        if not line:
            break
        key, sep, value = line.partition("=")
        if not sep or not key or "\0" in line:
            raise HelperError(f"malformed credential line {_clean(line, 60)!r}")
        attrs[key] = value
    if "url" in attrs and "host" not in attrs:
        from urllib.parse import urlsplit

        url = urlsplit(attrs["url"])
        attrs.setdefault("protocol", url.scheme)
        if url.netloc:
            attrs["host"] = url.netloc.rpartition("@")[2]
        if url.path.strip("/"):
            attrs.setdefault("path", url.path.lstrip("/"))
    return attrs


def git_credential(action: str, stdin: IO[bytes], stdout: IO[str]) -> None:
    """One git credential helper call (``get``, ``store``, ``erase``)."""
    text = _read_input(stdin)
    if action in ("store", "erase"):
        return  # Stockade keeps nothing: a successful no-op, per git's helper protocol.
    if action != "get":
        return  # git ignores unknown actions; so do helpers (gitcredentials(7)).
    attrs = parse_git_attributes(text)
    protocol = attrs.get("protocol", "")
    host = attrs.get("host", "")
    if protocol not in ("http", "https") or not host:
        return  # not ours: print nothing and let git try its next helper or prompt
    body: dict[str, Any] = {"protocol": protocol, "host": host}
    if attrs.get("path"):
        body["path"] = attrs["path"]
    if attrs.get("username"):
        body["username"] = attrs["username"]
    try:
        doc = request("/v1/credentials/git", body)
    except Missing:
        return
    username = str(doc.get("username", ""))
    password = str(doc.get("password", ""))
    if "\n" in username + password or "\0" in username + password:
        raise HelperError("broker returned a credential git cannot represent")
    stdout.write(f"protocol={protocol}\nhost={host}\n")
    if username:
        stdout.write(f"username={username}\n")
    stdout.write(f"password={password}\n")
    expiry = doc.get("password_expiry_utc")
    if isinstance(expiry, int):
        stdout.write(f"password_expiry_utc={expiry}\n")
    stdout.flush()


def git_main(argv: Sequence[str] | None = None) -> None:
    """``git-credential-stockade <get|store|erase>``."""
    args = list(sys.argv[1:] if argv is None else argv)
    prog = "git-credential-stockade"
    if len(args) != 1:
        _fail(prog, "usage: git-credential-stockade <get|store|erase>")
    try:
        git_credential(args[0], sys.stdin.buffer, sys.stdout)
    except HelperError as exc:
        # quit=1 stops git from prompting for a password the user should not type here.
        sys.stdout.write("quit=1\n")
        _fail(prog, str(exc))


# -- docker ----------------------------------------------------------------------------------------


def docker_credential(action: str, stdin: IO[bytes], stdout: IO[str]) -> None:
    """One docker-credential-helpers call (``get``, ``list``, ``store``, ``erase``, ``version``)."""
    if action == "version":
        stdout.write("docker-credential-stockade (Stockade)\n")
        return
    if action in ("store", "erase"):
        _read_input(stdin)
        raise HelperError(DOCKER_MANAGED.format(action=action))
    if action == "list":
        doc = request("/v1/credentials/docker/list", {})
        listed = doc.get("credentials", {})
        if not isinstance(listed, dict):
            raise HelperError("broker answered with malformed JSON")
        servers = {
            (DOCKER_HUB if k in DOCKER_HUB_HOSTS else str(k)): str(v) for k, v in listed.items()
        }
        stdout.write(json.dumps(servers) + "\n")
        return
    if action != "get":
        raise HelperError(f"Unknown credential action `{_clean(action, 40)}`")
    server_url = _read_input(stdin).strip()
    if not server_url:
        raise HelperError(DOCKER_MISSING_URL)
    if len(server_url) > 2048 or any(not ch.isprintable() for ch in server_url):
        raise HelperError("malformed credentials server URL")
    doc = request("/v1/credentials/docker", {"server_url": server_url})
    stdout.write(
        json.dumps(
            {
                "ServerURL": server_url,
                "Username": str(doc.get("username", "")),
                "Secret": str(doc.get("secret", "")),
            }
        )
        + "\n"
    )


def docker_main(argv: Sequence[str] | None = None) -> None:
    """``docker-credential-stockade <get|list|store|erase|version>``, stdin as Docker sends it."""
    args = list(sys.argv[1:] if argv is None else argv)
    prog = "docker-credential-stockade"
    if len(args) != 1:
        _fail(
            prog,
            "Usage: docker-credential-stockade <store|get|erase|list|version>",
            stdout=sys.stdout,
        )
    try:
        docker_credential(args[0], sys.stdin.buffer, sys.stdout)
    except Missing:
        sys.stdout.write(DOCKER_NOT_FOUND + "\n")
        raise SystemExit(1) from None
    except HelperError as exc:
        _fail(prog, str(exc), stdout=sys.stdout)


# -- kubectl ---------------------------------------------------------------------------------------


def _exec_info(environ: dict[str, str]) -> dict[str, Any]:
    raw = environ.get("KUBERNETES_EXEC_INFO", "")
    if not raw:
        return {}
    if len(raw) > MAX_INPUT_BYTES:
        raise HelperError("KUBERNETES_EXEC_INFO is too large")
    try:
        info = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise HelperError("KUBERNETES_EXEC_INFO is not JSON") from exc
    if not isinstance(info, dict):
        raise HelperError("KUBERNETES_EXEC_INFO is not a JSON object")
    return info


def kubectl_cluster(args: Sequence[str], info: dict[str, Any]) -> tuple[str, str | None]:
    """The cluster name and API server URL of one exec call.

    The name comes from ``--cluster NAME``, else the cluster's exec extension
    (``spec.cluster.config.cluster``), else the API server's host. Raises :class:`HelperError`.
    """
    name = ""
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--cluster" and rest:
            name = rest.pop(0)
        elif arg.startswith("--cluster="):
            name = arg.split("=", 1)[1]
        else:
            raise HelperError(f"unknown argument {_clean(arg, 60)!r}; usage: [--cluster NAME]")
    spec = info.get("spec") if isinstance(info.get("spec"), dict) else {}
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    server: str | None = None
    if isinstance(cluster, dict):
        server = cluster.get("server") if isinstance(cluster.get("server"), str) else None
        config = cluster.get("config")
        if not name and isinstance(config, dict) and isinstance(config.get("cluster"), str):
            name = config["cluster"]
    if not name and server:
        from urllib.parse import urlsplit

        name = urlsplit(server).hostname or ""
    if not name:
        raise HelperError("no cluster named: pass --cluster NAME or set provideClusterInfo: true")
    return name, server


def kubectl_credential(args: Sequence[str], environ: dict[str, str], stdout: IO[str]) -> None:
    """Print an ExecCredential with the cluster token and its expiry."""
    info = _exec_info(environ)
    api_version = info.get("apiVersion") or EXEC_API_VERSIONS[0]
    if api_version not in EXEC_API_VERSIONS:
        raise HelperError(f"unsupported ExecCredential apiVersion {_clean(str(api_version), 80)}")
    cluster, server = kubectl_cluster(args, info)
    body: dict[str, Any] = {"cluster": cluster}
    if server:
        body["server"] = server
    try:
        doc = request("/v1/credentials/kubernetes", body)
    except Missing:
        raise HelperError(f"no Kubernetes credential for cluster {_clean(cluster, 80)!r}") from None
    token = doc.get("token")
    expires = doc.get("expiration_timestamp")
    if not isinstance(token, str) or not token or not isinstance(expires, str):
        raise HelperError("broker answered with malformed JSON")
    credential = {
        "apiVersion": api_version,
        "kind": "ExecCredential",
        "status": {"token": token, "expirationTimestamp": expires},
    }
    stdout.write(json.dumps(credential) + "\n")


def kubectl_main(argv: Sequence[str] | None = None) -> None:
    """``kubectl-credential-stockade [--cluster NAME]``: a client-go exec credential plugin."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        kubectl_credential(args, dict(os.environ), sys.stdout)
    except HelperError as exc:
        _fail("kubectl-credential-stockade", str(exc))


if __name__ == "__main__":
    # ``python3 helpers.py {git|docker|kubectl} ARGS``: this file needs only the standard library,
    # so a workspace image without Stockade installed can carry it alone.
    _MAINS = {"git": git_main, "docker": docker_main, "kubectl": kubectl_main}
    if len(sys.argv) < 2 or sys.argv[1] not in _MAINS:
        sys.stderr.write("usage: helpers.py {git|docker|kubectl} ARGS...\n")
        raise SystemExit(2)
    _MAINS[sys.argv[1]](sys.argv[2:])
