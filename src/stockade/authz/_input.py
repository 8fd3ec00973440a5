"""The policy input document: built in exactly one place, :func:`build_input`.

Every caller (gateway, broker, CLI, gRPC server) describes a request with three small frozen
values — the :class:`Resource` acted on, the :class:`Subject` acting, and the request
:class:`Context` — and hands them to :func:`build_input`. The result is the document the
policies see as ``input``::

    {"action": "ssh.connect",
     "resource": {"kind": "workspace", "name": "ws1", "owner": "alice", "labels": {...}},
     "context": {"user": {"name": "alice", "roles": [...], "groups": [...], "auth_methods": [...]},
                 "source_ip": "203.0.113.7", "auth_method": "publickey", "mfa": false,
                 "time": "2024-05-01T12:00:00Z", "session_id": "s-1",
                 ...extra keys such as "command", "host", "port", "method"}}

Absent optional values are ``null`` in the document, never missing keys, so a policy can test
them without ``object.get``. :func:`parse_input` turns JSON from a file or the wire into the same
shape, validating it on the way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stockade.core.errors import InvalidInput

__all__ = ["Context", "Resource", "Subject", "build_input", "parse_input"]

_ACTION = re.compile(r"[a-z][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*")
_MAX_ACTION = 64
#: Keys of ``input.context`` that :class:`Context` fills itself; ``extra`` may not shadow them.
RESERVED_CONTEXT_KEYS = frozenset({"user", "source_ip", "auth_method", "mfa", "time", "session_id"})


def _strings(value: Sequence[str] | str, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(item, str) for item in value):
        raise InvalidInput(what, f"expected a list of strings, got {value!r}")
    return tuple(value)


#: Deepest nesting of objects and arrays accepted in ``context`` extras: policies read a level
#: or two, and the evaluator (regorus) recurses over the document.
MAX_DEPTH = 32


def _json_like(value: Any, where: str, depth: int = 0) -> Any:
    """Copy ``value`` as plain JSON types (dict/list/str/int/float/bool/None) or reject it."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if depth >= MAX_DEPTH:
        raise InvalidInput(where, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInput(where, f"keys must be strings, got {key!r}")
            out[key] = _json_like(item, f"{where}.{key}", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_json_like(item, where, depth + 1) for item in value]
    raise InvalidInput(where, f"{type(value).__name__} is not a JSON value")


@dataclass(frozen=True, slots=True)
class Resource:
    """What the request acts on: a workspace, a credential, a user, ...

    ``owner`` is the user name that owns the resource (``None`` when nobody does); ``labels``
    are free-form string pairs the policies may match on.
    """

    kind: str
    name: str
    owner: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise InvalidInput("resource.kind", "must be a non-empty string")
        if not isinstance(self.name, str):
            raise InvalidInput("resource.name", "must be a string")
        if self.owner is not None and not isinstance(self.owner, str):
            raise InvalidInput("resource.owner", "must be a string or null")
        if not isinstance(self.labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.labels.items()
        ):
            raise InvalidInput("resource.labels", "must map strings to strings")


@dataclass(frozen=True, slots=True)
class Subject:
    """Who is acting, as identity knows them.

    ``auth_methods`` lists the credentials the user has enrolled (``publickey``, ``password``,
    ``totp``), so a policy can tell whether password authentication is possible at all.
    """

    name: str
    roles: Sequence[str] = ()
    groups: Sequence[str] = ()
    auth_methods: Sequence[str] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInput("context.user.name", "must be a non-empty string")
        object.__setattr__(self, "roles", _strings(self.roles, "context.user.roles"))
        object.__setattr__(self, "groups", _strings(self.groups, "context.user.groups"))
        object.__setattr__(
            self, "auth_methods", _strings(self.auth_methods, "context.user.auth_methods")
        )


@dataclass(frozen=True, slots=True)
class Context:
    """The circumstances of a request.

    ``time`` defaults to the moment :func:`build_input` runs and must be timezone-aware;
    ``extra`` carries action-specific keys (``command`` for ``ssh.exec``, ``host``/``port`` for
    port forwarding, ``method`` for HTTP) and may not shadow the named fields.
    """

    user: Subject
    source_ip: str | None = None
    auth_method: str | None = None
    mfa: bool = False
    time: datetime | None = None
    session_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.user, Subject):
            raise InvalidInput("context.user", "must be a Subject")
        for name in ("source_ip", "auth_method", "session_id"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidInput(f"context.{name}", "must be a string or null")
        if not isinstance(self.mfa, bool):
            raise InvalidInput("context.mfa", "must be a boolean")
        if self.time is not None and (
            not isinstance(self.time, datetime) or self.time.utcoffset() is None
        ):
            raise InvalidInput("context.time", "must be a timezone-aware datetime")
        clash = RESERVED_CONTEXT_KEYS.intersection(self.extra)
        if clash:
            raise InvalidInput(
                "context.extra", f"{', '.join(sorted(clash))} is set by Context itself"
            )
        object.__setattr__(self, "extra", _json_like(self.extra, "context.extra"))


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def build_input(action: str, resource: Resource, context: Context) -> dict[str, Any]:
    """Build the policy input document (the authorization contract of docs/architecture.md).

    Raises :class:`~stockade.core.errors.InvalidInput` for a malformed ``action``.
    """
    if (
        not isinstance(action, str)
        or len(action) > _MAX_ACTION
        or _ACTION.fullmatch(action) is None
    ):
        raise InvalidInput("action", f"{action!r} is not an action such as ssh.connect")
    user = context.user
    ctx: dict[str, Any] = dict(context.extra)
    ctx.update(
        user={
            "name": user.name,
            "roles": list(user.roles),
            "groups": list(user.groups),
            "auth_methods": list(user.auth_methods),
        },
        source_ip=context.source_ip,
        auth_method=context.auth_method,
        mfa=context.mfa,
        time=_rfc3339(context.time or datetime.now(UTC)),
        session_id=context.session_id,
    )
    return {
        "action": action,
        "resource": {
            "kind": resource.kind,
            "name": resource.name,
            "owner": resource.owner,
            "labels": dict(resource.labels),
        },
        "context": ctx,
    }


def _section(doc: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{where}{key}", "must be an object")
    return value


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.utcoffset() is not None:
            return parsed
    raise InvalidInput("context.time", f"{value!r} is not an RFC 3339 time with a zone")


def parse_input(data: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """Validate an input document from JSON (a file, stdin, the wire) and rebuild it.

    The result has exactly the shape :func:`build_input` makes; unknown context keys are kept
    as extras. Raises :class:`~stockade.core.errors.InvalidInput` naming the bad field.
    """
    if isinstance(data, str | bytes):
        try:
            doc = json.loads(data)
        except ValueError as exc:  # UnicodeDecodeError of bytes too
            raise InvalidInput("input", f"not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidInput("input", "nested too deeply to parse") from None
    else:
        doc = data
    if not isinstance(doc, Mapping):
        raise InvalidInput("input", "must be a JSON object")
    resource = _section(doc, "resource", "")
    context = _section(doc, "context", "")
    user = _section(context, "user", "context.")
    extra = {k: v for k, v in context.items() if k not in RESERVED_CONTEXT_KEYS}
    try:
        return build_input(
            doc.get("action", ""),
            Resource(
                kind=resource.get("kind", ""),
                name=resource.get("name", ""),
                owner=resource.get("owner"),
                labels=resource.get("labels", {}),
            ),
            Context(
                user=Subject(
                    name=user.get("name", ""),
                    roles=user.get("roles", ()),
                    groups=user.get("groups", ()),
                    auth_methods=user.get("auth_methods", ()),
                ),
                source_ip=context.get("source_ip"),
                auth_method=context.get("auth_method"),
                mfa=context.get("mfa", False),
                time=_parse_time(context.get("time")),
                session_id=context.get("session_id"),
                extra=extra,
            ),
        )
    except TypeError as exc:  # a list where a string belongs, and the like
        raise InvalidInput("input", str(exc)) from None
