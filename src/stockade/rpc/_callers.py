"""Who is calling: the caller-by-certificate checks the identity and authz servicers share.

A caller is known by its leaf certificate's one common name (the service: ``gateway``,
``broker``, ...), read from the certificate itself; a certificate naming none or several is
nobody's. The admin unix socket (file permissions; the CLI) and an admin certificate may make
every call. A servicer's table lists, for each method, the names that may call it; a method it
does not list is open to none of them (fail closed). Every refusal is logged
(``<service>.call_refused``) and audited (:class:`ServiceCallRejected`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from grpc import aio

from stockade.core import StockadeError
from stockade.core.events import Event, ServiceCallRejected
from stockade.tls import common_names

Ctx = aio.ServicerContext[Any, Any]

#: Certificate common names that may make every call over mutual TLS. The admin socket
#: (file permissions) may too.
ADMIN_NAMES = frozenset({"admin"})


class Publisher(Protocol):
    async def publish(self, event: Event) -> Any: ...


@dataclass(frozen=True)
class Refusal:
    """Why a caller may not make a call: ``reason`` (a short code, audited) and ``why`` (the
    sentence it is told)."""

    reason: str
    why: str


@functools.lru_cache(maxsize=1024)
def _names_in(pem: bytes) -> tuple[str, ...]:
    return tuple(common_names(pem))


def admin_socket(context: Ctx) -> bool:
    """Whether the call came over the admin unix socket: plaintext, on a unix socket (the only
    listener opened without TLS). Any other transport needs a certificate, "not TLS" included
    (local or other credentials on a TCP port are no admin socket)."""
    insecure = context.auth_context().get("transport_security_type") == [b"insecure"]
    return insecure and (context.peer() or "").startswith("unix:")


def caller_names(context: Ctx) -> tuple[str, ...]:
    """Every common name of the caller's certificate, read from the certificate itself (gRPC's
    ``x509_common_name`` shows one of several); () when there is not exactly one certificate."""
    pems = list(context.auth_context().get("x509_pem_cert", []))
    return _names_in(bytes(pems[0])) if len(pems) == 1 else ()


def exempt(context: Ctx) -> bool:
    """The admin unix socket or an admin certificate (one common name, an admin's): every call
    is allowed."""
    if admin_socket(context):
        return True
    names = caller_names(context)
    return len(names) == 1 and names[0] in ADMIN_NAMES


def shown(names: Iterable[str]) -> str:
    return ", ".join(name[:64] for name in names) or "no name"


def name_refusal(
    context: Ctx,
    method: str,
    allowed: frozenset[str],
    *,
    kinds: Mapping[frozenset[str], str] | None = None,
) -> Refusal | None:
    """Whether the caller of ``method`` is refused (None: it may call): unless exempt (see
    :func:`exempt`), its certificate must name exactly one common name, one of ``allowed``
    (empty: admins only). ``kinds`` names some sets of callers (``{GATEWAY_NAMES: "gateway"}``:
    refused as ``not_gateway``, "needs a gateway certificate")."""
    if exempt(context):
        return None
    names = caller_names(context)
    if not names:
        return Refusal("no_common_name", f"{method}: the certificate names no common name")
    if len(names) > 1:
        return Refusal(
            "several_common_names",
            f"{method}: the certificate names {len(names)} common names ({shown(names)});"
            " it must name one",
        )
    if names[0] in allowed:
        return None
    if not allowed:
        return Refusal("not_admin", f"{method} needs an admin certificate ({shown(names)})")
    kind = (kinds or {}).get(allowed)
    if kind is not None:
        return Refusal(f"not_{kind}", f"{method} needs a {kind} certificate ({shown(names)})")
    return Refusal(
        "not_allowed",
        f"{method} needs a certificate of {' or '.join(sorted(allowed | ADMIN_NAMES))}"
        f" ({shown(names)})",
    )


async def report_refusal(
    context: Ctx,
    service: str,
    full_method: str,
    method: str,
    refusal: Refusal,
    *,
    publisher: Publisher | None,
    log: Any,
) -> None:
    """Log (``<service>.call_refused``) and audit (a ``service.rejected`` event) a refusal; the
    caller then refuses the call with PERMISSION_DENIED. An audit that fails is logged."""
    peer = context.peer() or ""
    caller = ",".join(caller_names(context))[:256]
    log.warning(f"{service}.call_refused", method=method, reason=refusal.reason, peer=peer,
                caller=caller)  # fmt: skip
    if publisher is None:
        return
    event = ServiceCallRejected(
        method=full_method[:256], reason=refusal.reason, status="PERMISSION_DENIED",
        peer=peer[:128], caller=caller,
    )  # fmt: skip
    try:
        await publisher.publish(event)
    except StockadeError as exc:
        log.warning(f"{service}.call_refused.audit_failed", error=str(exc))
