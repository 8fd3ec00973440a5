"""The dev CA and certificate hot reload, against a real TLS handshake."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import threading
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from stockade.tls import CertificateFiles, DevCA


def test_ca_and_leaf_files_are_private_and_valid(tmp_path: Path) -> None:
    ca = DevCA(tmp_path / "tls")
    issued = ca.issue("api", sans=["localhost", "127.0.0.1"])
    assert stat.S_IMODE(os.stat(issued.key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(ca.ca_key_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "tls").st_mode) == 0o700
    leaf = x509.load_pem_x509_certificate(issued.cert.read_bytes())
    root = x509.load_pem_x509_certificate(issued.ca.read_bytes())
    leaf.verify_directly_issued_by(root)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku


def test_issue_keeps_fresh_certificate_and_force_renews(tmp_path: Path) -> None:
    ca = DevCA(tmp_path)
    first = ca.issue("api").cert.read_bytes()
    assert ca.issue("api").cert.read_bytes() == first
    assert ca.issue("api", force=True).cert.read_bytes() != first


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> x509.Certificate:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

        thread = threading.Thread(target=serve)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client_ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            tls.send(b"x")
        thread.join(timeout=10)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_reload_picks_up_rotated_certificate(tmp_path: Path) -> None:
    ca = DevCA(tmp_path)
    issued = ca.issue("api")
    files = CertificateFiles(issued.cert, issued.key, issued.ca)
    assert files.changed() is None
    before = x509.load_pem_x509_certificate(files.material.cert).serial_number

    ca.issue("api", force=True)
    fresh = files.changed()
    assert fresh is not None
    assert files.reloads == 1

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert_file = tmp_path / "served.pem"
    key_file = tmp_path / "served.key"
    cert_file.write_bytes(fresh.cert)
    key_file.write_bytes(fresh.key)
    server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.create_default_context(cafile=str(issued.ca))
    served = _handshake(server_ctx, client_ctx)
    assert served.serial_number != before


def test_inconsistent_pair_keeps_previous_material(tmp_path: Path) -> None:
    ca = DevCA(tmp_path)
    issued = ca.issue("api")
    files = CertificateFiles(issued.cert, issued.key, issued.ca)
    kept = files.material
    other = ca.issue("other")
    issued.cert.write_bytes(other.cert.read_bytes())  # cert rotated, key not yet
    assert files.changed() is None
    assert files.material == kept
