"""Provisioning obligations applied to a rendered Pod as JSON patches (k8shell's
``patch:<json-pointer>``).

An authz ``workspace.provision`` decision may carry obligations named ``patch:/spec/...``; each
sets the value at that RFC 6901 pointer of the Pod (adding missing objects on the way, ``-``
appending to a list). The patched Pod must still meet its blueprint's Pod Security level, and
must keep the hardening the level does not spell out (read-only root, no service-account token,
user namespaces where the blueprint has them); a patch that weakens any of it is refused, naming
the obligation and the failed check. Decide first, apply once: every patch is applied to a copy,
and the copy replaces the Pod only when all are accepted.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from stockade.core.errors import InvalidInput

from ._pss import Level, check_object

__all__ = ["PATCH_PREFIX", "apply_patches"]

PATCH_PREFIX = "patch:"


def _tokens(pointer: str, obligation: str) -> list[str]:
    if not pointer.startswith("/"):
        raise InvalidInput(obligation, "a JSON pointer starts with '/'")
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/")]


def _set(document: Any, tokens: list[str], value: Any, obligation: str) -> None:
    node = document
    for index, token in enumerate(tokens):
        last = index == len(tokens) - 1
        if isinstance(node, list):
            if token == "-":  # noqa: S105 - the JSON pointer append token
                if not last:
                    raise InvalidInput(obligation, "'-' may only end a pointer")
                node.append(copy.deepcopy(value))
                return
            if not token.isdigit() or int(token) >= len(node):
                raise InvalidInput(obligation, f"no list item {token!r}")
            if last:
                node[int(token)] = copy.deepcopy(value)
                return
            node = node[int(token)]
        elif isinstance(node, dict):
            if last:
                node[token] = copy.deepcopy(value)
                return
            node = node.setdefault(token, {})
        else:
            raise InvalidInput(obligation, f"{token!r} is below a value that is not an object")


def _hardening(pod: Mapping[str, Any]) -> dict[str, Any]:
    spec = pod.get("spec", {})
    return {
        "automountServiceAccountToken": spec.get("automountServiceAccountToken"),
        "hostUsers": spec.get("hostUsers", True),
        "readOnlyRootFilesystem": [
            (c.get("name"), c.get("securityContext", {}).get("readOnlyRootFilesystem"))
            for c in spec.get("containers", [])
        ],
    }


def apply_patches(
    pod: Mapping[str, Any], obligations: Mapping[str, Any], level: Level
) -> dict[str, Any]:
    """``pod`` with every ``patch:`` obligation applied (others are ignored). Raises
    :class:`InvalidInput` naming the obligation when a pointer is malformed, or when the result
    fails ``level`` or loses hardening the original had."""
    patched = copy.deepcopy(dict(pod))
    before = _hardening(pod)
    for name in sorted(obligations):
        if not name.startswith(PATCH_PREFIX):
            continue
        tokens = _tokens(name.removeprefix(PATCH_PREFIX), name)
        if tokens[0] in {"apiVersion", "kind"} or tokens[:2] == ["metadata", "name"]:
            raise InvalidInput(name, "a patch may not change the object's identity")
        trial = copy.deepcopy(patched)
        _set(trial, tokens, obligations[name], name)
        violations = check_object(trial, level)
        if violations:
            first = violations[0]
            raise InvalidInput(
                name, f"refused: it would fail Pod Security {level} ({first.check}: {first.detail})"
            )
        after = _hardening(trial)
        for key, value in before.items():
            if after[key] != value:
                raise InvalidInput(name, f"refused: it would weaken {key}")
        patched = trial
    return patched
