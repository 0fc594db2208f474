"""Lazy public names of a package: resolved from their module on first use (PEP 562).

A package's ``__init__`` lists which module defines each public name; importing the package then
imports none of them (no JAX for ``labelfree_jax.training`` or ``.inference`` until a name is used).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public names live in ``exports``.

    ``exports`` maps a name to the module that defines it: a submodule of ``package``
    (``"tiling"``) or an absolute module name (``"labelfree_jax.models.card"``).
    """
    modules = {name: module if "." in module else f"{package}.{module}" for name, module in exports.items()}

    def __getattr__(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted({*vars(importlib.import_module(package)), *modules})

    return __getattr__, __dir__
