"""A loopback HTTPS git server: Basic auth in front of the real ``git http-backend`` (CGI)."""

from __future__ import annotations

import base64
import hmac
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from stockade.tls import DevCA


def make_repo(root: Path, name: str, files: dict[str, str]) -> Path:
    """A bare repository ``root/name`` with one commit holding ``files``."""
    work = root / f"{name}-work"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(root),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }

    def git(*args: str, cwd: Path = root) -> None:
        subprocess.run(
            ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, timeout=60
        )

    git("init", "-q", "-b", "main", str(work))
    for rel, text in files.items():
        (work / rel).write_text(text)
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "initial", cwd=work)
    bare = root / name
    git("clone", "-q", "--bare", str(work), str(bare))
    return bare


class GitHttpServer:
    """Serves the bare repositories under ``root`` at ``https://127.0.0.1:<port>/<repo>``.

    Every request needs ``Authorization: Basic`` with ``username``/``password``; a request
    without it gets 401 with ``WWW-Authenticate`` (so git asks its credential helper). The
    Authorization headers seen are recorded (to check what git sent).
    """

    def __init__(self, root: Path, ca: DevCA, *, username: str, password: str) -> None:
        self.root = root
        self.expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.attempts: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer.handle(self)

            def do_POST(self) -> None:
                outer.handle(self)

            def log_message(self, *args: Any) -> None:
                return

        issued = ca.issue("gitserver")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(issued.cert, issued.key)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _body(self, request: BaseHTTPRequestHandler) -> bytes:
        if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            for _ in range(100_000):
                size = int(request.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    request.rfile.readline()
                    break
                chunks.append(request.rfile.read(size))
                request.rfile.readline()
            return b"".join(chunks)
        return request.rfile.read(int(request.headers.get("Content-Length", "0") or 0))

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = self._body(request)
        given = request.headers.get("Authorization", "")
        self.attempts.append(given)
        if not hmac.compare_digest(given.encode(), self.expected.encode()):
            request.send_response(401)
            request.send_header("WWW-Authenticate", 'Basic realm="git"')
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        url = urlsplit(request.path)
        env = {
            "PATH": "/usr/bin:/bin",
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": request.command,
            "PATH_INFO": url.path,
            "QUERY_STRING": url.query,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "git",
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": request.headers.get("Content-Encoding", ""),
        }
        result = subprocess.run(
            ["git", "http-backend"],
            input=body,
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        head, _, payload = result.stdout.partition(b"\r\n\r\n")
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        request.send_response(status)
        for name, value in headers:
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)
