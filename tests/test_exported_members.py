"""Each package's ``__init__`` is its public surface: an ``__all__`` naming exactly what exists.

The order of ``__all__`` is ruff's business (RUF022, isort-style: constants, classes, functions).
"""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

import stockade

PACKAGES = sorted(
    info.name
    for info in pkgutil.iter_modules(stockade.__path__, "stockade.")
    if info.ispkg and info.name != "stockade.cli"
)


@pytest.mark.parametrize("name", PACKAGES)
def test_public_surface(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    missing = [item for item in exported if not hasattr(module, item)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"
    public = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and not isinstance(value, types.ModuleType)
        and attr not in {"annotations"}
    }
    unlisted = sorted(public - set(exported))
    assert not unlisted, f"{name} exposes names not in __all__: {unlisted}"
