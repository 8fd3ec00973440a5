"""Identity: users, roles, SSH keys, passwords, TOTP, workspaces, sessions, JWTs, JWKS.

:class:`IdentityService` is the interface other packages call (directly in one process, over
gRPC when split); it keeps its state in :class:`stockade.store.Store` and its signing keys in a
:class:`KeyRing` directory. Everything it returns is a frozen dataclass.
"""

from ._keys import ParsedKey, fingerprint, parse_public_key
from ._passwords import PasswordHasher, TotpEnrollment, totp_code
from ._service import IdentityService
from ._tokens import Claims, KeyRing
from ._types import SessionInfo, SshKey, User, Workspace

__all__ = [
    "Claims",
    "IdentityService",
    "KeyRing",
    "ParsedKey",
    "PasswordHasher",
    "SessionInfo",
    "SshKey",
    "TotpEnrollment",
    "User",
    "Workspace",
    "fingerprint",
    "parse_public_key",
    "totp_code",
]
