"""A hostile HTTP server on loopback for tests: every request gets a 200 whose JSON body never
ends in reasonable size or time.

``mode="huge"`` streams whitespace as fast as the client reads, up to ``limit`` bytes;
``mode="slow"`` sends one byte every ``pace`` seconds, up to ``limit`` bytes; ``mode="gzip"``
sends ``limit`` bytes of whitespace gzip-compressed (a small body that inflates a thousandfold),
with ``Content-Encoding: gzip`` although the client asked for ``identity``. ``sent`` is how
many body bytes the server got out before the client hung up (or the limit was reached).
"""

from __future__ import annotations

import contextlib
import gzip
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Hostile:
    url: str
    mode: str
    limit: int
    pace: float
    sent: int = 0


@contextlib.contextmanager
def serve_hostile(mode: str, *, limit: int, pace: float = 0.05) -> Iterator[Hostile]:
    """A :class:`Hostile` server on a free loopback port (``mode``: ``huge`` or ``slow``)."""
    state = Hostile(url="", mode=mode, limit=limit, pace=pace)
    stop = threading.Event()
    bomb = gzip.compress(b"{" + b" " * limit + b"}", compresslevel=9) if mode == "gzip" else b""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            if mode == "gzip":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(bomb)))
                self.end_headers()
                try:
                    self.wfile.write(bomb)
                    state.sent = len(bomb)
                except OSError:
                    pass
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(limit + 2))
            self.end_headers()
            step = 65536 if mode == "huge" else 1
            try:
                self.wfile.write(b"{")
                while state.sent < limit and not stop.is_set():
                    n = min(step, limit - state.sent)
                    self.wfile.write(b" " * n)
                    self.wfile.flush()
                    state.sent += n
                    if mode == "slow":
                        time.sleep(pace)
                self.wfile.write(b"}")
            except OSError:
                pass  # the client hung up: what the tests want

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            self.rfile.read(length)
            self._answer()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def peak_memory() -> Iterator[list[int]]:
    """The peak of Python allocations (bytes) in the block, in the list it yields, after it."""
    import tracemalloc

    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
