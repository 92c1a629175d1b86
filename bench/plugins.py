"""Import every module of a plugin package (methods/, tasks/) so their registrations run."""

from __future__ import annotations

import importlib
import pkgutil


def import_all(package: str, skip: set[str]) -> None:
    """Import each submodule of `package` except `skip` and private ones (idempotent)."""
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        if info.name not in skip and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
