"""The settings tree described: effective values with their source, and the reference page.

:func:`effective_settings` lists every setting of a loaded :class:`~.settings.Settings` with its
value and where the value came from (``default``, ``file`` or ``env``); secrets show as
``[secure]``, as do passwords inside URLs. :func:`settings_reference` renders
``docs/configuration.md`` from the tree itself (section, key, environment variable, default,
meaning), so the page cannot drift from the code: a test compares the committed file with it.
"""

from __future__ import annotations

import ipaddress
import json
import re
import types
import typing
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .durations import format_duration
from .settings import ENV_ALIASES, Settings, env_name, setting_origin

__all__ = ["SECURE", "SettingValue", "effective_settings", "settings_reference"]

#: What a secret shows as.
SECURE = "[secure]"
_USERINFO = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/]*):(?P<pw>[^@/]*)@")


@dataclass(frozen=True)
class SettingValue:
    """One setting as in force: dotted ``key``, plain JSON ``value``, ``source`` (``default``,
    ``file``, ``env`` or ``argument``), ``origin`` (the variable or file; "" for defaults) and
    the ``env`` variable that would set it."""

    key: str
    value: Any
    source: str
    origin: str
    env: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "value": self.value,
            "source": self.source,
            "origin": self.origin,
            "env": self.env,
        }


def _redact_url(text: str) -> str:
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{SECURE}@", text)


def plain(value: Any) -> Any:
    """``value`` as JSON types, secrets redacted."""
    if isinstance(value, SecretStr):
        return SECURE
    if isinstance(value, BaseModel):
        return {name: plain(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, str):
        return _redact_url(value)
    return value


def _section_type(info: FieldInfo) -> type[BaseModel] | None:
    annotation = info.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _item_model(info: FieldInfo) -> type[BaseModel] | None:
    """The model of a ``list[Model]`` field (``broker.routes``, ``broker.clusters``)."""
    if typing.get_origin(info.annotation) is list:
        (item,) = typing.get_args(info.annotation)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def effective_settings(
    settings: Settings, overrides: dict[str, Any] | None = None
) -> list[SettingValue]:
    """Every leaf setting of ``settings`` with its value and source, in tree order."""
    out: list[SettingValue] = []

    def walk(model: BaseModel, path: tuple[str, ...]) -> None:
        for name, info in type(model).model_fields.items():
            here = (*path, name)
            value = getattr(model, name)
            if _section_type(info) is not None and isinstance(value, BaseModel):
                walk(value, here)
                continue
            kind, where = setting_origin(here, overrides)
            out.append(
                SettingValue(
                    key=".".join(here),
                    value=plain(value),
                    source=kind,
                    origin=where,
                    env=env_name(here),
                )
            )

    walk(settings, ())
    return out


def _default(info: FieldInfo) -> str:
    if info.default is PydanticUndefined and info.default_factory is None:
        return "(required)"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    shown = plain(value)
    if isinstance(shown, str):
        return f"`{shown}`" if shown else '`""`'
    return f"`{json.dumps(shown)}`"


def _markdown(text: str | None) -> str:
    """A docstring as one Markdown table cell: ``x`` -> `x`, no line breaks, pipes escaped."""
    if not text:
        return ""
    one_line = " ".join(line.strip() for line in text.strip().splitlines())
    return re.sub(r"``([^`]+)``", r"`\1`", one_line).replace("|", "\\|")


def _type_name(info: FieldInfo) -> str:
    return _describe_type(info.annotation)


def _describe_type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is typing.Annotated:
        return _describe_type(args[0])
    if origin in (typing.Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        text = " or ".join(_describe_type(a) for a in kept)
        return f"{text} (optional)" if len(kept) < len(args) else text
    if origin is list:
        return f"list of {_describe_type(args[0])}"
    if origin is dict:
        return f"table of {_describe_type(args[0])} to {_describe_type(args[1])}"
    names = {
        timedelta: "duration",
        ipaddress.IPv4Network: "IPv4 CIDR",
        ipaddress.IPv6Network: "IPv6 CIDR",
        SecretStr: "secret string",
        Path: "path",
        str: "string",
    }
    if annotation in names:
        return names[annotation]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table (below)"
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def _aliases(path: tuple[str, ...]) -> list[str]:
    return [alias for alias, target in ENV_ALIASES.items() if target == path]


def settings_reference() -> str:
    """``docs/configuration.md``: every setting by section (generated; do not edit by hand)."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `stockade config reference -o docs/configuration.md`;"
        " do not edit by hand. -->",
        "",
        "Settings come from, highest priority first: `STOCKADE_*` environment variables",
        "(nested sections joined with `__`, e.g. `STOCKADE_GATEWAY__PORT=2222`; lists and",
        "tables as JSON), a few well-known names (`VAULT_ADDR`, `VAULT_TOKEN`,",
        "`STOCKADE_NATS_URL`, `STOCKADE_DATABASE_URL`), then the TOML file named by",
        "`STOCKADE_CONFIG` or `./stockade.toml` (sections as `[gateway]`, lists of tables as",
        "`[[broker.clusters]]`). A misspelled key or section is an error. Durations are written",
        "`90s`, `15m`, `1h30m`, `7d` (at most 100 years). `stockade config show` prints the",
        "settings in force and where each value came from.",
        "",
    ]

    def table_rows(model: type[BaseModel], path: tuple[str, ...], env_prefix: str | None) -> None:
        for name, info in model.model_fields.items():
            here = (*path, name)
            if _section_type(info) is not None:
                continue
            if env_prefix is None:
                env = " ".join(f"`{v}`" for v in [env_name(here), *_aliases(here)])
            else:
                env = env_prefix
            lines.append(
                f"| `{'.'.join(here)}` | {env} | {_type_name(info)} | {_default(info)}"
                f" | {_markdown(info.description)} |"
            )

    def section(model: type[BaseModel], path: tuple[str, ...], title: str) -> None:
        lines.append(f"## {title}")
        lines.append("")
        if model.__doc__ and model is not Settings:
            lines.append(_markdown(model.__doc__).replace("\\|", "|"))
            lines.append("")
        lines.append("| key | environment | type | default | meaning |")
        lines.append("| --- | --- | --- | --- | --- |")
        table_rows(model, path, None)
        lines.append("")
        for name, info in model.model_fields.items():
            item = _item_model(info)
            if item is not None:
                here = (*path, name)
                lines.append(f"### `[[{'.'.join(here)}]]` entries")
                lines.append("")
                lines.append(_markdown(info.description))
                lines.append("")
                lines.append("| key | environment | type | default | meaning |")
                lines.append("| --- | --- | --- | --- | --- |")
                table_rows(item, (*here[:-1], f"{here[-1]}[]"), f"in `{env_name(here)}` (JSON)")
                lines.append("")
        for name, info in model.model_fields.items():
            sub = _section_type(info)
            if sub is not None:
                here = (*path, name)
                section(sub, here, f"`[{'.'.join(here)}]`")

    section(Settings, (), "Top level")
    return "\n".join(lines).rstrip("\n") + "\n"
