"""Stockade's error hierarchy, split by whose fault it is.

Every error a user can see is a :class:`StockadeError`; exceptions of the libraries underneath
(SQLAlchemy, nats-py, asyncssh, hvac, grpc, regorus) are mapped at the package boundary with
``raise Mapped(...) from exc`` and never reach the CLI or an SSH peer unmapped.

::

    StockadeError                      exit 1 unless a subclass says otherwise
    ├── UserError                      exit 2: the caller's input is wrong
    │   ├── InvalidInput               a field, flag or file is malformed (names it)
    │   ├── NotFound                   a named thing does not exist
    │   ├── AlreadyExists              a named thing exists already
    │   └── ConfigError                the settings tree failed validation at start-up
    ├── AuthenticationError            a credential was presented and rejected
    │   └── TokenRejected              a JWT failed verification (``reason`` says which check)
    ├── PermissionDenied               policy decided deny (``reasons`` from the decision)
    ├── PolicyError                    a policy bundle failed to compile or evaluate
    └── BackendError                   something we depend on failed: retry or fix it
        ├── StoreUnavailable           the database
        ├── BusUnavailable             NATS
        ├── SecretsBackendUnavailable  Vault / OpenBao
        └── ToolMissing                a required system program is not installed
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AlreadyExists",
    "AuthenticationError",
    "BackendError",
    "BusUnavailable",
    "ConfigError",
    "InvalidInput",
    "NotFound",
    "PermissionDenied",
    "PolicyError",
    "SecretsBackendUnavailable",
    "StockadeError",
    "StoreUnavailable",
    "TokenRejected",
    "ToolMissing",
    "UserError",
]


class StockadeError(Exception):
    """Root of every error Stockade raises on purpose. ``str(err)`` is the user-facing line."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UserError(StockadeError):
    """The caller's input is wrong; fixing the input fixes the problem."""

    exit_code = 2


class InvalidInput(UserError):
    """A field, flag or file is malformed. ``field`` names it, ``problem`` says what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class NotFound(UserError):
    """A named thing (user, key, session, workspace, ...) does not exist."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name!r} not found")
        self.kind = kind
        self.name = name


class AlreadyExists(UserError):
    """A named thing exists already; ``owner`` says who has it when that helps."""

    def __init__(self, kind: str, name: str, *, detail: str = "") -> None:
        suffix = f" ({detail})" if detail else ""
        super().__init__(f"{kind} {name!r} already exists{suffix}")
        self.kind = kind
        self.name = name


class ConfigError(UserError):
    """The settings tree (environment, ``stockade.toml``) failed validation."""


class AuthenticationError(StockadeError):
    """A presented credential was rejected."""

    exit_code = 1


class TokenRejected(AuthenticationError):
    """A JWT failed verification; ``reason`` is a short machine-friendly word."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"token rejected: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason


class PermissionDenied(StockadeError):
    """Policy decided deny; ``reasons`` come from the decision."""

    def __init__(self, action: str, reasons: Sequence[str] = ()) -> None:
        why = "; ".join(reasons) if reasons else "no rule allowed it"
        super().__init__(f"{action} denied: {why}")
        self.action = action
        self.reasons = list(reasons)


class PolicyError(StockadeError):
    """A policy bundle failed to compile or evaluate. ``location`` is ``file:line`` when known."""

    exit_code = 2

    def __init__(self, message: str, *, location: str = "") -> None:
        super().__init__(f"{location}: {message}" if location else message)
        self.location = location


class BackendError(StockadeError):
    """Something Stockade depends on failed; the message says what and how to fix it."""


class StoreUnavailable(BackendError):
    """The database could not be reached or refused the operation."""


class BusUnavailable(BackendError):
    """NATS could not be reached."""


class SecretsBackendUnavailable(BackendError):
    """Vault / OpenBao could not be reached or refused the request."""


class ToolMissing(BackendError):
    """A required system program is missing; the message gives the apt-get line."""

    def __init__(self, program: str, package: str) -> None:
        super().__init__(
            f"{program} is not installed; install it with: apt-get install -y {package}"
        )
        self.program = program
        self.package = package
