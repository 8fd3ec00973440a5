"""Certificate reload and renewal: garbage keeps the old certificate, a Python TLS server follows
its files on the next handshake, the renewer's layout, schedule and CA bundle."""

from __future__ import annotations

import asyncio
import os
import ssl
from datetime import timedelta
from pathlib import Path

import pytest
import structlog
from cryptography import x509

from stockade.tls import (
    CertificateFiles,
    CertificateRenewer,
    DevCA,
    DevCASource,
    IssuedMaterial,
    ReloadingServerContext,
)


async def _renewer(tmp_path: Path, name: str = "svc", ca: str = "ca") -> CertificateRenewer:
    renewer = CertificateRenewer(
        DevCASource(DevCA(tmp_path / ca)),
        tmp_path / name,
        common_name="localhost",
        lifetime=timedelta(hours=3),
    )
    await renewer.ensure()
    return renewer


def _files(renewer: CertificateRenewer) -> CertificateFiles:
    return CertificateFiles(renewer.cert_path, renewer.key_path, renewer.ca_path)


async def test_garbage_keeps_old_certificate_one_error(tmp_path: Path) -> None:
    renewer = await _renewer(tmp_path)
    files = _files(renewer)
    serial = files.serial
    target = renewer.cert_path.resolve()
    os.chmod(target, 0o644)
    with structlog.testing.capture_logs() as logs:
        target.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
        for _ in range(20):  # one per handshake
            assert files.changed() is None
    errors = [e for e in logs if e["event"] == "tls.reload.rejected"]
    assert len(errors) == 1
    assert files.serial == serial
    assert files.error is not None
    assert str(renewer.cert_path) in files.error
    leaf = await renewer.renew()
    assert files.changed() is not None
    assert files.serial == leaf.serial_number
    assert files.error is None


async def test_mismatched_key_kept_out(tmp_path: Path) -> None:
    renewer = await _renewer(tmp_path)
    other = await _renewer(tmp_path, "other")
    files = _files(renewer)
    serial = files.serial
    key = renewer.key_path.resolve()
    key.write_bytes(other.key_path.read_bytes())
    assert files.changed() is None
    assert files.serial == serial
    assert "does not match" in (files.error or "")


async def test_renew_at_two_thirds(tmp_path: Path) -> None:
    renewer = await _renewer(tmp_path)
    cert = renewer.current()
    assert cert is not None
    when = renewer.renew_at()
    assert when is not None
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert when == cert.not_valid_before_utc + life * 2 / 3
    assert not renewer.due()
    late = CertificateRenewer(
        renewer.source,
        renewer.directory,
        common_name="localhost",
        clock=lambda: when + timedelta(seconds=1),
    )
    assert late.due()


async def test_layout_swaps_whole_versions_and_keeps_previous(tmp_path: Path) -> None:
    renewer = await _renewer(tmp_path)
    first = renewer.cert_path.resolve().parent
    await renewer.renew()
    second = renewer.cert_path.resolve().parent
    assert first != second
    assert first.is_dir()  # the previous version stays for readers still on it
    await renewer.renew()
    assert not first.exists()  # ...until the renewal after
    assert second.is_dir()
    assert (renewer.key_path.resolve().stat().st_mode & 0o777) == 0o600
    assert (renewer.directory.stat().st_mode & 0o777) == 0o700


async def test_bundle_union_then_prune(tmp_path: Path) -> None:
    renewer = await _renewer(tmp_path)
    other_ca = DevCA(tmp_path / "ca-b")
    other_ca.ensure()
    renewer.trust(other_ca.ca_cert_path.read_bytes())
    assert len(x509.load_pem_x509_certificates(renewer.ca_path.read_bytes())) == 2
    await renewer.renew(DevCASource(other_ca))
    assert len(x509.load_pem_x509_certificates(renewer.ca_path.read_bytes())) == 2
    renewer.prune()
    (only,) = x509.load_pem_x509_certificates(renewer.ca_path.read_bytes())
    assert (
        only.subject == x509.load_pem_x509_certificate(other_ca.ca_cert_path.read_bytes()).subject
    )


async def _served_serial(port: int, ca: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(ca))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    await reader.read(5)
    writer.close()
    await writer.wait_closed()
    return x509.load_der_x509_certificate(der).serial_number


async def test_python_tls_server_follows_files(tmp_path: Path) -> None:
    """What the broker runs: a Python TLS server whose context follows the files."""
    renewer = await _renewer(tmp_path)
    files = _files(renewer)
    reloading = ReloadingServerContext(files)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=reloading.context)
    port = server.sockets[0].getsockname()[1]
    try:
        first = await _served_serial(port, renewer.ca_path)
        assert first == files.serial
        second = (await renewer.renew()).serial_number
        assert await _served_serial(port, renewer.ca_path) == second
        renewer.cert_path.resolve().write_bytes(b"garbage")
        assert await _served_serial(port, renewer.ca_path) == second  # old one stays
        assert files.error is not None
    finally:
        server.close()
        await server.wait_closed()


def test_inconsistent_start_is_refused(tmp_path: Path) -> None:
    ca = DevCA(tmp_path / "ca")
    a, b = ca.issue("a"), ca.issue("b")
    with pytest.raises(ValueError, match="does not match"):
        CertificateFiles(a.cert, b.key, a.ca)


def test_issued_material_repr_hides_key(tmp_path: Path) -> None:
    ca = DevCA(tmp_path / "ca")
    cert, key = ca.mint("x")
    shown = repr(IssuedMaterial(cert=cert, key=key, ca=ca.ca_cert_path.read_bytes()))
    assert "PRIVATE" not in shown
    assert "[secure]" in shown


async def test_run_renews_when_due_then_waits(tmp_path: Path) -> None:
    offset = timedelta(0)
    from datetime import UTC, datetime

    renewer = CertificateRenewer(
        DevCASource(DevCA(tmp_path / "ca")),
        tmp_path / "svc",
        common_name="localhost",
        lifetime=timedelta(hours=3),
        clock=lambda: datetime.now(UTC) + offset,
    )
    await renewer.ensure()
    first = renewer.current()
    assert first is not None
    offset = timedelta(hours=2, minutes=1)  # past two thirds of 3 h
    stop = asyncio.Event()
    task = asyncio.create_task(renewer.run(stop))
    try:
        for _ in range(200):
            if renewer.renewals >= 2:
                break
            await asyncio.sleep(0.02)
        offset = timedelta(0)
        assert renewer.renewals >= 2  # ensure() at start, then run()'s renewal
        current = renewer.current()
        assert current is not None
        assert current.serial_number != first.serial_number
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_the_certificate_in_use_put_back_after_a_bad_change_clears_the_error(
    tmp_path: Path,
) -> None:
    """An operator who restores the very files in use (``mv cert.bak cert.pem``, ``cp -p``:
    the same times and sizes) after a bad change has nothing left wrong; status must clear."""
    renewer = await _renewer(tmp_path)
    files = _files(renewer)
    saved = tmp_path / "cert.bak"
    os.link(renewer.cert_path, saved)  # the very file, times and all
    os.unlink(renewer.cert_path)
    renewer.cert_path.write_bytes(b"garbage")
    assert files.check() is not None
    os.replace(saved, renewer.cert_path)
    assert files.check() is None
    assert files.changed() is None  # nothing to take into use: it is what serves
