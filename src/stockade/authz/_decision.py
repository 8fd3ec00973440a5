"""The result of a policy evaluation, and how a raw ``data.stockade.decision`` becomes one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stockade.core.errors import PermissionDenied

from ._obligations import NONE, ObligationError, Obligations, parse_obligations

__all__ = ["DECISION_RULE", "Decision", "decision_from_value"]

#: Where every bundle must put its verdict.
DECISION_RULE = "data.stockade.decision"

_EMPTY: Mapping[str, Any] = {}


@dataclass(frozen=True, slots=True)
class Decision:
    """An authorization verdict: ``allow``, the typed ``obligations`` to enforce, and ``reasons``.

    ``obligations`` is a frozen :class:`Obligations` (a deny carries none). ``reasons`` explain a
    deny (and may be empty on an allow).
    """

    allow: bool
    obligations: Obligations = field(default=NONE)
    reasons: tuple[str, ...] = ()

    @classmethod
    def from_parts(
        cls, allow: bool, obligations: Mapping[str, Any], reasons: tuple[str, ...] = ()
    ) -> Decision:
        """A decision from raw obligations (a remote answer, say): an unknown or ill-typed
        obligation makes it a deny naming it."""
        try:
            typed = parse_obligations(obligations)
        except ObligationError as exc:
            return cls.deny(f"{DECISION_RULE}.obligations: {exc}")
        return cls(allow=allow, obligations=typed if allow else NONE, reasons=reasons)

    @classmethod
    def deny(cls, reason: str) -> Decision:
        """A deny carrying one ``reason`` and no obligations."""
        return cls(allow=False, reasons=(reason,))

    def raise_for_deny(self, action: str) -> None:
        """Raise :class:`~stockade.core.errors.PermissionDenied` unless this is an allow."""
        if not self.allow:
            raise PermissionDenied(action, self.reasons)

    def to_dict(self) -> dict[str, Any]:
        """The decision as JSON-ready data (the shape of ``data.stockade.decision``)."""
        return {
            "allow": self.allow,
            "obligations": self.obligations.to_dict(),
            "reasons": list(self.reasons),
        }


def _plain(value: Any) -> Any:
    """Rego numbers arrive as floats; integral ones become ints, sets become sorted lists."""
    kind = type(value)
    if kind is bool or kind is str or value is None:
        return value
    if kind is float:
        return int(value) if value.is_integer() else value
    if kind is dict:
        return {key: _plain(item) for key, item in value.items()}
    if kind is list:
        return [_plain(item) for item in value]
    if kind is set or kind is frozenset:
        return sorted((_plain(item) for item in value), key=repr)
    return value


def decision_from_value(value: Any) -> Decision:
    """Turn the raw value of :data:`DECISION_RULE` into a :class:`Decision`.

    Anything but ``{"allow": bool, "obligations": {str: ...}, "reasons": [str]}`` (obligations
    and reasons optional) is a deny whose reason says what was wrong. This runs on every
    decision, hence exact type checks (regorus returns plain dicts, lists, sets and floats).
    """
    if type(value) is not dict:
        if value is None:
            return Decision.deny(f"{DECISION_RULE} is undefined for this input")
        return Decision.deny(f"{DECISION_RULE} is not an object")
    allow = value.get("allow")
    if type(allow) is not bool:
        return Decision.deny(f"{DECISION_RULE}.allow is not a boolean")
    raw_obligations = value.get("obligations", _EMPTY)
    if type(raw_obligations) is not dict and raw_obligations is not _EMPTY:
        return Decision.deny(f"{DECISION_RULE}.obligations is not an object")
    obligations = {}
    for key, item in raw_obligations.items():
        if type(key) is not str:
            return Decision.deny(f"{DECISION_RULE}.obligations is not an object")
        obligations[key] = _plain(item)
    try:
        typed = parse_obligations(obligations) if allow else NONE
    except ObligationError as exc:
        return Decision.deny(f"{DECISION_RULE}.obligations: {exc}")
    reasons = value.get("reasons", ())
    if type(reasons) is set:
        reasons = sorted(reasons, key=repr)
    if (type(reasons) is not list and type(reasons) is not tuple) or not all(
        type(r) is str for r in reasons
    ):
        return Decision.deny(f"{DECISION_RULE}.reasons is not a list of strings")
    return Decision(allow=allow, obligations=typed, reasons=tuple(reasons))
