"""Fixtures for the images tests: keys and a two-layer layout, made fresh in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.images.layouts import KeyFiles, make_key, write_layout


@pytest.fixture(scope="session")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of generated keys, shared by the session (RSA keys are slow to make)."""
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="session")
def rsa_key(keydir: Path) -> KeyFiles:
    """An RSA-2048 key pair with a self-signed certificate."""
    return make_key(keydir, "rsa1", "rsa")


@pytest.fixture(scope="session")
def ec_key(keydir: Path) -> KeyFiles:
    """An EC P-256 key pair (PKCS#8, as skopeo needs) with a certificate."""
    return make_key(keydir, "ec1", "ec")


@pytest.fixture(scope="session")
def other_key(keydir: Path) -> KeyFiles:
    """A key that is nobody's recipient."""
    return make_key(keydir, "other", "rsa")


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """A two-layer image tagged v1."""
    return write_layout(
        tmp_path / "src",
        [
            {"etc/hello": b"hello\n" * 500},
            {"usr/share/doc/x": b"doc " * 3000, "bin/tool": b"\x7fELF"},
        ],
    )
