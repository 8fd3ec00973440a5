"""The VaultSecret controller: decide whether to sync, read Vault, write one Secret, report.

:meth:`SecretSyncController.reconcile` is one pass for one VaultSecret, decide-then-apply:

1. decide whether Vault is read at all: the first sync, a new spec ``generation``, a new value of
   the force-sync annotation, or (``Periodic``) ``refreshAfter`` elapsed; ``CreatedOnce`` never
   re-reads once written, ``OnChange`` only for a new generation or a forced sync;
2. read the path; render the destination data (raw keys unless ``excludeRaw``, plus templates
   ``{{ .Secrets.KEY }}``); a missing path or a template naming a missing key sets
   ``SecretSynced=False`` with the reason and changes no Secret;
3. compare the HMAC of the rendered data with the HMAC of the Secret now in the cluster (drift
   is seen without logging a value); write only when they differ, create only when
   ``destination.create`` is set, and never take over a Secret we did not create unless
   ``destination.overwrite`` is set;
4. when an existing Secret's data changed, restart the ``rolloutRestartTargets``;
5. write the status once: HMAC, generation, force-sync value seen, conditions.

:meth:`SecretSyncController.finalize` (the VaultSecret is being deleted) removes the Secret only
when the controller created it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from stockade.core import SecretsBackendUnavailable, StockadeError, get_logger

from ._kube import KubernetesAdapter, KubernetesError, SecretObject
from ._resource import (
    FORCE_SYNC_ANNOTATION,
    MANAGED_BY,
    Condition,
    VaultSecret,
    VaultSecretStatus,
)
from ._vault import SecretPathMissing

__all__ = ["ReconcileResult", "SecretReader", "SecretSyncController", "render"]

log = get_logger("stockade.secretsync")

SYNCED = "SecretSynced"
_TEMPLATE = re.compile(r"\{\{\s*\.Secrets\.([A-Za-z0-9_.-]+)\s*\}\}")
_ANY_ACTION = re.compile(r"\{\{.*?\}\}", re.DOTALL)


class SecretReader(Protocol):
    async def read(
        self, mount: str, path: str, *, kv: str, version: int | None = None
    ) -> dict[str, str]: ...


class TemplateError(StockadeError):
    """A transformation template names a missing key or uses an unsupported action."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ReconcileResult:
    """What a pass did: ``synced`` (Secret written), ``read`` (Vault asked), when to come back."""

    read: bool
    synced: bool
    requeue_after: timedelta | None
    reason: str


def render(resource: VaultSecret, data: dict[str, str]) -> dict[str, str]:
    """The destination Secret's data for Vault's ``data`` (raises :class:`TemplateError`)."""
    transformation = resource.spec.destination.transformation
    out = {} if transformation.exclude_raw else dict(data)
    for key, template in sorted(transformation.templates.items()):

        def substitute(match: re.Match[str], key: str = key) -> str:
            name = match.group(1)
            if name not in data:
                raise TemplateError(
                    "TemplateKeyMissing", f"template {key!r} references missing key {name!r}"
                )
            return data[name]

        text = _TEMPLATE.sub(substitute, template.text)
        if _ANY_ACTION.search(text):
            raise TemplateError(
                "TemplateInvalid",
                f"template {key!r} uses an action other than {{{{ .Secrets.KEY }}}}",
            )
        out[key] = text
    return out


