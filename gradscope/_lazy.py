"""Module attributes imported on first use, so that importing a package stays light."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_attributes(package: str, table: dict[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``table`` maps a name to the submodule defining it.

    A name is imported from its submodule on first access and then kept in ``namespace``.
    """

    def __getattr__(name: str):
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__():  # the public names: not what the package imported for itself
        return sorted(set(namespace.get("__all__", namespace)) | set(table))

    return __getattr__, __dir__
