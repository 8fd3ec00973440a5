"""What the gateway asks of SSH Shield at accept time (the other collaborators' interfaces are
owned by their packages: ``identity.IdentityAPI``, ``authz.AuthzAPI``, ``core.events``)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["DenyList"]


@runtime_checkable
class DenyList(Protocol):
    """Banned source addresses (SSH Shield); asked at TCP accept, before any SSH byte."""

    def is_banned(self, ip: str) -> bool: ...
