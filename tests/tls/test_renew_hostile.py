"""A compromised or broken OpenBao answering the renewer (`tls.source = "openbao-pki"`).

The issuer is a loopback HTTP server of this test speaking OpenBao's ``pki/issue`` API with
answers a hostile PKI could give: a key that does not match the certificate, a certificate for
another name or another gateway id, garbage, a huge body, a body that never ends. Each is
refused before anything is written (the certificate in use stays, on disk too: a restart must
still find a consistent pair), the renewal loop survives it and says why in one error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
import structlog

from stockade.core import SecretsBackendUnavailable
from stockade.tls import (
    CertificateFiles,
    CertificateRenewer,
    DevCA,
    DevCASource,
    OpenBaoPKISource,
    gateway_uri,
)

SANS = ("gateway", "localhost", "127.0.0.1", gateway_uri("gw-a"))


@dataclass
class HostilePki:
    """Answers every POST with ``answer()``: raw bytes after the status line and headers."""

    answer: Callable[[], bytes] = lambda: b""
    slow: bool = False
    requests: int = 0
    port: int = 0
    server: asyncio.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                 if line.lower().startswith(b"content-length:")),
                0,
            )  # fmt: skip
            await reader.readexactly(length)
            self.requests += 1
            if self.slow:  # headers, then one byte of a never-ending body now and then
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: 100000000\r\n\r\n{")  # fmt: skip
                for _ in range(600):
                    await writer.drain()
                    await asyncio.sleep(0.2)
                    writer.write(b" ")
                return
            body = self.answer()
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self.tasks.discard(task)


@pytest.fixture
async def hostile() -> AsyncIterator[HostilePki]:
    pki = HostilePki()
    pki.server = await asyncio.start_server(pki._accept, "127.0.0.1", 0)
    pki.port = pki.server.sockets[0].getsockname()[1]
    yield pki
    for task in list(pki.tasks):
        task.cancel()
    pki.server.close()


def _answer(cert: bytes, key: bytes, ca: bytes) -> bytes:
    return json.dumps(
        {
            "data": {
                "certificate": cert.decode(),
                "private_key": key.decode(),
                "issuing_ca": ca.decode(),
                "ca_chain": [ca.decode()],
            }
        }
    ).encode()


async def _renewer(tmp_path: Path, hostile: HostilePki) -> CertificateRenewer:
    """A renewer holding a good certificate (from the dev CA), now renewing from ``hostile``."""
    ca = DevCA(tmp_path / "ca")
    renewer = CertificateRenewer(
        DevCASource(ca), tmp_path / "tls", common_name="gateway", sans=SANS,
        lifetime=timedelta(hours=1),
    )  # fmt: skip
    await renewer.renew()
    renewer.source = OpenBaoPKISource(
        f"http://127.0.0.1:{hostile.port}", role="stockade", token=lambda: "s.token"
    )
    return renewer


def _mint(ca: DevCA, name: str = "gateway", sans: tuple[str, ...] = SANS) -> tuple[bytes, bytes]:
    return ca.mint(name, sans=list(sans), lifetime=timedelta(hours=1))


def _cases(ca: DevCA) -> dict[str, bytes]:
    cert, _key = _mint(ca)
    _other_cert, other_key = _mint(ca)
    admin_cert, admin_key = _mint(ca, "admin", ("admin", "localhost", "127.0.0.1"))
    both_cert, both_key = _mint(ca, sans=(*SANS, gateway_uri("gw-b")))
    no_id_cert, no_id_key = _mint(ca, sans=SANS[:-1])
    stranger = DevCA(ca.directory.parent / "stranger")
    stranger.ensure()
    foreign_cert, foreign_key = _mint(stranger)
    pem = ca.ca_cert_path.read_bytes()
    return {
        "key of another certificate": _answer(cert, other_key, pem),
        "certificate for admin": _answer(admin_cert, admin_key, pem),
        "another gateway id too": _answer(both_cert, both_key, pem),
        "gateway id dropped": _answer(no_id_cert, no_id_key, pem),
        "not signed by the CA it names": _answer(foreign_cert, foreign_key, pem),
        "not JSON": b"<html>proxy error</html>",
        "a JSON list": b"[1, 2]",
        "garbage PEM": _answer(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----", other_key, pem
        ),
        "huge": b'{"data": {"certificate": "' + b"A" * (8 << 20) + b'"}}',
    }


async def test_hostile_answers_keep_the_certificate_in_use(
    tmp_path: Path, hostile: HostilePki
) -> None:
    renewer = await _renewer(tmp_path, hostile)
    files = CertificateFiles(renewer.cert_path, renewer.key_path, renewer.ca_path)
    before = {p: p.read_bytes() for p in files.paths}
    for case, body in _cases(DevCA(tmp_path / "ca")).items():
        hostile.answer = lambda body=body: body
        with pytest.raises(SecretsBackendUnavailable):
            await asyncio.wait_for(renewer.renew(), 30)
        assert {p: p.read_bytes() for p in files.paths} == before, case
        assert files.changed() is None, case
        # a restart finds the same consistent pair
        CertificateFiles(renewer.cert_path, renewer.key_path, renewer.ca_path)
    assert hostile.requests == 9


async def test_a_body_that_never_ends_is_given_up(tmp_path: Path, hostile: HostilePki) -> None:
    renewer = await _renewer(tmp_path, hostile)
    renewer.source = OpenBaoPKISource(
        f"http://127.0.0.1:{hostile.port}", role="stockade", token=lambda: "s.token",
        deadline=1.0,
    )  # fmt: skip
    hostile.slow = True
    serial = renewer.current()
    with pytest.raises(SecretsBackendUnavailable, match="took longer than 1s"):
        await asyncio.wait_for(renewer.renew(), 30)
    assert renewer.current() == serial


async def test_the_renewal_loop_survives_garbage(tmp_path: Path, hostile: HostilePki) -> None:
    renewer = await _renewer(tmp_path, hostile)
    hostile.answer = lambda: b"[1, 2]"
    renewer.lifetime = timedelta(hours=1)
    renewer.renew_fraction = 0.0001  # due at once, every time
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(renewer.run(stop, retry=0.05))
        for _ in range(400):
            if hostile.requests >= 3 or task.done():
                break
            await asyncio.sleep(0.05)
        assert not task.done(), task.exception()
        stop.set()
        await asyncio.wait_for(task, 10)
    assert hostile.requests >= 3
    failures = [e for e in logs if e["event"] == "tls.renew.failed"]
    assert len(failures) == hostile.requests
    assert "s.token" not in repr(logs)
    assert renewer.error is not None
    assert "malformed" in renewer.error
