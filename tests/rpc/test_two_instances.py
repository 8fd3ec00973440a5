"""Two internal API servers on one host: no shared port, no stolen or deleted admin socket."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from stockade.authz import Authorizer
from stockade.core import BackendError
from stockade.core.settings import AuthzSettings, IdentitySettings
from stockade.identity import IdentityService, KeyRing
from stockade.rpc import RpcServer
from stockade.store import Store
from stockade.tls import CertificateFiles, DevCA


async def _server(tmp_path: Path, name: str, *, port: int, admin: Path) -> tuple[RpcServer, Store]:
    base = tmp_path / name
    base.mkdir(exist_ok=True)
    store = Store(f"sqlite:///{base / 'db.sqlite'}")
    await store.migrate()
    identity = IdentityService(
        store=store, settings=IdentitySettings(), keyring=KeyRing(base / "keys")
    )
    issued = DevCA(base / "tls").issue("api")
    server = RpcServer(
        identity=identity,
        authorizer=Authorizer(settings=AuthzSettings()),
        tls=CertificateFiles(issued.cert, issued.key, issued.ca),
        port=port,
        admin_socket=admin,
    )
    return server, store


async def test_second_server_cannot_bind_the_same_port(tmp_path: Path) -> None:
    first, store1 = await _server(tmp_path, "a", port=0, admin=tmp_path / "a" / "run" / "a.sock")
    await first.start()
    second, store2 = await _server(
        tmp_path, "b", port=first.port, admin=tmp_path / "b" / "run" / "b.sock"
    )
    try:
        with pytest.raises(BackendError, match="cannot listen"):
            await second.start()  # with SO_REUSEPORT this would silently share the port
    finally:
        await second.stop(0)
        await first.stop(0)
        await store1.close()
        await store2.close()


async def test_live_admin_socket_is_not_taken_over(tmp_path: Path) -> None:
    shared = tmp_path / "run" / "admin.sock"
    first, store1 = await _server(tmp_path, "a", port=0, admin=shared)
    await first.start()
    second, store2 = await _server(tmp_path, "b", port=0, admin=shared)
    try:
        with pytest.raises(BackendError, match="in use by another running instance"):
            await second.start()
        await second.stop(0)
        assert shared.exists()  # the failed second instance did not remove the first's socket
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(shared))
    finally:
        await first.stop(0)
        await store1.close()
        await store2.close()
    assert not shared.exists()


async def test_stale_socket_is_replaced_and_only_the_creator_removes_it(tmp_path: Path) -> None:
    shared = tmp_path / "run" / "admin.sock"
    shared.parent.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(shared))  # bound but never listening: a socket left by a dead process
    stale.close()
    first, store1 = await _server(tmp_path, "a", port=0, admin=shared)
    await first.start()  # replaces the stale socket
    shared.unlink()  # someone removes it, and another instance binds the path
    second, store2 = await _server(tmp_path, "b", port=0, admin=shared)
    await second.start()
    try:
        await first.stop(0)
        assert shared.exists()  # not the first server's socket any more: left alone
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(shared))
    finally:
        await second.stop(0)
        await store1.close()
        await store2.close()
    assert not shared.exists()


async def test_a_regular_file_at_the_socket_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run" / "admin.sock"
    path.parent.mkdir(mode=0o700)
    path.write_text("not a socket")
    server, store = await _server(tmp_path, "a", port=0, admin=path)
    try:
        with pytest.raises(BackendError, match="not a socket"):
            await server.start()
    finally:
        await server.stop(0)
        await store.close()
    assert path.read_text() == "not a socket"
