"""Fine-tuning methods, one module each, registered by name (see `methods.base`).

Adding a method: a module here with a `@register`ed `Method` subclass and a `conf/method/<name>.yaml`.
Every module in this package is imported by `load_all()`, so the runner needs no edit.

A method from another package needs no edit here either: an entry point in the group `peftbench.methods`
(`my_method = "my_pkg.my_method"`, a module whose import registers it, or `"my_pkg.my_method:MyMethod"`, a
`Method` subclass registered on load), or `method.module=my_pkg.my_method` on the command line or in its YAML.
"""

from __future__ import annotations

import importlib
import types

from bench.errors import ConfigError, one_line
from bench.plugins import entry_points, import_all

ENTRY_POINT_GROUP = "peftbench.methods"
_entry_points_loaded = False


def load_all() -> None:
    """Import every module of this package, then (once per process) every `peftbench.methods` entry point."""
    global _entry_points_loaded
    import_all(__name__, skip={"base", "targets"})
    if _entry_points_loaded:
        return
    from methods.base import register_class

    for point in entry_points(ENTRY_POINT_GROUP):
        origin = f"entry point {point.name} = {point.value!r} ({ENTRY_POINT_GROUP})"
        try:
            loaded = point.load()
        except Exception as exc:  # a broken plugin: one line naming it, not a traceback
            raise ConfigError(f"{origin} cannot be loaded: {one_line(exc)}") from None
        if not isinstance(loaded, types.ModuleType):  # a module registered its methods on import
            register_class(loaded, origin)
    _entry_points_loaded = True


def load_module(module: str) -> None:
    """Import `module` (`method.module=my_pkg.my_method`) so that its `@register`ed methods exist."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"method.module={module!r} cannot be imported: {one_line(exc)}") from None
