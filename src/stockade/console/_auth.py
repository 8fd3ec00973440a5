"""Sign-in for the console: one-time codes, console sessions and their CSRF tokens.

A code is made by ``stockade console login USER`` (:func:`issue_login_code`): 32 random bytes,
URL-safe, of which only the SHA-256 goes into the NATS KV bucket :data:`LOGIN_BUCKET` with a
TTL (:data:`CODE_TTL`). The URL carries it in its fragment, which browsers never send, so it is
in no request line and no access log. The login page's script POSTs it; :meth:`Sessions.redeem`
takes the code out of the bucket under a lock and remembers its hash until it expires, so a code
works once even when the purge has not reached every reader yet.

A console session is 32 random bytes in a ``Secure; HttpOnly; SameSite=Strict`` cookie, kept in
this process's memory by its SHA-256 (a restart signs everyone out), bound to the user and the
roles they had when they signed in; each request also reads the user's current roles and keeps
only those still held (a role taken away counts at once). Each session has its own CSRF token,
compared in constant time on every state-changing request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Protocol

from stockade.core.errors import InvalidInput

__all__ = [
    "CODE_TTL",
    "COOKIE",
    "LOGIN_BUCKET",
    "SESSION_TTL",
    "ConsoleSession",
    "LoginCodes",
    "Sessions",
    "code_key",
    "issue_login_code",
]

#: The NATS KV bucket holding the hashes of unused one-time codes.
LOGIN_BUCKET = "stockade_console_login"
#: Seconds a one-time code stays usable.
CODE_TTL = 120.0
#: Seconds a console session lasts (then sign in again).
SESSION_TTL = 8 * 3600.0
#: The session cookie's name.
COOKIE = "stockade_console"
_MAX_CODE = 128
_MAX_SESSIONS = 10_000


class LoginCodes(Protocol):
    """The KV bucket of codes (``stockade.bus.KeyValueStore`` satisfies it)."""

    async def put(self, key: str, value: bytes, *, ttl: float | None = None) -> int: ...

    async def get(self, key: str) -> object | None: ...

    async def delete(self, key: str) -> None: ...


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def code_key(code: str) -> str:
    """The bucket key of ``code``: its SHA-256, never the code itself."""
    return f"code.{_digest(code)}"


async def issue_login_code(codes: LoginCodes, username: str, *, ttl: float = CODE_TTL) -> str:
    """A new one-time code for ``username`` (stored hashed, expiring after ``ttl`` seconds)."""
    code = secrets.token_urlsafe(32)
    record = json.dumps({"user": username, "issued": time.time()}).encode()
    await codes.put(code_key(code), record, ttl=ttl)
    return code


@dataclass
class ConsoleSession:
    """One signed-in browser."""

    user: str
    roles: tuple[str, ...]
    """The roles the user held at sign-in: the most this session may ever use."""
    csrf: str
    expires: float
    created: float = field(default_factory=time.time)


class Sessions:
    """Console sessions in memory, and the redemption of one-time codes."""

    def __init__(self, codes: LoginCodes, *, ttl: float = SESSION_TTL) -> None:
        self._codes = codes
        self._ttl = ttl
        self._by_hash: dict[str, ConsoleSession] = {}
        self._used: dict[str, float] = {}
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<console Sessions: {len(self._by_hash)} signed in>"

    async def redeem(self, code: str) -> str | None:
        """The user name ``code`` was issued for, once; None for an unknown, expired or used
        code (the caller says the same thing for each)."""
        if not isinstance(code, str) or not code or len(code) > _MAX_CODE:
            return None
        if any(not (c.isalnum() or c in "-_") for c in code):
            return None
        key = code_key(code)
        now = time.time()
        async with self._lock:
            self._used = {k: t for k, t in self._used.items() if t > now}
            if key in self._used:
                return None
            entry = await self._codes.get(key)
            value = getattr(entry, "value", None)
            if not isinstance(value, bytes | bytearray):
                return None
            self._used[key] = now + CODE_TTL + 60
            await self._codes.delete(key)
        try:
            record = json.loads(value)
            user = record["user"]
            issued = float(record["issued"])
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(user, str) or now - issued > CODE_TTL + 5:
            return None  # a TTL the bucket did not apply: refuse it anyway
        return user

    def open(self, user: str, roles: tuple[str, ...]) -> tuple[str, ConsoleSession]:
        """A new session for ``user``: the cookie value and the session."""
        now = time.time()
        self._by_hash = {k: s for k, s in self._by_hash.items() if s.expires > now}
        if len(self._by_hash) >= _MAX_SESSIONS:
            raise InvalidInput("session", "too many console sessions; try again later")
        cookie = secrets.token_urlsafe(32)
        session = ConsoleSession(
            user=user, roles=roles, csrf=secrets.token_urlsafe(32), expires=now + self._ttl
        )
        self._by_hash[_digest(cookie)] = session
        return cookie, session

    def get(self, cookie: str | None) -> ConsoleSession | None:
        """The live session of ``cookie``; None when absent, unknown, expired or logged out."""
        if not cookie or len(cookie) > _MAX_CODE:
            return None
        key = _digest(cookie)
        session = self._by_hash.get(key)
        if session is None:
            return None
        if session.expires <= time.time():
            self._by_hash.pop(key, None)
            return None
        return session

    def close(self, cookie: str | None) -> bool:
        """Log out: the cookie is refused from now on."""
        if not cookie or len(cookie) > _MAX_CODE:
            return False
        return self._by_hash.pop(_digest(cookie), None) is not None

    def close_user(self, user: str) -> int:
        """End every session of ``user`` (disabled or removed)."""
        gone = [k for k, s in self._by_hash.items() if s.user == user]
        for key in gone:
            del self._by_hash[key]
        return len(gone)

    @staticmethod
    def csrf_ok(session: ConsoleSession, sent: str | None) -> bool:
        """True when ``sent`` is the session's CSRF token (constant-time)."""
        if not sent or len(sent) > _MAX_CODE:
            return False
        return hmac.compare_digest(session.csrf.encode(), sent.encode())
