"""Acceptance 5: schemathesis against the broker's OpenAPI, over real HTTPS: no 5xx, responses as
documented, and no credential without a valid token."""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from broker.fixtures import openbao
from broker.harness import BrokerEnv, OpenBao, broker_env
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from stockade.broker import create_app
from stockade.core.settings import BrokerSettings

__all__ = ["openbao"]

pytestmark = pytest.mark.timeout(600)

SEEDED = "seeded-" + secrets.token_urlsafe(16)


def _schema_app() -> Any:
    """The app whose OpenAPI document is tested (collaborators unused for the document)."""
    return create_app(
        identity=None, authz=None, backends={}, publisher=None, settings=BrokerSettings()
    )  # type: ignore[arg-type]


schema = schemathesis.openapi.from_dict(_schema_app().openapi())


@dataclass
class LiveBroker:
    url: str
    ca: str
    token: str


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, openbao: OpenBao
) -> Iterator[LiveBroker]:
    """A broker in its own thread and event loop, so schemathesis' synchronous calls reach it."""
    tmp: Path = tmp_path_factory.mktemp("schemathesis")
    ready: Future[LiveBroker] = Future()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        try:
            async with broker_env(tmp, nats_url, openbao) as env:
                await prepare(env, openbao)
                _, token = await env.session_token("alice", ttl=3600)
                ready.set_result(LiveBroker(url=env.url, ca=str(env.ca), token=token))
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        yield ready.result(timeout=60)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()


async def prepare(env: BrokerEnv, bao: OpenBao) -> None:
    await env.add_user("alice")
    for path, data in {
        "git/a": {"username": "u", "password": SEEDED},
        "git/0": {"username": "u", "password": SEEDED},
        "docker/a": {"username": "u", "secret": SEEDED},
        "docker/0": {"username": "u", "secret": SEEDED},
        "kubernetes/a": {"token": SEEDED},
        "kubernetes/0": {"token": SEEDED},
    }.items():
        bao.kv_put(f"stockade/alice/{path}", data)


CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
FUZZ = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


def no_server_error(response: Any) -> None:
    assert response.status_code < 500, f"{response.status_code}: {response.text[:300]}"


@schema.parametrize()
@FUZZ
def test_with_a_valid_token(case: schemathesis.Case, live: LiveBroker) -> None:
    response = case.call(
        base_url=live.url,
        headers={"Authorization": f"Bearer {live.token}"},
        verify=live.ca,
        timeout=30,
    )
    no_server_error(response)
    case.validate_response(response, checks=CHECKS)


@schema.parametrize()
@FUZZ
def test_without_a_valid_token(case: schemathesis.Case, live: LiveBroker) -> None:
    forged = live.token[:-8] + ("A" * 8 if not live.token.endswith("A" * 8) else "B" * 8)
    for headers in ({}, {"Authorization": f"Bearer {forged}"}, {"Authorization": "Bearer x"}):
        response = case.call(base_url=live.url, headers=headers, verify=live.ca, timeout=30)
        no_server_error(response)
        case.validate_response(response, checks=CHECKS)
        if case.path.startswith("/v1/credentials"):
            assert response.status_code != 200, response.text[:300]
            assert SEEDED not in response.text


def test_seeded_credentials_are_reachable_with_the_token(live: LiveBroker) -> None:
    """The fuzzing above could have found the seeded secrets: they exist and the token works."""
    context = ssl.create_default_context(cafile=live.ca)
    with httpx.Client(base_url=live.url, verify=context) as client:
        response = client.post(
            "/v1/credentials/git",
            json={"protocol": "https", "host": "a"},
            headers={"Authorization": f"Bearer {live.token}"},
        )
    assert response.status_code == 200
    assert response.json()["password"] == SEEDED
    assert json.dumps(response.json())
