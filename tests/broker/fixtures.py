"""Broker fixtures, shared by tests/broker (its conftest) and tests/integration/test_broker_*."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from broker.harness import BrokerEnv, OpenBao, broker_env, start_openbao


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    """The real ``bao server -dev`` on a free loopback port, for the whole session."""
    with start_openbao(tmp_path_factory.mktemp("openbao")) as bao:
        yield bao


@pytest.fixture
async def env(tmp_path: Path, nats_url: str, openbao: OpenBao) -> AsyncIterator[BrokerEnv]:
    """A broker with the vault backend on OpenBao, real identity, authz and NATS."""
    async with broker_env(tmp_path, nats_url, openbao) as env:
        yield env
