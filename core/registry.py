"""Named plugins of one kind (methods, task families): a package's own modules, entry points and `<kind>.module=`.

One `Registry` serves `methods/` and `tasks/`: each base module makes its registry and decorates its classes
with `registry.register`; `get(name)` imports the package's modules (so their decorators run), then once per
process every installed entry point of the registry's group, then an explicitly named module. A registry is
handed the package's *name*, never the package, so the kernel imports nothing above it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import types
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from peftbench.core.errors import ConfigError, one_line

T = TypeVar("T")


def import_all(package: str, skip: set[str]) -> None:
    """Import each submodule of `package` except `skip` and private ones (idempotent)."""
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        if info.name not in skip and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    """The installed entry points of `group` (each distribution's `entry_points.txt`), by name, without loading them."""
    return sorted(importlib.metadata.entry_points(group=group), key=lambda point: (point.name, point.value))


class Registry(Generic[T]):
    """Classes of one kind registered under the value of their `key` attribute (`Method.name`, `Task.family`).

    `make(cls)` is what is stored (a method's instance, a task family's class). `kind` names the plugin in
    messages and in the command-line key `<kind>.module=`.
    """

    def __init__(
        self, kind: str, base: type, key: str, package: str, skip: set[str], group: str, make: Callable[[type], T]
    ) -> None:
        self.kind, self.base, self.key, self.package, self.skip, self.group = kind, base, key, package, skip, group
        self._make = make
        self._items: dict[str, T] = {}
        self._entry_points_loaded = False

    def register(self, cls: type) -> type:
        """Class decorator: make `cls` available under its key."""
        name = getattr(cls, self.key)
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = self._make(cls)
        return cls

    def register_class(self, cls: Any, origin: str) -> None:
        """Register a class found outside the package (an entry point); no-op if it already is."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)) or not isinstance(
            getattr(cls, self.key, None), str
        ):
            raise ConfigError(f"{origin} is neither a module nor a {self.base.__name__} subclass with a `{self.key}`")
        name = getattr(cls, self.key)
        registered = self._items.get(name)
        if registered is None:
            self.register(cls)
            return
        owner = registered if isinstance(registered, type) else type(registered)  # a task's class, a method's instance
        if owner is not cls:
            raise ConfigError(f"{origin} registers {self.kind} {name!r}, which {owner.__module__} already has")

    def load_all(self) -> None:
        """Import every module of the package, then (once per process) every entry point of the group."""
        import_all(self.package, self.skip)
        if self._entry_points_loaded:
            return
        for point in entry_points(self.group):
            origin = f"entry point {point.name} = {point.value!r} ({self.group})"
            try:
                loaded = point.load()
            except Exception as exc:  # a broken plugin: one line naming it, not a traceback
                raise ConfigError(f"{origin} cannot be loaded: {one_line(exc)}") from None
            if not isinstance(loaded, types.ModuleType):  # a module registered its classes on import
                self.register_class(loaded, origin)
        self._entry_points_loaded = True

    def load_module(self, module: str) -> None:
        """Import `module` (`<kind>.module=my_pkg.my_module`) so that its registrations exist."""
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"{self.kind}.module={module!r} cannot be imported: {one_line(exc)}") from None

    def get(self, name: str, module: str | None = None, what: str | None = None) -> T:
        """The registered item `name`; `module` (an import path) is imported first. `what` names it in errors."""
        self.load_all()
        what = what or self.kind
        if module is not None:
            self.load_module(module)
            if name not in self._items:
                choices = ", ".join(self.names())
                raise ConfigError(
                    f"{self.kind}.module={module!r} registers no {what} {name!r}; valid choices: {choices}"
                )
        if name not in self._items:
            raise ConfigError(f"unknown {what} {name!r}; valid choices: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        """Every registered name, the package's modules and entry points loaded."""
        self.load_all()
        return sorted(self._items)
