"""Blueprints: what a workspace runs, described once and rendered for Kubernetes and Podman.

A blueprint carries k8shell's fields (``name``, ``template``/``isTemplate``, ``image``, ``env``,
``resources``, ``storages``, ``initScripts``, ``podman``, ``network``, ``securityContext``),
spelled in camelCase as in YAML. ``template`` names a parent blueprint whose fields fill in
whatever the child leaves unset (:func:`resolve`); a blueprint with ``isTemplate: true`` is
only a parent and never renders.

Two audiences write them: administrators (``stockade blueprints add``) may set everything; a
repository's ``.stockade.yaml`` (:func:`parse_repository_file`) may set ``image``, ``env``,
``initScripts`` and ``apps`` only, and each attempt at anything else (security settings,
``privileged``, host namespaces, ``hostPath`` volumes, capabilities, ...) is refused naming the
field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stockade.core.errors import InvalidInput

__all__ = [
    "DEFAULT_BLUEPRINT",
    "App",
    "Blueprint",
    "NetworkSpec",
    "RepositoryFile",
    "Resources",
    "Storage",
    "WorkspaceSecurity",
    "load_blueprint",
    "parse_repository_file",
    "resolve",
]

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
_MOUNT = re.compile(r"^/[A-Za-z0-9._/-]*$")
#: Environment variables the runtime sets itself; a blueprint may not override them.
RESERVED_ENV = frozenset(
    {
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "STOCKADE_TOKEN",
        "STOCKADE_SOCKET",
        "STOCKADE_CREDENTIAL_SOCKET",
        "SSH_AUTH_SOCK",
        "GIT_CONFIG_COUNT",
    }
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _quantity(value: str) -> str:
    if not _QUANTITY.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 512Mi)")
    return value


class Resources(_Model):
    """Requests and limits of the workspace container (k8shell's defaults: 500m and 512Mi)."""

    cpu: str = "500m"
    memory: str = "512Mi"

    _check = field_validator("cpu", "memory")(_quantity)


class Storage(_Model):
    """A persistent volume claim mounted at ``mountPath`` (``home: true`` makes it $HOME)."""

    name: str
    mount_path: str = Field(alias="mountPath")
    size: str = "10Gi"
    home: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be a DNS-1123 label (lowercase letters, digits, '-')")
        return value

    @field_validator("mount_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not _MOUNT.match(value) or ".." in value.split("/"):
            raise ValueError("must be an absolute path without '..'")
        return value

    _size = field_validator("size")(_quantity)


class NetworkSpec(_Model):
    """Where a workspace may connect: ``workspace`` (the internet and the broker), ``isolated``
    (the broker only) or ``custom`` (the broker and the ``allow`` list of FQDNs and CIDRs)."""

    class_: Literal["workspace", "isolated", "custom"] = Field(default="workspace", alias="class")
    allow: tuple[str, ...] = ()

    @field_validator("allow")
    @classmethod
    def _allow(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not re.match(r"^(\*\.)?[A-Za-z0-9.-]+(/[0-9]{1,3})?$", item) or len(item) > 253:
                raise ValueError(f"{item!r} is neither an FQDN nor a CIDR")
        return value


class WorkspaceSecurity(_Model):
    """The administrator-only security settings of a blueprint. Nothing here can weaken the
    restricted defaults except what a Pod Security level allows: the Podman sidecar lowers the
    blueprint's level to ``baseline`` (and turns on user namespaces)."""

    run_as_user: int | None = Field(default=None, alias="runAsUser", ge=1000, le=2**31 - 1)
    """A fixed uid; unset: the per-workspace uid the runtime allocates."""
    run_as_group: int | None = Field(default=None, alias="runAsGroup", ge=1000, le=2**31 - 1)
    read_only_root_filesystem: bool = Field(default=True, alias="readOnlyRootFilesystem")
    level: Literal["restricted", "baseline"] | None = None
    """The Pod Security level the rendered Pod is checked at; unset: ``restricted``, or
    ``baseline`` with the Podman sidecar."""


class App(_Model):
    """A program a repository asks for (a name and the command that starts it)."""

    name: str
    command: tuple[str, ...] = ()
    port: int | None = Field(default=None, ge=1, le=65535)


class Blueprint(_Model):
    """A workspace blueprint. Unset fields come from ``template`` (see :func:`resolve`)."""

    name: str
    template: str | None = None
    is_template: bool = Field(default=False, alias="isTemplate")
    image: str | None = None
    env: dict[str, str] = {}
    resources: Resources | None = None
    storages: tuple[Storage, ...] | None = None
    init_scripts: tuple[str, ...] | None = Field(default=None, alias="initScripts")
    podman: bool | None = None
    network: NetworkSpec | None = None
    security_context: WorkspaceSecurity | None = Field(default=None, alias="securityContext")
    apps: tuple[App, ...] | None = None

    @field_validator("name", "template")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError("must be a DNS-1123 label (lowercase letters, digits, '-')")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is not None and (not value or len(value) > 512 or any(c.isspace() for c in value)):
            raise ValueError("must be an image reference without spaces")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not a variable name")
            if key in RESERVED_ENV:
                raise ValueError(f"{key} is set by the runtime")
        return value

    # Effective values once resolved (defaults where a whole chain left a field unset).
    @property
    def effective_image(self) -> str:
        return self.image or "localhost/stockade-workspace:latest"

    @property
    def effective_resources(self) -> Resources:
        return self.resources or Resources()

    @property
    def effective_network(self) -> NetworkSpec:
        return self.network or NetworkSpec()

    @property
    def effective_security(self) -> WorkspaceSecurity:
        return self.security_context or WorkspaceSecurity()

    @property
    def level(self) -> Literal["restricted", "baseline"]:
        """The Pod Security level this blueprint's Pod must meet."""
        stated = self.effective_security.level
        if stated is not None:
            return stated
        return "baseline" if self.podman else "restricted"

    def to_document(self) -> dict[str, Any]:
        """The blueprint as YAML/JSON would spell it (aliases, unset fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)


#: The blueprint a workspace runs when it names none: restricted, no sidecar, a 10Gi home.
DEFAULT_BLUEPRINT = Blueprint(
    name="default",
    storages=(Storage(name="home", mount_path="/home/workspace", home=True),),
)

_MERGED = ("image", "resources", "storages", "init_scripts", "podman", "network", "apps")


def resolve(name: str, blueprints: Mapping[str, Blueprint]) -> Blueprint:
    """``name`` with its ``template`` chain merged in: a child's set fields win, ``env`` is merged
    key by key, ``securityContext`` comes from the nearest blueprint that sets it. A cycle or a
    missing parent is an :class:`InvalidInput` naming the ``template`` field."""
    chain: list[Blueprint] = []
    seen: set[str] = set()
    current: str | None = name
    while current is not None:
        if current in seen:
            raise InvalidInput("template", f"template cycle through {current!r}")
        seen.add(current)
        found = blueprints.get(current)
        if found is None:
            field = "name" if current == name else "template"
            raise InvalidInput(field, f"no blueprint named {current!r}")
        chain.append(found)
        current = found.template
    merged: dict[str, Any] = {"name": chain[0].name, "is_template": chain[0].is_template}
    env: dict[str, str] = {}
    for blueprint in reversed(chain):
        env.update(blueprint.env)
        for key in (*_MERGED, "security_context"):
            value = getattr(blueprint, key)
            if value is not None:
                merged[key] = value
    merged["env"] = env
    return Blueprint.model_validate(merged)


def _errors(exc: ValidationError, source: str) -> InvalidInput:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(document)"
    message = first["msg"].removeprefix("Value error, ")
    return InvalidInput(f"{source}: {where}", message)


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise InvalidInput(source, f"not valid YAML{line}") from None


def load_blueprint(text: str, *, source: str = "blueprint") -> Blueprint:
    """Parse one administrator's blueprint (YAML or JSON); errors name the file and field."""
    document = _load_yaml(text, source)
    if not isinstance(document, dict):
        raise InvalidInput(source, "a blueprint is a mapping")
    try:
        return Blueprint.model_validate(document)
    except ValidationError as exc:
        raise _errors(exc, source) from None


class RepositoryFile(_Model):
    """What a repository's ``.stockade.yaml`` may ask for."""

    image: str | None = None
    env: dict[str, str] = {}
    init_scripts: tuple[str, ...] = Field(default=(), alias="initScripts")
    apps: tuple[App, ...] = ()

    _image = field_validator("image")(Blueprint._image.__func__)  # type: ignore[attr-defined]
    _env = field_validator("env")(Blueprint._env.__func__)  # type: ignore[attr-defined]

    def apply(self, blueprint: Blueprint) -> Blueprint:
        """``blueprint`` with this file's choices laid over it (security untouched)."""
        update: dict[str, Any] = {"env": {**blueprint.env, **self.env}}
        if self.image is not None:
            update["image"] = self.image
        if self.init_scripts:
            update["init_scripts"] = (*(blueprint.init_scripts or ()), *self.init_scripts)
        if self.apps:
            update["apps"] = self.apps
        return blueprint.model_copy(update=update)


#: Keys a repository file can never set, wherever they appear, and why.
_FORBIDDEN_KEYS = {
    "securityContext": "security settings are for administrators",
    "privileged": "privileged containers are never allowed from a repository",
    "hostNetwork": "host namespaces are never allowed from a repository",
    "hostPID": "host namespaces are never allowed from a repository",
    "hostIPC": "host namespaces are never allowed from a repository",
    "hostUsers": "host namespaces are never allowed from a repository",
    "hostPath": "hostPath volumes are never allowed from a repository",
    "capabilities": "capabilities are for administrators",
    "allowPrivilegeEscalation": "security settings are for administrators",
    "runAsUser": "security settings are for administrators",
    "runAsGroup": "security settings are for administrators",
    "runAsNonRoot": "security settings are for administrators",
    "seccompProfile": "security settings are for administrators",
    "volumes": "volumes are for administrators",
    "podman": "the Podman sidecar is for administrators",
    "network": "the network class is for administrators",
    "template": "the blueprint is chosen by administrators",
    "resources": "resources are for administrators",
    "storages": "storages are for administrators",
}
_REPOSITORY_KEYS = frozenset({"image", "env", "initScripts", "apps"})


def _walk(node: Any, path: str) -> Iterable[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key in _FORBIDDEN_KEYS:
                yield where, _FORBIDDEN_KEYS[key]
            yield from _walk(value, where)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _walk(item, f"{path}[{index}]")


def parse_repository_file(text: str, *, source: str = ".stockade.yaml") -> RepositoryFile:
    """Parse a repository's ``.stockade.yaml``. Any forbidden key, at any depth, is refused with
    an :class:`InvalidInput` naming its path (``.stockade.yaml: securityContext``); so is any key
    other than ``image``, ``env``, ``initScripts`` and ``apps``."""
    document = _load_yaml(text, source)
    if document is None:
        return RepositoryFile()
    if not isinstance(document, dict):
        raise InvalidInput(source, "a repository file is a mapping")
    for where, why in _walk(document, ""):
        raise InvalidInput(f"{source}: {where}", f"not allowed in a repository file ({why})")
    for key in document:
        if key not in _REPOSITORY_KEYS:
            raise InvalidInput(
                f"{source}: {key}",
                "not allowed in a repository file (allowed: apps, env, image, initScripts)",
            )
    try:
        return RepositoryFile.model_validate(document)
    except ValidationError as exc:
        raise _errors(exc, source) from None
