"""``stockade serve SERVICE``: one service in its own process, its peers reached over gRPC.

The same composition root as ``stockade up`` (:class:`~stockade.cli._runtime.Runtime`) with one
service local; the others are their gRPC clients (mutual TLS, addresses in ``[peers]``), the
event bus an external NATS server, and the store (identity, audit) a shared database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stockade.core import Settings, configure_logging

from ._common import fail, handle_errors, run_async, settings
from ._instance import InstanceLock
from ._runtime import SERVICES, Runtime, prepare_data_dir
from ._serving import serve_until_stopped

__all__ = ["serve"]

_HELP = f"""Run one Stockade service in this process: {", ".join(SERVICES)}.

Every service answers gRPC health (grpc.health.v1) on api.host:api.port with mutual TLS;
identity and authz serve their APIs there too. The services it does not run are reached
at the addresses in the peers settings (STOCKADE_PEERS__IDENTITY, STOCKADE_PEERS__AUTHZ).

identity: the store (store.url, PostgreSQL for several services) and the admin socket.

authz: the policies; decisions logged on the bus.

broker: HTTPS on broker.host:broker.port; needs peers.identity and peers.authz.

gateway: SSH on gateway.host:gateway.port; needs peers.identity and peers.authz; follows the
shield's ban store; heartbeats into identity, and ends the sessions of dead gateways.

shield: failures in, bans out (the ban store on the bus).

audit: every event of the bus chained and signed into the store.

worktrace: Tetragon's events from worktrace.export_file or worktrace.nats_subject; alerts on
the bus; needs peers.authz when it responds (kill_session, ban_user).

Every service needs bus.url (an external NATS server). Certificates: tls.source "dev-ca" with
a tls.directory shared by the services of one host, "files" (tls.crt, tls.key, ca.crt), or
"openbao-pki" (issued at tls.pki_mount/issue/tls.pki_role of VAULT_ADDR, logged in with
VAULT_TOKEN or vault.auth_method "kubernetes", renewed at two thirds of tls.lifetime_hours).
A gateway's certificate names its gateway id (URI SAN spiffe://stockade/gateway/<id>).
Example: STOCKADE_PEERS__IDENTITY=127.0.0.1:7443 stockade serve gateway --data-dir gw-a
"""


async def _serve(config: Settings, service: str) -> None:
    configure_logging(config.log.level, config.log.json_output)
    with InstanceLock(prepare_data_dir(config)):  # one service per data dir
        runtime = Runtime(config, services=frozenset({service}))
        await serve_until_stopped(runtime, f"stockade serve {service}", service=service)


@handle_errors
def serve(
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICES)}.")],
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="State directory of this service (env STOCKADE_DATA_DIR)."),
    ] = None,
) -> None:
    if service not in SERVICES:
        raise fail(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")
    config = settings()
    if data_dir is not None:
        config = config.model_copy(update={"data_dir": data_dir})
    run_async(_serve(config, service))


serve.__doc__ = _HELP
