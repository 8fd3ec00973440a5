"""The map in docs/architecture.md holds: generated import contracts, no private imports across
packages, and no private attribute of asyncssh objects in the gateway."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "stockade"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "importlinter_gen", ROOT / "scripts" / "importlinter.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


GEN = _generator()
DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


# -- (a) .importlinter is what the table says ---------------------------------------------


def test_importlinter_is_generated_from_the_architecture_table() -> None:
    expected = GEN.generate(DOC, GEN.existing_packages())
    current = (ROOT / ".importlinter").read_text(encoding="utf-8")
    assert current == expected, "run: python scripts/importlinter.py (then commit .importlinter)"


def test_generator_check_mode_agrees() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "importlinter.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_closure_is_transitive_and_core_is_under_everything() -> None:
    allowed = GEN.closure(GEN.parse_table(DOC))
    assert allowed["core"] == set()
    assert allowed["authz"] == {"core"}
    assert allowed["identity"] == {"store", "core"}
    assert allowed["gateway"] == {"identity", "store", "authz", "workspace", "bus", "core"}
    assert allowed["broker"] == {
        "identity",
        "store",
        "authz",
        "tls",
        "audit",
        "bus",
        "helpers",
        "core",
    }
    assert allowed["rpc"] == {"identity", "store", "authz", "audit", "bus", "tls", "core"}
    assert allowed["console"] >= {"broker", "tls", "identity"}


def test_console_joined_the_contracts_when_its_directory_appeared() -> None:
    today = GEN.existing_packages()
    assert "console" in today
    assert "[importlinter:contract:console]" not in GEN.generate(DOC, today - {"console"})
    text = GEN.generate(DOC, today)
    assert "[importlinter:contract:console]" in text
    console = text.split("[importlinter:contract:console]")[1].split("\n\n")[0]
    assert "stockade.gateway" in console
    assert "stockade.broker" not in console  # console talks to the broker
    gateway = text.split("[importlinter:contract:gateway]")[1].split("\n\n")[0]
    assert "stockade.console" in gateway


def test_authz_forbids_io_libraries() -> None:
    text = GEN.generate(DOC, GEN.existing_packages())
    authz = text.split("[importlinter:contract:authz]")[1].split("\n\n")[0]
    for module in ("asyncssh", "fastapi", "grpc", "httpx", "hvac", "nats", "sqlalchemy"):
        assert f"    {module}\n" in authz + "\n"
    assert "allow_indirect_imports = False" in authz


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda t: t.replace("| `supplychain` |", "| `supply2` |"),
            "src/stockade/supplychain is not in",
        ),
        (
            lambda t: t.replace("| `bus` |", "| `bus` |", 1).replace("| NATS |", "| `shield` |"),
            "cycle",
        ),
        (
            lambda t: t.replace("OIDC logins | `store` |", "OIDC logins | `stor` |"),
            "'stor'",
        ),
        (lambda t: t.replace("## Packages", "## Parts"), "no '## Packages' section"),
    ],
)
def test_generator_refuses_a_broken_table(change: object, message: str) -> None:
    changed = change(DOC)  # type: ignore[operator]
    assert changed != DOC
    with pytest.raises(GEN.TableError) as err:
        GEN.generate(changed, GEN.existing_packages())
    assert message in str(err.value)


# -- (b) no private module of another package ---------------------------------------------


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    # `from stockade.x import _y` reaches the private module (or name) _y of x
    return [target] + [f"{target}.{alias.name}" for alias in node.names if alias.name != "*"]


def _private(name: str) -> bool:
    return name.startswith("_") and name not in ("__init__", "__main__")


def test_no_package_imports_another_packages_private_module() -> None:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        own = module.split(".")[1] if module.count(".") >= 1 else ""
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _imported(node, module, path.name == "__init__.py"):
                parts = target.split(".")
                if len(parts) < 3 or parts[0] != "stockade" or parts[1] == own:
                    continue
                if any(_private(part) for part in parts[2:]):
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: {module} -> {target}")
    assert not problems, "private modules of other packages imported:\n" + "\n".join(problems)


# -- (c) the gateway touches no private name of asyncssh (or anything else) ----------------


def _is_private(attr: str) -> bool:
    return attr.startswith("_") and not (attr.startswith("__") and attr.endswith("__"))


def _asyncssh_names(tree: ast.Module) -> set[str]:
    """Names bound by ``from asyncssh import X``."""
    return {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "asyncssh"
        for alias in node.names
    }


def _inherited_privates(tree: ast.Module, path: Path) -> list[str]:
    """``self._x`` in a subclass of an asyncssh class where no class of this file defines
    ``_x``: that is asyncssh's private state (``self._chan``, ``self._conn``, ...)."""
    from_asyncssh = _asyncssh_names(tree)
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}

    def own(cls: ast.ClassDef) -> set[str]:
        names = set()
        for node in ast.walk(cls):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
        return names

    def base_names(cls: ast.ClassDef) -> list[ast.expr]:
        return [b.value if isinstance(b, ast.Subscript) else b for b in cls.bases]

    def derived(cls: ast.ClassDef, seen: frozenset[str] = frozenset()) -> bool:
        for base in base_names(cls):
            if (
                isinstance(base, ast.Attribute)
                and isinstance(base.value, ast.Name)
                and base.value.id == "asyncssh"
            ):
                return True
            if isinstance(base, ast.Name):
                if base.id in from_asyncssh:
                    return True
                local = classes.get(base.id)
                if local is not None and base.id not in seen and derived(local, seen | {base.id}):
                    return True
        return False

    def allowed(cls: ast.ClassDef, seen: frozenset[str] = frozenset()) -> set[str]:
        names = own(cls)
        for base in base_names(cls):
            if isinstance(base, ast.Name) and base.id in classes and base.id not in seen:
                names |= allowed(classes[base.id], seen | {base.id})
        return names

    problems = []
    for cls in classes.values():
        if not derived(cls):
            continue
        mine = allowed(cls)
        for node in ast.walk(cls):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("self", "cls")
                and _is_private(node.attr)
                and node.attr not in mine
            ):
                problems.append(
                    f"{path.relative_to(ROOT)}:{node.lineno}: self.{node.attr} "
                    f"(asyncssh's, inherited by {cls.name})"
                )
    return problems


def test_gateway_uses_no_private_asyncssh_names() -> None:
    """Any ``x._name`` (not a dunder) whose ``x`` is not ``self``/``cls``, any
    ``getattr(x, "_name")``, and any ``self._name`` that a subclass of an asyncssh class inherits
    from asyncssh: the gateway must live on asyncssh's public API."""
    problems = []
    for path in sorted((SRC / "gateway").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
                and _is_private(node.args[1].value)
            ):
                name = node.args[1].value
                problems.append(
                    f"{path.relative_to(ROOT)}:{node.lineno}: {node.func.id}(..., {name!r})"
                )
        problems += _inherited_privates(tree, path)
    assert not problems, "private attributes used in the gateway:\n" + "\n".join(sorted(problems))
