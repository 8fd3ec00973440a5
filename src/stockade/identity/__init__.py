"""Identity: users, roles, SSH keys, passwords, TOTP, workspaces, sessions, JWTs, JWKS.

:class:`IdentityService` is the interface other packages call (directly in one process, over
gRPC when split); it keeps its state in :class:`stockade.store.Store` and its signing keys in a
:class:`KeyRing` directory. Everything it returns is a frozen dataclass.
"""

from ._api import IdentityAPI
from ._keys import ParsedKey, fingerprint, parse_public_key
from ._oidc import OidcIdentity, OidcLogin, OidcVerifier
from ._passwords import PasswordHasher, TotpEnrollment, totp_code
from ._service import IdentityService
from ._target import MAX_TARGET_LEN, Target, parse_target
from ._tokens import Claims, KeyRing
from ._types import (
    AuthFailure,
    Heartbeat,
    OpenedSession,
    Principal,
    SessionInfo,
    SessionRequest,
    SshKey,
    User,
    Workspace,
)
from ._validation import check_username, check_workspace

__all__ = [
    "MAX_TARGET_LEN",
    "AuthFailure",
    "Claims",
    "Heartbeat",
    "IdentityAPI",
    "IdentityService",
    "KeyRing",
    "OidcIdentity",
    "OidcLogin",
    "OidcVerifier",
    "OpenedSession",
    "ParsedKey",
    "PasswordHasher",
    "Principal",
    "SessionInfo",
    "SessionRequest",
    "SshKey",
    "Target",
    "TotpEnrollment",
    "User",
    "Workspace",
    "check_username",
    "check_workspace",
    "fingerprint",
    "parse_public_key",
    "parse_target",
    "totp_code",
]
