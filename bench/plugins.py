"""Import every module of a plugin package (methods/, tasks/) so their registrations run; list entry points."""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil


def import_all(package: str, skip: set[str]) -> None:
    """Import each submodule of `package` except `skip` and private ones (idempotent)."""
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        if info.name not in skip and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    """The installed entry points of `group` (each distribution's `entry_points.txt`), by name, without loading them."""
    return sorted(importlib.metadata.entry_points(group=group), key=lambda point: (point.name, point.value))
