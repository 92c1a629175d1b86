"""Fine-tuning methods, one module each, registered by name (see `methods.base`).

Adding a method: a module here with a `@register`ed `Method` subclass and a `conf/method/<name>.yaml`.
Every module in this package is imported by `load_all()`, so the runner needs no edit.
"""

from bench.plugins import import_all


def load_all() -> None:
    import_all(__name__, skip={"base", "targets"})
