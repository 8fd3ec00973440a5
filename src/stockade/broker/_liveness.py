"""Session liveness held in memory: the broker's token check without a store round trip.

:class:`LiveSessions` wraps identity's :class:`~stockade.broker.TokenVerifier`. A token identity
accepted is remembered (by its SHA-256, never the token itself) with its claims, and answered from
memory on the next request while all of these hold:

- the bus is connected in the same epoch as when the bus subscription started
  (:attr:`stockade.bus.Bus.epoch`): ``stockade.session.ended`` and ``stockade.session.kill``
  arrive on a core subscription, which misses what is published while disconnected;
- the entry is younger than ``max_age`` seconds (a bound on what a lost event can cost);
- the token has not expired.

``stockade.session.ended`` and ``stockade.session.kill`` drop every entry of the session (a kill
naming a user with session ``*``: every entry of the user) and remember the session as dead, so
it is refused even if the store still calls it live (a kill is carried out by the gateway a
moment later). ``stockade.identity.changed`` (user disabled or removed, roles, keys, ...) drops
every entry of the user: identity's roles count at once, and a token without a session has no
kill to drop it. An answer of identity that was in flight while any of these arrived is used
for its own request but never remembered (it may predate the change).

Without a bus (:meth:`attach` never called), or on any doubt, every request goes to identity,
as before: the store is the fallback, never a cache of secrets.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from stockade.bus import Bus
from stockade.core.errors import InvalidInput, TokenRejected
from stockade.core.events import (
    SUBJECT_IDENTITY_CHANGED,
    SUBJECT_SESSION_ENDED,
    SUBJECT_SESSION_KILL,
    IdentityChanged,
    SessionEnded,
    SessionKill,
)
from stockade.core.logging import escape_peer, get_logger

from ._types import ClaimsLike, TokenVerifier

__all__ = ["LiveSessions"]

_log = get_logger("stockade.broker.liveness")

#: Sessions remembered as ended or killed (oldest forgotten first).
_DEAD_MEMORY = 65536


@dataclass(slots=True)
class _Entry:
    claims: ClaimsLike
    sid: str | None
    sub: str
    at: float
    exp: float
    epoch: int


class LiveSessions:
    """A :class:`~stockade.broker.TokenVerifier` remembering verified sessions (see the module).

    ``max_entries`` bounds memory: when full, the oldest entry goes. ``clock`` is monotonic
    seconds (tests move it).
    """

    def __init__(
        self,
        identity: TokenVerifier,
        *,
        max_age: float = 5.0,
        max_entries: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._identity = identity
        self._max_age = max_age
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._dead: OrderedDict[str, None] = OrderedDict()
        self._bus: Bus | None = None
        self._epoch = -1
        self._unsubscribe: list[Callable[[], Awaitable[None]]] = []
        self._on_end: dict[str, list[Callable[[str], None]]] = {}
        #: Bumped by every invalidation: an answer fetched across a bump is not remembered.
        self._changes = 0
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        state = "attached" if self._bus is not None else "store only"
        return f"<LiveSessions {state} entries={len(self._entries)}>"

    # -- the bus -----------------------------------------------------------------------------

    async def attach(self, bus: Bus) -> None:
        """Follow session ends and kills on ``bus``; from then on verified tokens are held in
        memory. Raises :class:`~stockade.core.errors.BusUnavailable` when it cannot subscribe."""
        self._entries.clear()
        self._unsubscribe = [
            await bus.subscribe(SUBJECT_SESSION_ENDED, self._on_message),
            await bus.subscribe(SUBJECT_SESSION_KILL, self._on_message),
            await bus.subscribe(SUBJECT_IDENTITY_CHANGED, self._on_message),
        ]
        await bus.flush()  # the server has the subscriptions before anything is trusted
        self._bus = bus
        self._epoch = bus.epoch

    async def detach(self) -> None:
        """Stop following the bus; every request goes to identity again."""
        self._bus = None
        self._entries.clear()
        unsubscribe, self._unsubscribe = self._unsubscribe, []
        for call in unsubscribe:
            await call()

    async def _on_message(self, subject: str, data: bytes) -> None:
        try:
            if subject == SUBJECT_SESSION_KILL:
                kill = SessionKill.from_bytes(data)
                if kill.session_id == "*":
                    if kill.username:
                        self.user_killed(kill.username)
                    # a workspace-wide kill: each ended session follows as its SessionEnded
                else:
                    self.session_ended(kill.session_id)
            elif subject == SUBJECT_IDENTITY_CHANGED:
                self.user_changed(IdentityChanged.from_bytes(data).username)
            else:
                self.session_ended(SessionEnded.from_bytes(data).session_id)
        except InvalidInput as exc:
            _log.warning("session_event_malformed", subject=subject, error=escape_peer(str(exc)))

    # -- invalidation ------------------------------------------------------------------------

    def session_ended(self, session_id: str) -> None:
        """Forget ``session_id``'s tokens and refuse them from now on."""
        if not session_id:
            return
        self._changes += 1
        self._dead[session_id] = None
        while len(self._dead) > _DEAD_MEMORY:
            self._dead.popitem(last=False)
        for key in [k for k, e in self._entries.items() if e.sid == session_id]:
            del self._entries[key]
        for callback in self._on_end.pop(session_id, []):
            with contextlib.suppress(Exception):
                callback(session_id)

    def user_killed(self, username: str) -> None:
        """Every session of ``username`` held here ends; its other tokens go to identity."""
        self._changes += 1
        sids = {e.sid for e in self._entries.values() if e.sub == username and e.sid}
        for key in [k for k, e in self._entries.items() if e.sub == username]:
            del self._entries[key]
        for sid in sids:
            self.session_ended(sid)

    def user_changed(self, username: str) -> None:
        """Forget every entry of ``username``: the next request asks identity (roles, disabled)."""
        self._changes += 1
        for key in [k for k, e in self._entries.items() if e.sub == username]:
            del self._entries[key]

    def on_end(self, session_id: str, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(session_id)`` once when the session ends or is killed (the bus says
        so); returns the function that cancels it."""
        self._on_end.setdefault(session_id, []).append(callback)

        def cancel() -> None:
            callbacks = self._on_end.get(session_id, [])
            with contextlib.suppress(ValueError):
                callbacks.remove(callback)
            if not callbacks:
                self._on_end.pop(session_id, None)

        return cancel

    def is_dead(self, session_id: str | None) -> bool:
        """True when the bus said ``session_id`` ended or was killed."""
        return session_id is not None and session_id in self._dead

    # -- verification ------------------------------------------------------------------------

    def _trusted_epoch(self) -> int | None:
        bus = self._bus
        if bus is None or self._max_age <= 0:
            return None
        epoch = bus.epoch
        if epoch != self._epoch:  # disconnected, or reconnected: events may have been missed
            self._entries.clear()
            if epoch >= 0:
                self._epoch = epoch
            return None
        return epoch

    async def verify_token(self, token: str, *, audience: str | None = None) -> ClaimsLike:
        """Identity's answer for ``token``, from memory when it may be (see the module)."""
        key = hashlib.sha256(f"{audience or ''}\0{token}".encode()).digest()
        epoch = self._trusted_epoch()
        entry = self._entries.get(key)
        if entry is not None and epoch is not None:
            if (
                entry.epoch == epoch
                and self._clock() - entry.at < self._max_age
                and time.time() < entry.exp
            ):
                self.hits += 1
                return entry.claims
            del self._entries[key]
        self.misses += 1
        changes = self._changes
        claims = await self._identity.verify_token(token, audience=audience)
        if self.is_dead(claims.sid):
            raise TokenRejected("session_ended", "the session was ended or killed")
        if epoch is not None and changes == self._changes and epoch == self._trusted_epoch():
            self._entries[key] = _Entry(
                claims=claims,
                sid=claims.sid,
                sub=claims.sub,
                at=self._clock(),
                exp=claims.exp.timestamp(),
                epoch=epoch,
            )
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return claims

    async def check_claims(self, claims: ClaimsLike) -> ClaimsLike:
        """``claims`` handed over by a trusted caller (a per-session socket opened with claims):
        refused once expired, once the bus said their session ended, or when identity's
        ``is_session_live`` (asked as :meth:`verify_token` asks for tokens) says it is not."""
        if time.time() >= claims.exp.timestamp():
            raise TokenRejected("expired", "the session's claims expired")
        sid = claims.sid
        if sid is None:
            raise TokenRejected("session_ended", "claims without a session")
        if self.is_dead(sid):
            raise TokenRejected("session_ended", "the session was ended or killed")
        key = b"sid\0" + sid.encode()
        epoch = self._trusted_epoch()
        entry = self._entries.get(key)
        if entry is not None and epoch is not None:
            if entry.epoch == epoch and self._clock() - entry.at < self._max_age:
                self.hits += 1
                return claims
            del self._entries[key]
        self.misses += 1
        changes = self._changes
        checker = getattr(self._identity, "is_session_live", None)
        if checker is None or not await checker(sid):
            raise TokenRejected("session_ended", "the session is not live")
        if self.is_dead(sid):  # ended or killed while the store was asked
            raise TokenRejected("session_ended", "the session was ended or killed")
        if epoch is not None and changes == self._changes and epoch == self._trusted_epoch():
            self._entries[key] = _Entry(
                claims=claims, sid=sid, sub=claims.sub, at=self._clock(),
                exp=claims.exp.timestamp(), epoch=epoch,
            )  # fmt: skip
        return claims