class SecretSyncController:
    """Reconciles VaultSecrets (see the module docstring). ``hmac_key`` keys the data MACs."""

    def __init__(
        self,
        *,
        kube: KubernetesAdapter,
        vault: SecretReader,
        hmac_key: bytes,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if len(hmac_key) < 16:
            raise ValueError("the HMAC key must be at least 16 bytes")
        self._kube = kube
        self._vault = vault
        self._key = hmac_key
        self._clock = clock

    def __repr__(self) -> str:
        return "<SecretSyncController hmac_key=[secure]>"

    def mac(self, data: dict[str, str]) -> str:
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        return hmac.new(self._key, canonical, hashlib.sha256).hexdigest()

    def _due(self, resource: VaultSecret) -> str | None:
        """Why Vault should be read now, or None."""
        status, spec = resource.status, resource.spec
        force = resource.annotations.get(FORCE_SYNC_ANNOTATION, "")
        if status.last_synced_at is None:
            return "first-sync"
        if force and force != status.force_sync_seen:
            return "forced"
        if resource.generation != status.last_generation:
            return "spec-changed"
        if spec.refresh_policy != "Periodic":
            return None
        if self._clock() - status.last_synced_at >= spec.refresh_interval:
            return "periodic"
        return None

    def _requeue(self, resource: VaultSecret) -> timedelta | None:
        if resource.spec.refresh_policy == "Periodic":
            return resource.spec.refresh_interval
        return None

    async def reconcile(self, resource: VaultSecret) -> ReconcileResult:
        why = self._due(resource)
        if why is None:
            return ReconcileResult(False, False, self._requeue(resource), "up-to-date")
        spec = resource.spec
        dest = spec.destination
        try:
            raw = await self._vault.read(spec.mount, spec.path, kv=spec.type, version=spec.version)
            data = render(resource, raw)
        except SecretPathMissing as exc:
            return await self._fail(resource, "SecretPathMissing", str(exc))
        except TemplateError as exc:
            return await self._fail(resource, exc.reason, str(exc))
        except SecretsBackendUnavailable as exc:
            return await self._fail(resource, "VaultUnavailable", str(exc))
        existing = await self._kube.get_secret(resource.namespace, dest.name)
        ours = existing is not None and existing.owner_uid == resource.uid and bool(resource.uid)
        if existing is None and not dest.create:
            return await self._fail(
                resource,
                "DestinationMissing",
                f"secret {dest.name} does not exist and create is false",
            )
        if existing is not None and not ours and not resource.status.created and not dest.overwrite:
            return await self._fail(
                resource, "DestinationExists", f"secret {dest.name} exists and overwrite is false"
            )
        mac = self.mac(data)
        labels = {**dest.labels, "app.kubernetes.io/managed-by": MANAGED_BY}
        wanted = SecretObject(
            namespace=resource.namespace,
            name=dest.name,
            data=data,
            type=dest.type,
            labels=labels,
            annotations=dict(dest.annotations),
            resource_version=existing.resource_version if existing else "",
        )
        created = resource.status.created
        changed = True
        try:
            if existing is None:
                await self._kube.create_secret(wanted, resource)
                created = True
            else:
                current = self.mac(existing.data)
                if resource.status.secret_mac and current != resource.status.secret_mac:
                    log.warning(
                        "secretsync.drift", vaultsecret=f"{resource.namespace}/{resource.name}"
                    )
                same_meta = (existing.labels, existing.annotations, existing.type) == (
                    wanted.labels,
                    wanted.annotations,
                    wanted.type,
                )
                changed = current != mac
                if changed or not same_meta:
                    await self._kube.replace_secret(wanted, resource if created else None)
        except KubernetesError as exc:
            return await self._fail(resource, "KubernetesError", str(exc))
        # Restart only when a Secret that pods already read now holds other data.
        if existing is not None and changed:
            for target in spec.rollout_restart_targets:
                await self._kube.restart(
                    resource.namespace, target.kind, target.name, self._clock()
                )
        status = VaultSecretStatus(
            secret_mac=mac if spec.hmac_secret_data else "",
            last_generation=resource.generation,
            last_synced_at=self._clock(),
            force_sync_seen=resource.annotations.get(FORCE_SYNC_ANNOTATION, ""),
            created=created,
            conditions=[self._condition(resource, "True", "Synced", f"synced ({why})")],
        )
        await self._kube.update_status(resource, status)
        log.info(
            "secretsync.synced",
            vaultsecret=f"{resource.namespace}/{resource.name}",
            why=why,
            changed=changed,
            keys=len(data),
        )
        return ReconcileResult(True, changed, self._requeue(resource), why)

    def _condition(self, resource: VaultSecret, state: str, reason: str, message: str) -> Condition:
        previous = next((c for c in resource.status.conditions if c.type == SYNCED), None)
        since = (
            previous.last_transition_time
            if previous is not None and previous.status == state
            else self._clock()
        )
        return Condition.model_validate(
            {"type": SYNCED, "status": state, "reason": reason, "message": message[:512],
             "last_transition_time": since}
        )  # fmt: skip

    async def _fail(self, resource: VaultSecret, reason: str, message: str) -> ReconcileResult:
        log.warning(
            "secretsync.failed", vaultsecret=f"{resource.namespace}/{resource.name}", reason=reason
        )
        status = resource.status.model_copy(
            update={"conditions": [self._condition(resource, "False", reason, message)]}
        )
        await self._kube.update_status(resource, status)
        return ReconcileResult(
            True, False, self._requeue(resource) or timedelta(seconds=30), reason
        )

    async def run(self, stop: asyncio.Event, *, tick: float = 1.0) -> None:
        """Reconcile every listed VaultSecret, then again every ``tick`` seconds, until ``stop``.

        A resource that fails to parse or reconcile is logged and retried at the next tick;
        one bad resource never stops the others.
        """
        while not stop.is_set():
            try:
                resources = await self._kube.list_vault_secrets()
            except StockadeError as exc:
                log.warning("secretsync.list_failed", error=str(exc))
                resources = []
            for resource in resources:
                try:
                    await self.reconcile(resource)
                except StockadeError as exc:
                    log.warning(
                        "secretsync.reconcile_failed",
                        vaultsecret=f"{resource.namespace}/{resource.name}",
                        error=str(exc),
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=tick)

    async def finalize(self, resource: VaultSecret) -> bool:
        """The VaultSecret is going away: delete its Secret only if we created it."""
        if not resource.status.created:
            return False
        await self._kube.delete_secret(resource.namespace, resource.spec.destination.name)
        log.info("secretsync.deleted", vaultsecret=f"{resource.namespace}/{resource.name}")
        return True
