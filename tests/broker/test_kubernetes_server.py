"""A kubeconfig (or ``kubectl --server``) pointing a configured cluster's name at another API
server: kubectl would send that cluster's token there. The exec plugin tells the broker the
server (``provideClusterInfo``); the broker refuses a server that is not the cluster's. Real
identity, NATS and OpenBao over HTTPS (atk18)."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from broker.harness import OpenBao, broker_env
from stockade.core.settings import KubernetesCluster

SERVER = "https://kube.example.com:6443"


@pytest.mark.parametrize(
    ("server", "served"),
    [
        (SERVER, True),
        (SERVER + "/", True),
        ("https://KUBE.example.com:6443", True),
        (None, True),  # kubectl without provideClusterInfo: the name alone, as configured
        ("https://attacker.example.com:6443", False),
        ("https://kube.example.com:6444", False),
        ("https://kube.example.com.attacker.example:6443", False),
        ("http://kube.example.com:6443", False),
    ],
)
async def test_a_cluster_token_goes_only_to_that_clusters_server(
    tmp_path: Path, nats_url: str, openbao: OpenBao, server: str | None, served: bool
) -> None:
    clusters = [KubernetesCluster(name="prod", server=SERVER)]
    async with broker_env(tmp_path, nats_url, openbao, clusters=clusters) as env:
        user = "u" + secrets.token_hex(4)
        await env.add_user(user)
        cluster_token = "kt-" + secrets.token_urlsafe(24)
        openbao.kv_put(f"stockade/{user}/kubernetes/prod", {"token": cluster_token})
        _sid, token = await env.session_token(user)
        body: dict[str, str] = {"cluster": "prod"}
        if server is not None:
            body["server"] = server
        async with httpx.AsyncClient(base_url=env.url, verify=env.tls(), timeout=30) as client:
            answer = await client.post(
                "/v1/credentials/kubernetes",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
            )
        if served:
            assert answer.status_code == 200, answer.text
            assert answer.json()["token"] == cluster_token
        else:
            assert cluster_token not in answer.text
            assert (answer.status_code, answer.json()["reason"]) == (422, "server")
