"""Task families, one module each (`glue.py`, …), registered with `peftbench.tasks.base.register_family`.

Every module here is imported by the registry (`tasks.base.TASKS`); a family from another package comes through an
entry point in the group `peftbench.tasks` or `task.module=my_pkg.my_family` (docs/methods.md, "Adding a task").
"""
