"""Task families, one module each (`glue.py`, …), registered with `tasks.base.register_family`."""

from bench.plugins import import_all


def load_all() -> None:
    import_all(__name__, skip={"base", "generation", "metrics", "offline"})
