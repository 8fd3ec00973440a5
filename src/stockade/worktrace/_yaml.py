"""YAML read with the line of every key, so rule errors can name ``file:line`` and the key."""

from __future__ import annotations

from typing import Any

import yaml

from stockade.core.errors import InvalidInput

__all__ = ["Located", "load_located"]

Path = tuple[str | int, ...]

#: Nodes built for one document at most: aliases are expanded, so an alias bomb stops here.
MAX_NODES = 100_000


class Located:
    """A YAML document's plain value and the 1-based line of each path (keys and indexes)."""

    __slots__ = ("lines", "source", "value")

    def __init__(self, value: Any, lines: dict[Path, int], source: str) -> None:
        self.value = value
        self.lines = lines
        self.source = source

    def line(self, path: Path) -> int:
        """The line of ``path`` or of its nearest ancestor that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def where(self, path: Path) -> str:
        return f"{self.source}:{self.line(path)}"


def _build(
    node: yaml.Node, path: Path, lines: dict[Path, int], where: str, budget: list[int]
) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise InvalidInput(
            f"{where}:{node.start_mark.line + 1}",
            f"more than {MAX_NODES} values once aliases are expanded (an alias bomb?)",
        )
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _build(key_node, (*path, "<key>"), {}, where, budget)
            if not isinstance(key, str):
                raise InvalidInput(
                    f"{where}:{key_node.start_mark.line + 1}", f"key {key!r} is not a string"
                )
            if key in out:
                raise InvalidInput(
                    f"{where}:{key_node.start_mark.line + 1}", f"duplicate key {key}"
                )
            lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _build(value_node, (*path, key), lines, where, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), lines, where, budget) for i, item in enumerate(node.value)]
    constructor = yaml.SafeLoader("")
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{where}:{node.start_mark.line + 1}", str(exc)) from None


def load_located(text: str, source: str) -> Located:
    """Parse one YAML document; raises :class:`InvalidInput` (``file:line``) on bad YAML."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else 1
        raise InvalidInput(f"{source}:{line}", exc.problem or "not valid YAML") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(source, f"not valid YAML ({exc})") from None
    except RecursionError:
        raise InvalidInput(source, "nested too deeply") from None
    lines: dict[Path, int] = {}
    try:
        value = None if node is None else _build(node, (), lines, source, [MAX_NODES])
    except RecursionError:
        raise InvalidInput(source, "nested too deeply") from None
    return Located(value, lines, source)
