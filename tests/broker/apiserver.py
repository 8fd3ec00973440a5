"""A loopback HTTPS stand-in for the Kubernetes API's TokenRequest endpoint."""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from stockade.tls import DevCA


class ApiServer:
    """A loopback HTTPS stand-in for the Kubernetes API's TokenRequest endpoint."""

    def __init__(self, ca: DevCA) -> None:
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.status = 201
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                outer.requests.append((self.path, self.headers.get("Authorization", ""), body))
                answer = dict(body)
                answer["status"] = {
                    "token": "minted-token",
                    "expirationTimestamp": "2031-05-06T07:08:09Z",
                }
                data = json.dumps(answer).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return

        issued = ca.issue("apiserver")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(issued.cert, issued.key)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
